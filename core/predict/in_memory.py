"""Run a trained network over a volume held in memory (the small-volume path).

The volume is z-scored like the training data, padded by the network context, cut into
input tiles whose outputs tile the volume, and run in batches on `cuda` when available.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..config import check_voxel_size
from ..io.input_checks import (
    PREDICT_BYTES_PER_VOXEL,
    check_finite,
    check_fits_in_memory,
    check_not_constant,
    check_writable,
)
from ..io.intensity import scaled_intensities
from ..io.layout import PRED_AFFS, prediction_dataset
from ..io.volumes import open_array, write_array
from ..model.checkpoints import input_normalization, input_shift, load_model
from ..model.devices import default_device
from .augmentation import MIRRORINGS, augmentation_margin, predict_mirrored


def tile_starts(size: int, tile: int) -> list[int]:
    """Output tile starts covering [0, size): regular steps, the last one flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile))
    starts.append(size - tile)
    return starts


def predict_array(
    model: torch.nn.Module,
    raw: np.ndarray,
    input_shape: tuple[int, int, int],
    output_shape: tuple[int, int, int],
    normalization: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 1,
    device: str | None = None,
    progress: bool = False,
    augment: bool = False,
) -> tuple[np.ndarray, ...]:
    """Predict every output of `model` for every voxel of `raw` (already scaled to [0, 1]),
    made network input by `normalization` (core/io/intensity.py); `augment`: average over the
    8 mirrorings (see `test_time_augmentation`).

    Returns one float32 array (channels, z, y, x) per model output, covering `raw`."""
    context = context_margin(model, input_shape, output_shape, augment)
    shape = raw.shape
    # a volume smaller than one output tile is predicted in a padded tile and cropped
    padded_shape = tuple(max(s, o) for s, o in zip(shape, output_shape))
    # padding value 0 = the volume's mean intensity, as gunpowder's Pad does in training
    padded = np.zeros(tuple(p + 2 * c for p, c in zip(padded_shape, context)), dtype=np.float32)
    padded[tuple(slice(c, c + s) for c, s in zip(context, shape))] = normalization(raw)
    outputs = predict_with_context(model, padded, input_shape, output_shape, batch_size, device, progress, augment)
    crop = (slice(None),) + tuple(slice(0, s) for s in shape)
    return tuple(o[crop] for o in outputs)


def predict_with_context(
    model: torch.nn.Module,
    normalized: np.ndarray,
    input_shape: tuple[int, int, int],
    output_shape: tuple[int, int, int],
    batch_size: int = 1,
    device: str | None = None,
    progress: bool = False,
    augment: bool = False,
) -> tuple[np.ndarray, ...]:
    """Predict the region of `normalized` (z-scored raw) that lies one network context
    inside its faces; the region must be at least one output tile in every axis.

    With `augment`, the average over the 8 mirrorings of the input (test-time
    augmentation, 8x the compute); the region then lies `context_margin` inside the faces."""
    device = device or default_device()
    model = model.to(device).eval()
    input_shape, output_shape = prediction_tile(model, input_shape, output_shape, augment)
    passes = len(MIRRORINGS) if augment and any(name.endswith("affs") for name in model.outputs) else 1
    bar = None
    if progress:
        from tqdm import tqdm

        region = tuple(s - (i - o) for s, i, o in zip(normalized.shape, input_shape, output_shape))
        tiles = int(np.prod([len(tile_starts(r, o)) for r, o in zip(region, output_shape)])) if min(region) > 0 else 0
        bar = tqdm(total=tiles * passes, desc="predict", unit="tile")

    def predict(x: np.ndarray) -> tuple[np.ndarray, ...]:
        return _predict_tiles(model, x, input_shape, output_shape, batch_size, device, bar)

    try:
        if augment:
            return predict_mirrored(predict, normalized, model.outputs, model.config.affinity_neighborhood,
                                    model.config.downsample_factors)
        return predict(normalized)
    finally:
        if bar is not None:
            bar.close()


def prediction_tile(model: torch.nn.Module, input_shape, output_shape, augment: bool = False
                    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input, output) shape of one network pass. The mirrored passes of test-time
    augmentation cover the region plus `augmentation_margin` on each side; the tile grows
    by that margin (still a valid input: the margin is whole downsampling steps) so that a
    region of n output tiles takes n passes, not (n + 1) per axis: a one-tile block took
    8 passes per mirroring before."""
    input_shape, output_shape = tuple(input_shape), tuple(output_shape)
    if not augment:
        return input_shape, output_shape
    margin = augmentation_margin(model.config.affinity_neighborhood, model.config.downsample_factors)
    return (tuple(i + 2 * m for i, m in zip(input_shape, margin)),
            tuple(o + 2 * m for o, m in zip(output_shape, margin)))


def context_margin(model: torch.nn.Module, input_shape, output_shape, augment: bool = False) -> tuple[int, ...]:
    """Voxels per axis the input of `predict_with_context` needs around the region."""
    context = tuple((i - o) // 2 for i, o in zip(input_shape, output_shape))
    if not augment:
        return context
    margin = augmentation_margin(model.config.affinity_neighborhood, model.config.downsample_factors)
    return tuple(c + m for c, m in zip(context, margin))


def _predict_tiles(model, normalized, input_shape, output_shape, batch_size, device, bar) -> tuple[np.ndarray, ...]:
    context = tuple((i - o) // 2 for i, o in zip(input_shape, output_shape))
    region = tuple(s - 2 * c for s, c in zip(normalized.shape, context))
    if any(r < o for r, o in zip(region, output_shape)):
        raise ValueError(f"input {normalized.shape} leaves a region {region} smaller than one output tile {output_shape}")
    starts = list(itertools.product(*(tile_starts(s, o) for s, o in zip(region, output_shape))))
    outputs: list[np.ndarray] | None = None
    with torch.inference_mode():
        for b in range(0, len(starts), batch_size):
            batch_starts = starts[b : b + batch_size]
            x = np.stack(
                [normalized[tuple(slice(s, s + i) for s, i in zip(start, input_shape))] for start in batch_starts]
            )[:, None]
            result = model(torch.from_numpy(np.ascontiguousarray(x)).to(device))
            if isinstance(result, torch.Tensor):
                result = (result,)
            if outputs is None:
                outputs = [np.zeros((r.shape[1], *region), dtype=np.float32) for r in result]
            for out, r in zip(outputs, result):
                r = r.float().cpu().numpy()
                for k, start in enumerate(batch_starts):
                    out[(slice(None),) + tuple(slice(s, s + o) for s, o in zip(start, output_shape))] = r[k]
            if bar is not None:
                bar.update(len(batch_starts))
    assert outputs is not None
    return tuple(outputs)


def recorded_input_shift(container, dataset: str = PRED_AFFS) -> float | None:
    """The input shift recorded with a volume's predictions (`intensity.intensity_shift`)."""
    import zarr

    path = Path(container) / dataset
    if not (path / ".zattrs").is_file():
        return None
    return zarr.open(str(path), mode="r").attrs.get("intensity_shift")


def prediction_attrs(model_file, meta: dict, model, raw: str, dtype: str) -> dict:
    """What every prediction dataset records about the model that made it."""
    attrs = {
        "model_file": str(Path(model_file).resolve()),
        "model_iteration": meta.get("iteration"),
        "model_config_fingerprint": meta.get("config_fingerprint"),
        "model_kind": model.config.kind,
        "raw": raw,
        "value_scale": 255 if dtype == "uint8" else 1,
    }
    if meta.get("averaged_iterations"):  # weights averaged over checkpoints (checkpoint_averaging)
        attrs["model_averaged_iterations"] = list(meta["averaged_iterations"])
    if meta.get("best_threshold") is not None:  # chosen on validation data when the file was written
        attrs["best_threshold"] = float(meta["best_threshold"])
    return attrs


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
    """Predict a whole (small) volume in memory and write `volumes/pred_<output>` datasets.

    Outputs cover the raw ROI with its voxel size and offset; uint8 scales [0, 1] to
    0..255. Each dataset records the model file, its iteration and config fingerprint.
    Everything is checked and computed before anything is written; each dataset is
    written beside its final place and renamed in, so a failure loses nothing."""
    container = Path(container)
    output = Path(output) if output else container
    model_file = Path(model_file or config.prediction.checkpoint or "")
    raw_array = open_array(container, config.data.raw_dataset)
    check_voxel_size(config, tuple(raw_array.voxel_size), f"{container}/{config.data.raw_dataset}")
    voxels = int(np.prod(raw_array.shape))
    check_fits_in_memory(voxels * PREDICT_BYTES_PER_VOXEL[config.prediction.test_time_augmentation],
                         f"{container}/{config.data.raw_dataset}: predicting {voxels / 1e6:.1f} M voxels in memory",
                         f"predict it block by block: `lsdflow predict {config.name} {container} --blockwise`")
    model, meta = load_model(model_file)
    check_writable(output)
    dtype = output_dtype or config.prediction.output_dtype
    raw = raw_array[raw_array.roi]
    check_finite(raw, f"{container}/{config.data.raw_dataset}")
    check_not_constant(float(raw.min()), float(raw.max()), f"{container}/{config.data.raw_dataset}")
    normalization = input_normalization(raw_array, config.prediction.normalization, model_file, meta)
    # the model file defines the network; the config the data and the prediction tile
    input_shape, output_shape = config.with_model(model.config).prediction_shapes
    outputs = predict_array(
        model, scaled_intensities(raw), input_shape, output_shape, normalization,
        batch_size=config.prediction.batch_size, device=device, progress=progress,
        augment=config.prediction.test_time_augmentation,
    )
    attrs = prediction_attrs(model_file, meta, model, f"{container}/{config.data.raw_dataset}", dtype)
    attrs["test_time_augmentation"] = config.prediction.test_time_augmentation
    attrs["normalization"] = normalization.kind
    attrs["intensity_shift"] = input_shift(raw_array, model_file, meta)  # label-free: unlike the training data?
    attrs.update(extra_attrs or {})  # e.g. the registered model's lineage
    written = {}
    for name, data in zip(model.outputs, outputs):
        values = np.round(data * 255).astype(np.uint8) if dtype == "uint8" else data.astype(np.float32)
        written[name] = write_array(
            output, prediction_dataset(name), raw_array.roi, raw_array.voxel_size, values, attrs
        )
    return written
