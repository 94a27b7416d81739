"""Export a container as OME-Zarr (NGFF 0.4 on zarr 2), block by block.

The exported image is raw intensity as a multiscale pyramid (downsampled by the mean);
segmentations (and optionally fragments) go under `labels/` as label images (downsampled
by the most frequent label, so no new ids appear); predictions optionally as two more
images, `predictions/affinities` and `predictions/lsds`, with a channel axis. Every level
carries `scale` and `translation` in nanometres.

Levels are written one after the other, each from the one before, by daisy blocks of one
output chunk, so an export of any size holds a few chunks in memory per worker. The export
is written beside its destination and renamed into place when complete.

Translations follow NGFF's pixel-centre reading: a coarse voxel's centre lies at the centre
of the fine voxels it summarises, so its translation is `offset + (scale - scale_0) / 2`.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from pydantic import PrivateAttr

from ..blockwise.runner import RunSettings, run_stage
from ..blockwise.stage import BlockwiseStage
from .atomic import replacing
from .container_contents import require, segmentations
from .layout import FRAGMENTS, PRED_AFFS, PRED_LSDS, RAW
from .volumes import VolumeError, open_array

AXES = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
CHANNEL_AXIS = {"name": "c", "type": "channel"}


@dataclass(frozen=True)
class Pyramid:
    """Shapes (spatial voxels) and voxel sizes (nm) per level, and the factor from each
    level to the next."""

    shapes: list[tuple[int, int, int]]
    voxel_sizes: list[tuple[int, int, int]]
    factors: list[tuple[int, int, int]]  # factors[l]: level l-1 -> l; factors[0] = (1, 1, 1)


def pyramid(shape, voxel_size, levels: int | None = None, min_extent: int = 32) -> Pyramid:
    """Halve every axis whose voxel size is under twice the finest one, level by level: an
    anisotropic volume (40, 4, 4 nm) is halved in y and x until it is about isotropic,
    then in all axes. Stops when a level would be smaller than
    `min_extent` voxels in every axis, or at `levels` levels."""
    shapes, sizes, factors = [tuple(shape)], [tuple(voxel_size)], [(1, 1, 1)]
    while levels is None or len(shapes) < levels:
        current, size = shapes[-1], sizes[-1]
        if max(current) <= min_extent:
            break
        finest = min(size)
        factor = tuple(2 if s < 2 * finest and n > 1 else 1 for s, n in zip(size, current))
        if factor == (1, 1, 1):
            break
        shapes.append(tuple(-(-n // f) for n, f in zip(current, factor)))
        sizes.append(tuple(s * f for s, f in zip(size, factor)))
        factors.append(factor)
    return Pyramid(shapes, sizes, factors)


def _windows(data: np.ndarray, factor) -> np.ndarray:
    """(z, y, x) -> (z', y', x', fz*fy*fx): the voxels each coarse voxel summarises; the
    far faces are padded by repeating the last voxel."""
    pad = [(0, -n % f) for n, f in zip(data.shape, factor)]
    data = np.pad(data, pad, mode="edge") if any(p for _, p in pad) else data
    z, y, x = (n // f for n, f in zip(data.shape, factor))
    fz, fy, fx = factor
    return data.reshape(z, fz, y, fy, x, fx).transpose(0, 2, 4, 1, 3, 5).reshape(z, y, x, fz * fy * fx)


def downsample_mean(data: np.ndarray, factor) -> np.ndarray:
    """Intensity or prediction channels: the mean of each window, in the input's dtype."""
    if data.ndim == 4:
        return np.stack([downsample_mean(channel, factor) for channel in data])
    mean = _windows(data, factor).mean(axis=-1)
    return np.rint(mean).astype(data.dtype) if np.issubdtype(data.dtype, np.integer) else mean.astype(data.dtype)


def downsample_mode(labels: np.ndarray, factor) -> np.ndarray:
    """Labels: the most frequent id of each window (ties: the first in window order).

    Written here because no maintained library reduces a label volume by its mode at
    array speed (skimage's block_reduce calls scipy.stats.mode per window); a window has at
    most 8 voxels, so comparing every pair is cheap."""
    windows = _windows(labels, factor)
    counts = (windows[..., :, None] == windows[..., None, :]).sum(axis=-1)
    return np.take_along_axis(windows, counts.argmax(axis=-1)[..., None], axis=-1)[..., 0]


class ExportLevel(BlockwiseStage):
    """One pyramid level of every exported image, chunk by chunk: level 0 copied from the
    source datasets, level l reduced from level l-1 of the export. Its output is the whole
    export, renamed in by `export_ome_zarr` when every level is written: the stage itself
    declares none, so the runner always runs it (resuming from its block tracking)."""

    name: ClassVar[str] = "export"

    images: list[tuple[str, str, bool]]  # (source dataset, image directory in the export, labels?)
    level: int
    factor: tuple[int, int, int]
    shape: tuple[int, int, int]  # voxels of this level
    chunk: int
    tracking: str  # where the blocks done are recorded
    _arrays: list | None = PrivateAttr(None)

    def total_roi(self) -> Roi:
        return Roi((0, 0, 0), self.shape)

    def block_size(self) -> Coordinate:
        return Coordinate((self.chunk,) * 3)

    def key(self) -> str:
        return f"level-{self.level}"

    def tracking_dir(self) -> Path:
        return Path(self.tracking)

    def log_dir(self) -> Path:
        return Path(self.tracking) / "logs"

    @contextmanager
    def opened(self):
        self._arrays = [
            (open_array(self.container, dataset) if self.level == 0 else zarr.open_array(f"{image}/{self.level - 1}", mode="r"),
             zarr.open_array(f"{image}/{self.level}", mode="r+"), labels)
            for dataset, image, labels in self.images
        ]
        yield self

    def process(self, block) -> None:
        voxels = block.write_roi
        index = tuple(slice(b, e) for b, e in zip(voxels.begin, voxels.end))
        for source, target, labels in self._arrays:
            channels = (slice(None),) if len(target.shape) == 4 else ()
            if self.level == 0:
                roi = Roi(source.roi.offset + voxels.offset * source.voxel_size, voxels.shape * source.voxel_size)
                target[channels + index] = source.to_ndarray(roi)
                continue
            finer = tuple(slice(b * f, min(e * f, n))
                          for b, e, f, n in zip(voxels.begin, voxels.end, self.factor, source.shape[-3:]))
            data = source[channels + finer]
            target[channels + index] = downsample_mode(data, self.factor) if labels else downsample_mean(data, self.factor)


@dataclass(frozen=True)
class ExportedImage:
    path: str  # inside the export, "" for the root image
    dataset: str  # source dataset
    labels: bool


def _label_name(dataset: str) -> str:
    """volumes/segmentation/hist_quant_50/0.15 -> segmentation_hist_quant_50_0.15"""
    return "_".join(dataset.split("/")[1:])


def plan(container, segmentation_datasets: list[str] | None = None, fragments: bool = False,
         predictions: bool = False) -> list[ExportedImage]:
    """What an export of `container` holds; raises VolumeError (before any output) when a
    requested dataset is missing."""
    chosen = segmentations(container) if segmentation_datasets is None else list(segmentation_datasets)
    required = [RAW, *chosen, *([FRAGMENTS] if fragments else []), *([PRED_AFFS, PRED_LSDS] if predictions else [])]
    require(container, required)
    images = [ExportedImage("", RAW, False)]
    images += [ExportedImage(f"labels/{_label_name(d)}", d, True) for d in chosen]
    if fragments:
        images.append(ExportedImage("labels/fragments", FRAGMENTS, True))
    if predictions:
        images += [ExportedImage("predictions/affinities", PRED_AFFS, False),
                   ExportedImage("predictions/lsds", PRED_LSDS, False)]
    raw = open_array(container, RAW)
    for image in images[1:]:
        array = open_array(container, image.dataset)
        if array.voxel_size != raw.voxel_size or array.roi != raw.roi:
            raise VolumeError(f"{container}/{image.dataset}: voxel size {tuple(array.voxel_size)} nm and ROI "
                              f"{array.roi} differ from {RAW}'s ({tuple(raw.voxel_size)} nm, {raw.roi}); "
                              "an OME-Zarr image shares one grid")
    return images


def _multiscales(group, geometry: Pyramid, offset, channels: int | None, name: str) -> None:
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscales_metadata

    finest = np.array(geometry.voxel_sizes[0], dtype=float)
    datasets = []
    for level, size in enumerate(geometry.voxel_sizes):
        scale = np.array(size, dtype=float)
        translation = np.array(offset, dtype=float) + (scale - finest) / 2
        lead = [1.0] if channels else []
        lead_t = [0.0] if channels else []
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": lead + scale.tolist()},
            {"type": "translation", "translation": lead_t + translation.tolist()}]})
    axes = ([CHANNEL_AXIS] if channels else []) + AXES
    write_multiscales_metadata(group, datasets, fmt=FormatV04(), axes=axes, name=name)


def export_ome_zarr(container: str | os.PathLike, out: str | os.PathLike, *,
                    segmentation_datasets: list[str] | None = None, fragments: bool = False,
                    predictions: bool = False, levels: int | None = None, chunk: int = 64,
                    overwrite: bool = False, settings: RunSettings = RunSettings()) -> dict:
    """Write `out` (an OME-Zarr directory) from `container`; returns what was written."""
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_label_metadata

    container, out = Path(container), Path(out)
    images = plan(container, segmentation_datasets, fragments, predictions)
    if out.resolve() == container.resolve() or container.resolve() in out.resolve().parents:
        raise VolumeError(f"{out}: the export must go outside the source container {container}")
    if out.exists() and not overwrite:
        raise VolumeError(f"{out}: exists (pass --overwrite to replace it)")
    raw = open_array(container, RAW)
    geometry = pyramid(tuple(raw.roi.shape / raw.voxel_size), tuple(raw.voxel_size), levels)
    summary = {"output": str(out), "levels": len(geometry.shapes), "shapes": geometry.shapes,
               "voxel_sizes": geometry.voxel_sizes, "images": {}}
    with replacing(out) as partial, tempfile.TemporaryDirectory(prefix="lsdflow-export-") as tracking:
        root = zarr.open_group(str(partial), mode="w")
        for image in images:
            source = open_array(container, image.dataset)
            channels = source.data.shape[0] if len(source.data.shape) == 4 else None
            group = root.require_group(image.path) if image.path else root
            for level, shape in enumerate(geometry.shapes):
                group.create_dataset(str(level), shape=((channels,) if channels else ()) + shape,
                                     chunks=((channels,) if channels else ()) + (chunk,) * 3,
                                     dtype=source.dtype, dimension_separator="/", fill_value=0)
            name = image.path.split("/")[-1] or "raw"
            _multiscales(group, geometry, tuple(raw.roi.offset), channels, name)
            if image.labels:
                write_label_metadata(root["labels"], name, fmt=FormatV04(), source={"image": "../../"})
            summary["images"][image.path or "."] = image.dataset
        # one daisy stage per level, each block writes its chunk of every image
        work = [(i.dataset, str(partial / i.path), i.labels) for i in images]
        for level, shape in enumerate(geometry.shapes):
            stage = ExportLevel(container=str(container), images=work, level=level,
                                factor=tuple(geometry.factors[level]), shape=tuple(shape), chunk=chunk,
                                tracking=str(Path(tracking) / f"level-{level}"))
            summary.setdefault("seconds", []).append(run_stage(stage, settings).get("seconds"))
        root.attrs["lsdflow"] = {"source": str(container.resolve()),
                                 "datasets": {i.path or ".": i.dataset for i in images}}
    return summary
