"""Pictures of results people look at: loss curves (segmentation overlays come later)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_training_log(log_csv: str | os.PathLike, out: str | os.PathLike | None = None) -> Path | None:
    """Loss vs iteration (raw and smoothed) from a training log CSV; returns the PNG path."""
    log_csv = Path(log_csv)
    if not log_csv.is_file():
        return None
    with open(log_csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    it = np.array([int(r["iteration"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    order = np.argsort(it, kind="stable")
    it, loss = it[order], loss[order]
    out = Path(out) if out else log_csv.with_suffix(".png")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(it, loss, lw=0.8, alpha=0.4, label="loss")
    window = max(1, len(loss) // 20)
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(it[window - 1 :], smooth, lw=2, label=f"mean of {window} logged values")
    ax.set_xlabel("iteration")
    ax.set_ylabel("weighted MSE (LSDs + affinities)")
    ax.set_title(f"training loss: {log_csv.parent.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
