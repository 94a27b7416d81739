"""Choosing the agglomeration threshold without ground truth.

A new acquisition has no labels, and a threshold carried over from another acquisition's
validation data can be far off (on medulla, gala's validation threshold more than doubled
the merge error). Each criterion here scores a candidate segmentation by how well it
explains the network's own predictions on the same voxels; the threshold with the lowest
score is chosen. Lower is better for every criterion.

- `affinity_disagreement`: the affinities a segmentation implies (1 inside an object, 0
  across a boundary) against the predicted affinities, balanced by the prediction: the
  share of predicted boundary the segmentation keeps inside objects plus the share of
  predicted inside it cuts, halved. Over-merging keeps predicted boundaries whole,
  over-segmentation cuts through confident affinities; both raise it.
- `lsd_disagreement`: Local Shape Descriptors recomputed from the segmentation
  (`lsd.train`, the same code and sigma as the training targets) against the predicted
  LSDs, mean squared difference over the segmented voxels. A merge or a split changes an
  object's local shape statistics where the network saw otherwise.

`label_free_quality` turns the same signals into a per-acquisition estimate: how uncertain
the affinities are and how badly even the best segmentation explains them. Both grow when
an acquisition is out of the model's depth (see docs/training.md for the values on
acquisitions where the truth is known).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.layout import CHOICE_ATTRIBUTE, PRED_AFFS, PRED_LSDS, segmentation_dataset
from ..io.volumes import dataset_exists, open_array
from ..train.affinities import edges_inside, labels_to_affinities


def default_thresholds(container, affs_dataset: str, configured) -> list[float]:
    """The thresholds to segment with when none are given: the best threshold found on
    validation data for the model that predicted these affinities (recorded with the
    affinities as `best_threshold`), else the configured list."""
    import zarr

    if not dataset_exists(container, affs_dataset):
        return [float(t) for t in configured]  # the stage itself reports the missing dataset
    attrs = zarr.open(str(Path(container) / affs_dataset), mode="r").attrs
    if attrs.get("best_threshold") is not None:
        return [float(attrs["best_threshold"])]
    return [float(t) for t in configured]


def _unit(array: np.ndarray) -> np.ndarray:
    """Predictions as float32 in [0, 1] (lsdflow stores them as uint8 0-255)."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32, copy=False)


def affinity_disagreement(affs: np.ndarray, segmentation: np.ndarray, neighborhood: Sequence[Sequence[int]]) -> float:
    """Disagreement between predicted affinities and the cuts of `segmentation`, balanced
    by what the prediction says: the share of predicted boundary (weight 1 - a) that the
    segmentation keeps inside an object, and the share of predicted inside (weight a) that
    it cuts, averaged (0 = perfect agreement). Edges leaving the volume are left out."""
    affs = _unit(affs)[: len(neighborhood)]
    whole = labels_to_affinities(segmentation, neighborhood) > 0.5
    inside = edges_inside(whole.shape, neighborhood)  # edges leaving the volume carry no evidence
    a, whole = affs[inside], whole[inside]
    boundary_weight, inside_weight = (1.0 - a).sum(), a.sum()
    merged = float((1.0 - a)[whole].sum() / boundary_weight) if boundary_weight > 0 else 0.0
    split = float(a[~whole].sum() / inside_weight) if inside_weight > 0 else 0.0
    return 0.5 * (merged + split)


def lsd_disagreement(lsds: np.ndarray, segmentation: np.ndarray, sigma_nm: float, voxel_size: Sequence[int],
                     downsample: int = 2) -> float:
    """Mean squared difference between predicted LSDs and LSDs recomputed from
    `segmentation` (as the training targets are), over its non-background voxels."""
    from lsd.train.local_shape_descriptor import get_local_shape_descriptors

    # lsd needs a shape divisible by its downsampling: drop the last voxels of an axis
    keep = tuple(slice(0, n - n % downsample) for n in segmentation.shape)
    segmentation, lsds = segmentation[keep], _unit(lsds)[(slice(None), *keep)]
    recomputed = get_local_shape_descriptors(
        segmentation.astype(np.uint64), sigma=(sigma_nm,) * 3, voxel_size=tuple(voxel_size), downsample=downsample)
    mask = segmentation != 0
    if not mask.any():
        return float("inf")
    return float(((recomputed.astype(np.float32) - lsds) ** 2)[:, mask].mean())


@dataclass(frozen=True)
class Criterion:
    name: str
    needs: str  # "affs" or "lsds": the prediction it reads
    score: Callable[..., float]


def criteria(neighborhood, sigma_nm: float, voxel_size, downsample: int = 2) -> dict[str, Criterion]:
    """The label-free criteria, bound to a model's settings."""
    return {
        "affinity_disagreement": Criterion(
            "affinity_disagreement", "affs", lambda affs, seg: affinity_disagreement(affs, seg, neighborhood)),
        "lsd_disagreement": Criterion(
            "lsd_disagreement", "lsds", lambda lsds, seg: lsd_disagreement(lsds, seg, sigma_nm, voxel_size, downsample)),
    }


def score_thresholds(segmentations: Mapping[float, np.ndarray], predictions: Mapping[str, np.ndarray | None],
                     available: Mapping[str, Criterion]) -> list[dict]:
    """One row per threshold: the value of every criterion whose prediction is there."""
    rows = []
    for threshold in sorted(segmentations):
        row = {"threshold": float(threshold)}
        for name, criterion in available.items():
            if predictions.get(criterion.needs) is not None:
                row[name] = criterion.score(predictions[criterion.needs], segmentations[threshold])
        rows.append(row)
    return rows


def choose(rows: list[dict], criterion: str) -> float:
    """The threshold with the lowest value of `criterion` (ties: the lower threshold)."""
    scored = [r for r in rows if np.isfinite(r.get(criterion, np.nan))]
    if not scored:
        raise ValueError(f"no threshold was scored by {criterion}")
    return min(scored, key=lambda r: (r[criterion], r["threshold"]))["threshold"]


def affinity_uncertainty(affs: np.ndarray) -> float:
    """Mean of 4·a·(1-a) over the predicted affinities: 0 when every affinity is 0 or 1,
    1 when all are 0.5. A network on data it knows is confident almost everywhere."""
    affs = _unit(affs)
    return float((4.0 * affs * (1.0 - affs)).mean())


def label_free_quality(affs: np.ndarray, rows: list[dict], criterion: str) -> dict:
    """The per-acquisition estimate: affinity uncertainty, and the chosen criterion's value
    at its best threshold (how well the best segmentation explains the predictions)."""
    threshold = choose(rows, criterion)
    best = next(r for r in rows if r["threshold"] == threshold)
    return {"affinity_uncertainty": affinity_uncertainty(affs), "criterion": criterion,
            "threshold": threshold, "disagreement": float(best[criterion])}


def central_crop(roi, voxel_size, max_voxels: int):
    """The largest centred sub-ROI of `roi` (on the voxel grid) with at most `max_voxels`
    voxels: criteria are computed on a sample, so that they stay cheap on a large volume."""
    from funlib.geometry import Coordinate, Roi

    shape = np.array(roi.shape) // np.array(voxel_size)
    scale = min(1.0, (max_voxels / float(np.prod(shape))) ** (1 / 3))
    crop = np.maximum(1, np.floor(shape * scale)).astype(int)
    offset = np.array(roi.offset) // np.array(voxel_size) + (shape - crop) // 2
    return Roi(Coordinate(offset * np.array(voxel_size)), Coordinate(crop * np.array(voxel_size)))


def choose_in_container(container, thresholds: Sequence[float], criterion: str, neighborhood, sigma_nm: float,
                        downsample: int, merge_function: str = "hist_quant_50",
                        affs_dataset: str = PRED_AFFS, lsds_dataset: str = PRED_LSDS,
                        max_voxels: int = 128**3) -> dict:
    """Score the container's segmentations at `thresholds` on a central crop (at most
    `max_voxels`) with every criterion its predictions allow, choose by `criterion`, and
    return the choice, the table and the label-free quality estimate."""
    from pathlib import Path

    container = Path(container)
    affs_array = open_array(container, affs_dataset)
    crop = central_crop(affs_array.roi, affs_array.voxel_size, max_voxels)
    predictions = {"affs": affs_array[crop]}
    predictions["lsds"] = open_array(container, lsds_dataset)[crop] if dataset_exists(container, lsds_dataset) else None
    segmentations = {float(t): open_array(container, segmentation_dataset(merge_function, t))[crop]
                     for t in thresholds}
    available = criteria(neighborhood, sigma_nm, affs_array.voxel_size, downsample)
    if criterion not in available:
        raise ValueError(f"unknown threshold criterion {criterion!r}; expected one of {sorted(available)}")
    if predictions[available[criterion].needs] is None:
        criterion = "affinity_disagreement"  # a model without LSDs
    rows = score_thresholds(segmentations, predictions, available)
    quality = label_free_quality(predictions["affs"], rows, criterion)
    return {"threshold": quality["threshold"], "criterion": criterion, "rows": rows, "quality": quality,
            "crop_nm": [list(crop.offset), list(crop.shape)]}


def candidate_thresholds(container, affs_dataset: str, config) -> list[float]:
    """The thresholds to segment at when none are given: the model's best on validation
    data (`threshold_criterion = "validation"`), else every configured threshold, for a
    label-free criterion to choose from."""
    seg = config.segmentation
    if seg.threshold_criterion == "validation":
        return default_thresholds(container, affs_dataset, seg.thresholds)
    return [float(t) for t in seg.thresholds]


def choose_and_record(container, config, thresholds: Sequence[float], affs_dataset: str = PRED_AFFS,
                      lsds_dataset: str = PRED_LSDS) -> dict | None:
    """With a label-free `threshold_criterion` and several thresholds segmented: choose
    one and record the choice (criterion, values per threshold, quality estimate, crop) in
    the attributes of `volumes/segmentation/<merge function>`. None otherwise."""
    from pathlib import Path

    import zarr

    seg = config.segmentation
    if seg.threshold_criterion == "validation" or len(thresholds) < 2:
        return None
    choice = choose_in_container(container, thresholds, seg.threshold_criterion, config.model.affinity_neighborhood,
                                 config.training.lsd_sigma_nm, config.training.lsd_downsample, seg.merge_function,
                                 affs_dataset, lsds_dataset, seg.criterion_max_voxels)
    group = zarr.open_group(str(Path(container) / "volumes" / "segmentation" / seg.merge_function), mode="a")
    group.attrs[CHOICE_ATTRIBUTE] = choice
    return choice


def recorded_choice(container, merge_function: str) -> dict | None:
    """The choice `choose_and_record` wrote, if any."""
    from pathlib import Path

    import zarr

    group = Path(container) / "volumes" / "segmentation" / merge_function
    if not (group / ".zattrs").is_file():
        return None
    return zarr.open_group(str(group), mode="r").attrs.get(CHOICE_ATTRIBUTE)


def describe_choice(choice: dict) -> str:
    quality = choice["quality"]
    return (f"threshold {choice['threshold']:g} chosen by {choice['criterion']} "
            f"(value {quality['disagreement']:.4f}; affinity uncertainty {quality['affinity_uncertainty']:.3f})")


__all__ = [
    "Criterion",
    "affinity_disagreement",
    "affinity_uncertainty",
    "CHOICE_ATTRIBUTE",
    "candidate_thresholds",
    "central_crop",
    "choose",
    "choose_and_record",
    "choose_in_container",
    "describe_choice",
    "recorded_choice",
    "criteria",
    "label_free_quality",
    "lsd_disagreement",
    "score_thresholds",
]
