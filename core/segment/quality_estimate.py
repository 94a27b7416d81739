"""A label-free estimate of how good a segmentation is: does it change when the network
sees the volume differently?

The 8 mirrorings of test-time augmentation are split into two halves, each half's
averaged affinities are segmented on their own at the threshold in use, and the VOI sum
between the two segmentations is the estimate (`tta_disagreement`): 0 when the network
gives the same answer however the volume is turned, large where it guesses. Measured on
both shipped acquisitions (`benchmarks/quality_estimate.py`, docs/training.md), it tracks
the true VOI sum better than the input shift or the affinity uncertainty, loosely: a high
value flags a poor segmentation, a low one does not prove a good one. `BANDS` turns it into
words from that calibration. Computed on a central crop of at most `max_voxels`, so it
costs one test-time-augmented prediction of the crop whatever the volume's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..evaluate.metrics import segmentation_scores
from ..io.intensity import scaled_intensities
from ..io.volumes import VolumeError, open_array
from ..model.checkpoints import input_normalization, load_model
from ..predict.augmentation import augmentation_margin, unmirror
from ..predict.tiling import predict_array
from .threshold_selection import central_crop
from .watershed import agglomerate, fragments_from_affinities

# the two halves: the second is the first composed with a flip of all three axes
HALVES: tuple[tuple[tuple[int, ...], ...], ...] = (
    ((), (0,), (1,), (2,)),
    ((0, 1, 2), (1, 2), (0, 2), (0, 1)),
)
QUALITY_ATTRIBUTE = "quality_estimate"
DEFAULT_MAX_VOXELS = 96**3
MIN_EDGE_VOXELS = 24  # smaller crops give VOIs dominated by a single merge (docs/training.md)
# (upper bound, words), the bound chosen on the validation rows of
# benchmarks/results/quality_estimate.json (docs/training.md): every validation region
# above it had a true VOI sum of 0.9 or more; below it lie both good and poor results
BANDS: tuple[tuple[float, str], ...] = (
    (0.5, "stable under test-time augmentation: no sign of trouble (a stable segmentation can still "
          "be wrong; on our regions this went with true VOI sums of 0.4 to 1.2)"),
    (float("inf"), "unstable under test-time augmentation: likely out of the model's depth (on our "
                   "regions this went with true VOI sums of 0.9 or more): check it, or fine-tune on a few "
                   "labelled sections"),
)


def mirrored_affinities(model, raw: np.ndarray, input_shape, output_shape, normalization,
                        mirrorings: Sequence[tuple[int, ...]], device: str | None = None) -> np.ndarray:
    """The affinities of `raw` (scaled to [0, 1]) averaged over `mirrorings`, each mapped
    back; the `augmentation_margin` faces are invalid (see `unmirror`)."""
    index = model.outputs.index("affs")
    total = None
    for axes in mirrorings:
        flipped = np.flip(raw, axes).copy() if axes else raw
        affs = predict_array(model, flipped, input_shape, output_shape, normalization, device=device)[index]
        affs = unmirror("affs", affs, axes, model.config.affinity_neighborhood)
        total = affs if total is None else total + affs
    return total / len(mirrorings)


def halves_affinities(config, model_file, raw_array, roi, device: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """Affinities of `roi` from each half of the mirrorings, and the index of their valid
    interior (the augmentation margin off every face)."""
    model, meta = load_model(model_file)
    if "affs" not in model.outputs:
        raise ValueError(f"{model_file}: the model predicts no affinities; no quality estimate")
    raw = raw_array[roi]
    normalization = input_normalization(raw_array, config.prediction.normalization, model_file, meta)
    input_shape, output_shape = config.with_model(model.config).prediction_shapes
    a, b = (mirrored_affinities(model, scaled_intensities(raw), input_shape, output_shape, normalization, half, device)
            for half in HALVES)
    margin = augmentation_margin(model.config.affinity_neighborhood, model.config.downsample_factors)
    inner = (slice(None),) + tuple(slice(m, -m if m else None) for m in margin)
    return a, b, inner


def segment_at(config, affs: np.ndarray, threshold: float) -> np.ndarray:
    """In memory, with the config's segmentation settings (the path of `lsdflow segment`)."""
    seg = config.segmentation
    fragments = fragments_from_affinities(affs, config.fragments_in_xy(), seg.min_seed_distance, seg.filter_fragments)
    return agglomerate(affs, fragments, [threshold], config.segmentation.merge_function)[threshold]


def tta_disagreement(config, a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    """VOI sum between the segmentations of two halves' affinities at `threshold`."""
    # + 1: unfilled boundary voxels (0) are a region like any other here, not unlabelled
    return float(segmentation_scores(segment_at(config, a, threshold).ravel() + 1,
                                     segment_at(config, b, threshold).ravel() + 1).voi_sum)


def describe(value: float) -> str:
    return next(words for bound, words in BANDS if value <= bound)


def estimate_quality(config, container, model_file, threshold: float, max_voxels: int = DEFAULT_MAX_VOXELS,
                     device: str | None = None) -> dict:
    """The estimate for the raw volume of `container` segmented at `threshold` with the
    model at `model_file`, on a central crop of at most `max_voxels`."""
    raw_array = open_array(container, config.data.raw_dataset)
    crop = central_crop(raw_array.roi, raw_array.voxel_size, max_voxels)
    estimate = {"threshold": float(threshold), "crop_nm": [list(crop.offset), list(crop.shape)],
                "model_file": str(model_file)}
    if min(crop.shape / raw_array.voxel_size) < MIN_EDGE_VOXELS:
        return {**estimate, "tta_disagreement": None, "verdict": "volume too small for an estimate"}
    a, b, inner = halves_affinities(config, model_file, raw_array, crop, device)
    value = tta_disagreement(config, a[inner], b[inner], threshold)
    return {**estimate, "tta_disagreement": value, "verdict": describe(value)}


def record(container, merge_function: str, estimate: dict) -> None:
    """Keep the estimate with the segmentations (`volumes/segmentation/<merge function>`)."""
    import zarr

    group = zarr.open_group(str(Path(container) / "volumes" / "segmentation" / merge_function), mode="a")
    group.attrs[QUALITY_ATTRIBUTE] = estimate


def recorded(container, merge_function: str) -> dict | None:
    import zarr

    group = Path(container) / "volumes" / "segmentation" / merge_function
    if not (group / ".zattrs").is_file():
        return None
    return zarr.open_group(str(group), mode="r").attrs.get(QUALITY_ATTRIBUTE)


def estimate_for_predictions(config, container, affs_dataset: str, threshold: float) -> dict:
    """`estimate_quality` with the model that made `container/affs_dataset` (its
    `model_file` attribute), recorded with the segmentations."""
    import zarr

    model_file = zarr.open(str(Path(container) / affs_dataset), mode="r").attrs.get("model_file")
    if not model_file or not Path(model_file).is_file():
        raise VolumeError(f"{container}/{affs_dataset}: model_file {model_file!r} is not a readable model file; "
                          "the quality estimate needs the model that made the predictions")
    estimate = estimate_quality(config, container, model_file, threshold, config.segmentation.quality_max_voxels)
    record(container, config.segmentation.merge_function, estimate)
    return estimate
