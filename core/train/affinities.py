"""Affinities from labels, and how well predicted affinities separate boundaries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gunpowder.nodes.add_affinities import seg_to_affgraph
from scipy.stats import rankdata


def labels_to_affinities(labels: np.ndarray, neighborhood: Sequence[Sequence[int]]) -> np.ndarray:
    """Ground-truth affinities (1 = same object; background 0 has none), as in training."""
    return seg_to_affgraph(labels.astype(np.int64), np.asarray(neighborhood)).astype(np.float32)


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic (0.5 = chance)."""
    positives = positives.astype(bool).ravel()
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores.ravel())
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def edges_inside(shape: Sequence[int], neighborhood: Sequence[Sequence[int]]) -> np.ndarray:
    """Mask (channels, z, y, x) of the affinity edges whose both ends lie in the volume."""
    inside = np.ones(shape, dtype=bool)
    for channel, offset in enumerate(neighborhood):
        for axis, o in enumerate(offset):
            if o != 0:
                index = [channel] + [slice(None)] * (len(shape) - 1)
                index[axis + 1] = slice(0, -o) if o < 0 else slice(shape[axis + 1] - o, None)
                inside[tuple(index)] = False
    return inside


def affinity_quality(predicted: np.ndarray, labels: np.ndarray, neighborhood) -> dict[str, float]:
    """ROC AUC and balanced accuracy at 0.5 of predicted vs ground-truth affinities.

    Edges touching a voxel without a label id on both sides are boundary edges (the
    gala labels mark boundaries with 0). Chance level: AUC 0.5, balanced accuracy 0.5."""
    gt = labels_to_affinities(labels, neighborhood) > 0.5
    pred = predicted.astype(np.float32)
    if pred.max() > 1.0:
        pred = pred / 255.0
    # edges leaving the volume have no ground truth: drop them
    valid = edges_inside(gt.shape, neighborhood)
    gt, pred = gt[valid], pred[valid]
    hits_pos = (pred > 0.5) & gt
    hits_neg = (pred <= 0.5) & ~gt
    balanced = 0.5 * (hits_pos.sum() / max(gt.sum(), 1) + hits_neg.sum() / max((~gt).sum(), 1))
    return {
        "roc_auc": roc_auc(pred, gt),
        "balanced_accuracy": float(balanced),
        "boundary_fraction": float(1 - gt.mean()),
    }
