"""Prediction of large volumes block by block: the `predict` stage.

Each worker loads the model once, on `cuda:{worker_id % n_gpus}` when GPUs exist, else
the CPU with its share of the cores (workers x torch threads never exceed them). A block
is a whole number of network passes (`block_voxels`); it reads the raw data with
the network's context, normalized with the volume's statistics (like training) and padded
with the mean outside the volume. Blocks with no raw data (no stored chunks, all zeros,
or outside the optional mask) are skipped and recorded as skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
from funlib.geometry import Coordinate, Roi
from pydantic import PrivateAttr

from ..blockwise.grid import one_block_chunks
from ..blockwise.outputs import ArrayOutput, stage_key
from ..blockwise.runner import RunSettings, grid_blocks, run_stage
from ..blockwise.stage import BlockwiseStage, nm, roi_field, roi_of
from ..config import check_voxel_size
from ..io.input_checks import (
    PREDICT_BYTES_PER_VOXEL,
    check_finite,
    check_fits_in_memory,
    check_not_constant,
    check_writable,
)
from ..io.intensity import Normalization, scaled_intensities
from ..io.layout import prediction_dataset
from ..io.volumes import (
    VolumeError,
    container_identity,
    dataset_fingerprint,
    open_array,
    voxel_slices,
)
from ..model.checkpoints import input_normalization, input_shift, load_model
from ..model.devices import share_cores, worker_device
from .attributes import prediction_attrs
from .tiling import context_margin, predict_with_context, prediction_tile

CODE_VERSION = "blockwise-predict-2"  # 2: tiles grown by the test-time augmentation margin


class PredictStage(BlockwiseStage):
    """Affinities and LSDs of the whole raw ROI (see the module's docstring)."""

    name: ClassVar[str] = "predict"
    lock: ClassVar[str] = "predict"  # one writer of the predictions at a time
    # torch and a model's allocations would stay in a pooled process (0.6 GB each); its
    # import is small next to loading the model and predicting blocks
    pooled_workers: ClassVar[bool] = False

    raw_dataset: str
    model_file: str
    channels: dict[str, int]  # model output name -> channels
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    roi: tuple[tuple[int, ...], tuple[int, ...]]  # (begin, shape) nm: the raw ROI
    voxel_size: tuple[int, int, int]
    block_voxels: tuple[int, int, int]
    context_voxels: tuple[int, int, int]
    normalization: dict  # core.io.intensity.Normalization's fields: the same for every block
    normalization_setting: str  # prediction.normalization of the config
    dtype: str
    batch_size: int
    augment: bool
    device: str | None = None
    workers_per_machine: int = 1
    mask_dataset: str | None = None
    attrs: dict = {}  # what every prediction dataset records (the model, its lineage, the input)
    lineage: dict = {}
    raw_container: str | None = None  # where the raw data is, when not in `container` (the outputs')
    chunk_voxels: tuple[int, int, int] | None = None  # of the outputs; default one chunk per block
    tile_progress: bool = False  # a bar over the network passes (one-block runs)
    # a worker's open model and arrays (`opened`)
    _model: object = PrivateAttr(None)
    _device: str | None = PrivateAttr(None)
    _raw: object = PrivateAttr(None)
    _outputs: dict | None = PrivateAttr(None)
    _normalization: object = PrivateAttr(None)

    @classmethod
    def for_volume(cls, config, container, model_file=None, output_dtype: str | None = None,
                   device: str | None = None, extra_attrs: dict | None = None,
                   workers_per_machine: int = 1, output=None, one_block: bool = False,
                   tile_progress: bool = False) -> "PredictStage":
        """The stage for `container` with this config and model; a missing or broken model,
        a voxel size unlike the config's, constant raw data or a read-only container fail
        here, before any output. `output`: another container to write to; `one_block`: the
        whole volume as one block (the in-memory path), written in chunks of 64 voxels."""
        container = Path(container).resolve()
        output = Path(output).resolve() if output else container
        bw = config.blockwise
        model_file = Path(model_file or config.prediction.checkpoint or "")
        raw = open_array(container, config.data.raw_dataset)
        check_voxel_size(config, tuple(raw.voxel_size), f"{container}/{config.data.raw_dataset}")
        model, meta = load_model(model_file)
        check_writable(output)
        dtype = output_dtype or config.prediction.output_dtype
        # the model file defines the network; the config the data and the prediction tile
        input_shape, output_shape = config.with_model(model.config).prediction_shapes
        augment = config.prediction.test_time_augmentation
        volume = raw.roi.shape / raw.voxel_size
        if one_block:
            block = covering_voxels(model, input_shape, output_shape, augment, volume)
            chunks = one_block_chunks(volume)
        else:
            block = block_voxels(model, input_shape, output_shape, bw.prediction_tiles, augment)
            chunks = None
        normalization = input_normalization(raw, config.prediction.normalization, model_file, meta)
        if normalization.std <= 1e-6:  # the sampled chunks are all of one intensity: look further before refusing
            check_not_constant(*_intensity_range(raw._source_data), f"{container}/{config.data.raw_dataset}")
        attrs = prediction_attrs(model_file, meta, model, f"{container}/{config.data.raw_dataset}", dtype)
        attrs["test_time_augmentation"] = augment
        attrs["normalization"] = normalization.kind
        attrs["intensity_shift"] = input_shift(raw, model_file, meta)  # label-free: unlike the training data?
        attrs.update(extra_attrs or {})  # e.g. the registered model's lineage
        return cls(
            container=str(output), raw_container=None if output == container else str(container),
            raw_dataset=config.data.raw_dataset, chunk_voxels=chunks, tile_progress=tile_progress,
            model_file=str(model_file.resolve()),
            channels=dict(zip(model.outputs, _output_channels(model, input_shape))),
            input_shape=tuple(input_shape), output_shape=tuple(output_shape), roi=roi_field(raw.roi),
            voxel_size=tuple(raw.voxel_size), block_voxels=tuple(block),
            context_voxels=tuple(context_margin(model, input_shape, output_shape, augment)),
            normalization=dataclasses.asdict(normalization), normalization_setting=config.prediction.normalization,
            dtype=dtype, batch_size=config.prediction.batch_size, augment=augment, device=device,
            workers_per_machine=workers_per_machine, mask_dataset=bw.mask_dataset, attrs=attrs,
            lineage=extra_attrs or {},
        )

    def total_roi(self) -> Roi:
        return roi_of(self.roi)

    def block_size(self) -> Coordinate:
        return nm(self.block_voxels) * nm(self.voxel_size)

    def context(self) -> Coordinate:
        return nm(self.context_voxels) * nm(self.voxel_size)

    def key(self) -> str:
        return stage_key(
            stage="predict", code=CODE_VERSION, container=container_identity(self.container),
            raw=dataset_fingerprint(self.source, self.raw_dataset),
            **({} if self.raw_container is None else {"raw_container": container_identity(self.raw_container)}),
            model=_file_sha256(Path(self.model_file)), input_shape=self.input_shape, output_shape=self.output_shape,
            dtype=self.dtype, block=tuple(self.block_size()), mask=self.mask_dataset, lineage=self.lineage,
            augment=self.augment,
            # z-scoring was the only normalization before there was a choice: its keys stay as they were
            **({} if self.normalization_setting == "zscore" else {"normalization": self.normalization_setting}),
        )

    @property
    def source(self) -> str:
        """The container with the raw data."""
        return self.raw_container or self.container

    def outputs(self) -> list[ArrayOutput]:
        return [ArrayOutput(prediction_dataset(name), self.total_roi(), nm(self.voxel_size), self.dtype,
                            self.chunk_voxels or self.block_voxels, num_channels=channels, attrs=dict(self.attrs))
                for name, channels in self.channels.items()]

    def check(self) -> None:
        if self.in_one_block():  # blockwise runs meet bad values block by block, as bad input
            raw = open_array(self.source, self.raw_dataset)
            data = raw[raw.roi]
            check_finite(data, f"{self.source}/{self.raw_dataset}")
            check_not_constant(float(data.min()), float(data.max()), f"{self.source}/{self.raw_dataset}")

    def skip_mask(self):
        raw = open_array(self.source, self.raw_dataset)
        mask = open_array(self.source, self.mask_dataset) if self.mask_dataset else None
        return empty_block_mask(raw, self.total_roi(), self.block_size(), mask)

    @contextmanager
    def opened(self):
        """The model on this worker's device, the raw data and the partial outputs."""
        self._device = self.device or worker_device()
        if self._device == "cpu":
            share_cores(self.workers_per_machine)
        self._model, _ = load_model(self.model_file, self._device)
        self._raw = open_array(self.source, self.raw_dataset)
        self._outputs = {name: open_array(self.container, self.writing[prediction_dataset(name)], mode="r+")
                         for name in self.channels if prediction_dataset(name) in self.writing}
        self._normalization = Normalization(**self.normalization)
        try:
            yield self
        finally:
            self._model = self._raw = self._outputs = None

    def finish(self, summary: dict) -> dict:
        # blocks found empty only when read (all zeros) count as skipped, not processed
        empty_dir = Path(self.scratch) / "empty"
        empty = len(list(empty_dir.glob("*"))) if empty_dir.exists() else 0
        return {**summary, "processed": max(0, summary["processed"] - empty), "skipped": summary["skipped"] + empty}

    def process(self, block):
        stage, raw_array = self, self._raw
        vs = raw_array.voxel_size
        context = self.context()
        # a block shrunk at the volume's far faces is predicted by the passes it needs, then cropped
        covered = covering_voxels(self._model, stage.input_shape, stage.output_shape, stage.augment,
                                  block.write_roi.shape / vs)
        full = Roi(block.write_roi.begin, covered * vs).grow(context, context)
        inside = full.intersect(raw_array.roi)
        raw = raw_array[inside] if not inside.empty else np.zeros(0)
        if not np.any(raw):
            empty_dir = Path(stage.scratch) / "empty"
            empty_dir.mkdir(parents=True, exist_ok=True)
            (empty_dir / f"{block.block_id[1]}").touch()
            return  # outputs keep their fill value 0
        check_finite(raw, f"{stage.source}/{stage.raw_dataset} in {inside}")
        normalized = np.zeros(tuple(full.shape / vs), dtype=np.float32)  # 0 = the mean
        where = voxel_slices(inside, full, vs)
        normalized[where] = self._normalization(scaled_intensities(raw, np.float32))
        results = predict_with_context(
            self._model, normalized, stage.input_shape, stage.output_shape, stage.batch_size, self._device,
            progress=stage.tile_progress, augment=stage.augment,
        )
        crop = (slice(None),) + tuple(slice(0, s) for s in block.write_roi.shape / vs)
        for name, data in zip(self._model.outputs, results):
            if name not in self._outputs:
                continue
            data = data[crop]
            values = np.round(data * 255).astype(np.uint8) if stage.dtype == "uint8" else data.astype(np.float32)
            self._outputs[name][block.write_roi] = values


def predict_blockwise(
    config,
    container,
    model_file=None,
    output_dtype: str | None = None,
    settings: RunSettings | None = None,
    device: str | None = None,
    extra_attrs: dict | None = None,
    output=None,
) -> dict:
    """Predict `volumes/pred_<output>` for the whole raw ROI block by block (see module doc),
    into `output` (another container) when given."""
    settings = settings or RunSettings.from_config(config)
    stage = PredictStage.for_volume(config, container, model_file, output_dtype, device, extra_attrs,
                                    workers_per_machine=1 if settings.launcher else settings.workers, output=output)
    summary = run_stage(stage, settings)
    written = [Path(stage.container) / o.dataset for o in stage.outputs()]
    return {"stage": summary, "written": written}


def predict_volume(
    config,
    container,
    model_file=None,
    output=None,
    output_dtype: str | None = None,
    device: str | None = None,
    progress: bool = True,
    extra_attrs: dict | None = None,
) -> dict:
    """Predict a whole (small) volume in this process and write `volumes/pred_<output>`
    datasets (into `output` when given): the blockwise predict stage with the volume as
    its one block, so that what validation measures is what the blockwise path deploys.

    Outputs cover the raw ROI with its voxel size and offset; uint8 scales [0, 1] to
    0..255. Each dataset records the model file, its iteration and config fingerprint, and
    the stage's key: a rerun with the same inputs has nothing to do. Bad input is refused
    before anything is written; outputs are written beside their place and renamed in.
    Returns output name -> the dataset written."""
    container = Path(container)
    raw_array = open_array(container, config.data.raw_dataset)
    voxels = int(np.prod(raw_array.shape))
    check_fits_in_memory(voxels * PREDICT_BYTES_PER_VOXEL[config.prediction.test_time_augmentation],
                         f"{container}/{config.data.raw_dataset}: predicting {voxels / 1e6:.1f} M voxels in memory",
                         f"predict it block by block: `lsdflow predict {config.name} {container} --blockwise`")
    # the voxel size, the model and the output are checked here; the whole raw data by the
    # stage's `check`, before any output and only when the stage has work to do
    stage = PredictStage.for_volume(config, container, model_file, output_dtype, device, extra_attrs,
                                    output=output, one_block=True, tile_progress=progress)
    run_stage(stage, RunSettings(in_process=True, progress=False))
    return {name: Path(stage.container) / prediction_dataset(name) for name in stage.channels}


def prediction_key(config, container, model_file, output_dtype: str | None = None, extra_attrs: dict | None = None) -> str:
    """The key of `predict_blockwise`'s result for these inputs (what its cache depends on)."""
    return PredictStage.for_volume(config, container, model_file, output_dtype, extra_attrs=extra_attrs).key()


def block_voxels(model, input_shape, output_shape, tiles, augment: bool) -> Coordinate:
    """Voxels per axis of a prediction block: what `tiles` network passes per axis cover,
    less the test-time augmentation margin they also cover beyond the block
    (`predict.prediction_tile`); `tiles` output tiles without augmentation."""
    _, tile = prediction_tile(model, input_shape, output_shape, augment)
    margins = [t - o for t, o in zip(tile, output_shape)]  # both sides
    return Coordinate(n * t - m for n, t, m in zip(tiles, tile, margins))


def covering_voxels(model, input_shape, output_shape, augment: bool, write_voxels) -> Coordinate:
    """The smallest block of whole passes (`block_voxels`) that covers `write_voxels`."""
    _, tile = prediction_tile(model, input_shape, output_shape, augment)
    passes = [max(1, -(-(w + t - o) // t)) for w, t, o in zip(write_voxels, tile, output_shape)]
    return block_voxels(model, input_shape, output_shape, passes, augment)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def empty_block_mask(raw_array, total_roi: Roi, block_size: Coordinate, mask_array=None) -> np.ndarray:
    """Per block (grid order, 1 = skip): no raw chunk stored under the block, or the
    mask is zero everywhere in it. Reads only chunk names (and the mask, usually small)."""
    store = raw_array._source_data.store
    path = raw_array._source_data.path
    separator = raw_array._source_data._dimension_separator or "."
    prefix = f"{path}/" if path else ""
    chunks = np.array(raw_array._source_data.chunks)
    present = set()
    for key in store.keys() if hasattr(store, "keys") else []:
        if key.startswith(prefix):
            name = key[len(prefix):]
            parts = name.split(separator)
            if len(parts) == len(chunks) and all(p.isdigit() for p in parts):
                present.add(tuple(int(p) for p in parts))
    vs = raw_array.voxel_size
    grid = tuple(-(-s // b) for s, b in zip(total_roi.shape, block_size))
    skip = np.zeros(grid, dtype=np.uint8)
    for position, write_roi in zip(np.ndindex(*grid), grid_blocks(total_roi, block_size)):
        begin = np.array((write_roi.begin - raw_array.roi.begin) / vs) // chunks
        end = (np.array((write_roi.end - raw_array.roi.begin) / vs) - 1) // chunks
        has_data = any(
            tuple(int(x) for x in np.add(c, begin)) in present for c in np.ndindex(*(end - begin + 1))
        )
        if has_data and mask_array is not None:
            region = write_roi.intersect(mask_array.roi)
            has_data = not region.empty and bool(np.any(mask_array[region]))
        skip[position] = 0 if has_data else 1
    return skip


def _intensity_range(data) -> tuple[float, float]:
    """(low, high) of a Zarr array, chunk by chunk; stops at the first sign of two values."""
    import itertools

    low = high = None
    for start in itertools.product(*(range(0, n, c) for n, c in zip(data.shape, data.chunks))):
        chunk = data[tuple(slice(s, s + c) for s, c in zip(start, data.chunks))]
        low = float(chunk.min()) if low is None else min(low, float(chunk.min()))
        high = float(chunk.max()) if high is None else max(high, float(chunk.max()))
        if low != high:
            break
    return low, high


def _output_channels(model, input_shape) -> list[int]:
    """Channels of each model output, from a forward on the meta device (no compute)."""
    import copy

    import torch

    meta_model = copy.deepcopy(model).to("meta")
    with torch.no_grad():
        result = meta_model(torch.zeros((1, 1, *input_shape), device="meta"))
    if isinstance(result, torch.Tensor):
        result = (result,)
    return [int(r.shape[1]) for r in result]


__all__ = ["PredictStage", "VolumeError", "empty_block_mask", "predict_blockwise", "predict_volume", "prediction_key"]
