"""The MTLSD loss: a weighted MSE per task, summed with per-task weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of weights * (prediction - target)² over the voxels that carry weight.

    As in the published MTLSD training: averaging only over weighted voxels keeps masked
    regions (unlabelled, padded) from diluting the loss."""
    scaled = weights * (prediction - target) ** 2
    weighted = scaled[weights > 0]
    return weighted.mean() if weighted.numel() > 0 else scaled.mean()


class MultiTaskWeightedMSELoss(nn.Module):
    """Sum over tasks of task_weight * weighted_mse; arguments come as (pred, target, weights) triples."""

    def __init__(self, task_weights: Sequence[float]):
        super().__init__()
        self.task_weights = list(task_weights)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if len(tensors) != 3 * len(self.task_weights):
            raise ValueError(
                f"expected {3 * len(self.task_weights)} tensors (pred, target, weights) "
                f"for {len(self.task_weights)} tasks, got {len(tensors)}"
            )
        loss = tensors[0].new_zeros(())
        for i, w in enumerate(self.task_weights):
            pred, target, weights = tensors[3 * i : 3 * i + 3]
            loss = loss + w * weighted_mse(pred, target, weights)
        return loss
