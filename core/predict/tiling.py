"""Network passes over a region held in memory: the volume cut into input tiles whose
outputs tile it, run in batches on `cuda` when available, optionally averaged over the 8
mirrorings (test-time augmentation). The predict stage runs its blocks through here; so do
the demo's quick passes and the label-free quality estimate.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch

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
