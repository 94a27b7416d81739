"""Pictures of results people look at: loss curves, slices with overlays, scores."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io.atomic import write_bytes


def _save(fig, out, dpi: int) -> None:
    """Write the figure whole or not at all (beside, then renamed in): a flow running on the
    same volume at the same time reads either the old picture or the new one."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    write_bytes(out, buffer.getvalue())


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
    _save(fig, out, dpi=100)
    return out


def _label_colours(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A random RGB colour per id (black for 0), stable for a given set of ids."""
    _, inverse = np.unique(ids, return_inverse=True)
    palette = np.random.default_rng(seed).random((inverse.max() + 1, 3))
    rgb = palette[inverse.reshape(ids.shape)]
    rgb[ids == 0] = 0
    return rgb


def _slice_panels(raw: np.ndarray, columns, out, title: str, n_slices: int) -> Path:
    """Rows of z-slices; `columns` is a list of (title, draw(ax, z)) after a raw column."""
    out = Path(out)
    zs = np.linspace(raw.shape[0] * 0.2, raw.shape[0] * 0.8, n_slices).astype(int)
    columns = [("raw", lambda ax, z: ax.imshow(raw[z], cmap="gray")), *columns]
    fig, axes = plt.subplots(n_slices, len(columns), figsize=(4 * len(columns), 2.2 * n_slices), squeeze=False)
    for row, z in enumerate(zs):
        for col, (_, draw) in enumerate(columns):
            draw(axes[row, col], z)
        axes[row, 0].set_ylabel(f"z = {z}")
    for col, (name, _) in enumerate(columns):
        axes[0, col].set_title(name)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out, dpi=90)
    return out


def _overlay(raw: np.ndarray, labels: np.ndarray):
    def draw(ax, z):
        ax.imshow(raw[z], cmap="gray")
        ax.imshow(_label_colours(labels[z]), alpha=0.5)

    return draw


def plot_affinity_slices(
    raw: np.ndarray,
    labels: np.ndarray,
    predicted_affs: np.ndarray,
    out: str | os.PathLike,
    title: str = "",
    n_slices: int = 3,
) -> Path:
    """Rows of z-slices: raw | ground-truth labels | predicted boundaries (1 - mean affinity)."""
    affs = predicted_affs.astype(np.float32)
    if affs.max() > 1.0:
        affs = affs / 255.0
    boundary = 1.0 - affs.mean(axis=0)
    columns = [
        ("ground truth", _overlay(raw, labels)),
        ("predicted boundaries (1 - affinity)", lambda ax, z: ax.imshow(boundary[z], cmap="magma", vmin=0, vmax=1)),
    ]
    return _slice_panels(raw, columns, out, title, n_slices)


def plot_voi_vs_threshold(rows: list[dict], out: str | os.PathLike, title: str = "") -> Path:
    out = Path(out)
    t = [r["threshold"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, [r["voi_split"] for r in rows], "o-", label="VOI split")
    ax.plot(t, [r["voi_merge"] for r in rows], "s-", label="VOI merge")
    ax.plot(t, [r["voi_sum"] for r in rows], "k--", label="VOI sum")
    ax.plot(t, [r["arand"] for r in rows], "^:", label="ARAND")
    ax.set_xlabel("agglomeration threshold")
    ax.set_ylabel("error (lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, out, dpi=100)
    return out


def plot_segmentation_slices(raw, labels, segmentation, out, title: str = "", n_slices: int = 3) -> Path:
    """Rows of z-slices: raw | ground truth overlay | segmentation overlay."""
    columns = [("ground truth", _overlay(raw, labels)), ("segmentation", _overlay(raw, segmentation))]
    return _slice_panels(raw, columns, out, title, n_slices)


def plot_checkpoint_scores(rows: list[dict], out: str | os.PathLike, title: str = "") -> Path:
    """VOI sum and ARAND (at each setting's best threshold) vs training iteration, one line
    per segmentation setting; the best point is marked."""
    out = Path(out)
    def setting(r: dict) -> tuple:
        return (len(r.get("averaged_iterations") or []), r.get("test_time_augmentation", False),
                r["merge_function"], r["min_seed_distance"])

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for averaged, tta, mf, msd in sorted({setting(r) for r in rows}):
        mine = sorted((r for r in rows if setting(r) == (averaged, tta, mf, msd)), key=lambda r: r["iteration"])
        it = [r["iteration"] for r in mine]
        for ax, key in zip(axes, ("voi_sum", "arand")):
            ax.plot(it, [r[key] for r in mine], marker=".", linestyle="--" if averaged else "-",
                    label=f"{f'average of {averaged}, ' if averaged else ''}{'mirrored x8, ' if tta else ''}"
                          f"{mf}, seed distance {msd}")
    best = min(rows, key=lambda r: r["voi_sum"])
    for ax, key, name in zip(axes, ("voi_sum", "arand"), ("VOI sum (split + merge)", "adapted Rand error")):
        ax.scatter([best["iteration"]], [best[key]], s=120, facecolors="none", edgecolors="red", zorder=3,
                   label="best VOI sum")
        ax.set_xlabel("training iteration")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out, dpi=100)
    return out
