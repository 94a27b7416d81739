"""Segmentation metrics: VOI split/merge and adapted Rand error, from one contingency table.

Same definitions as scikit-image (`variation_of_information`, `adapted_rand_error`, base-2
logarithms, ground-truth label 0 ignored) and checked against it in the tests; computed
here from a single sparse contingency table so that one pass over the voxels gives all
scores, which matters when evaluating many thresholds of a large volume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import sparse

from ..segment.unique_ids import unique_inverse


@dataclass(frozen=True)
class SegmentationScores:
    voi_split: float  # H(segmentation | ground truth): over-segmentation
    voi_merge: float  # H(ground truth | segmentation): false merges
    arand: float  # adapted Rand error = 1 - F-score of the Rand precision/recall
    rand_precision: float
    rand_recall: float

    @property
    def voi_sum(self) -> float:
        return self.voi_split + self.voi_merge

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "voi_sum": self.voi_sum}


def contingency_table(ground_truth: np.ndarray, segmentation: np.ndarray) -> sparse.csr_array:
    """Voxel counts n_ij of (ground-truth id i, segment id j), ground-truth 0 ignored."""
    if ground_truth.shape != segmentation.shape:
        raise ValueError(
            f"ground truth {ground_truth.shape} and segmentation {segmentation.shape} differ in shape"
        )
    gt = ground_truth.ravel()
    seg = segmentation.ravel()
    keep = gt != 0
    _, gt_ids = unique_inverse(gt[keep])
    _, seg_ids = unique_inverse(seg[keep])
    counts = np.ones(gt_ids.size, dtype=np.float64)
    shape = (int(gt_ids.max(initial=-1)) + 1, int(seg_ids.max(initial=-1)) + 1)
    return sparse.csr_array(sparse.coo_array((counts, (gt_ids, seg_ids)), shape=shape))


def _entropy_terms(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def segmentation_scores(ground_truth: np.ndarray, segmentation: np.ndarray) -> SegmentationScores:
    table = contingency_table(ground_truth, segmentation)
    n = table.sum()
    if n == 0:
        raise ValueError("ground truth has no labelled voxels (all 0)")
    p_ij = table.data / n
    p_i = np.asarray(table.sum(axis=1)).ravel() / n
    p_j = np.asarray(table.sum(axis=0)).ravel() / n
    h_ij = _entropy_terms(p_ij)
    voi_split = h_ij - _entropy_terms(p_i)  # H(seg | gt) = H(gt, seg) - H(gt)
    voi_merge = h_ij - _entropy_terms(p_j)  # H(gt | seg) = H(gt, seg) - H(seg)

    counts = table.data
    sum_ij2 = float((counts * counts).sum() - n)
    a = np.asarray(table.sum(axis=1)).ravel()
    b = np.asarray(table.sum(axis=0)).ravel()
    sum_a2 = float((a * a).sum() - n)
    sum_b2 = float((b * b).sum() - n)
    precision = sum_ij2 / sum_b2 if sum_b2 > 0 else 1.0
    recall = sum_ij2 / sum_a2 if sum_a2 > 0 else 1.0
    f_score = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return SegmentationScores(
        voi_split=max(voi_split, 0.0),
        voi_merge=max(voi_merge, 0.0),
        arand=1.0 - f_score,
        rand_precision=precision,
        rand_recall=recall,
    )
