"""Evaluate segmentations against ground truth: VOI and ARAND per threshold, the best one.

Writes a JSON report and two pictures: VOI split/merge vs threshold, and slices of
raw | ground truth | best segmentation.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..io.atomic import write_bytes
from ..io.layout import NEURON_IDS, RAW, SEGMENTATIONS
from ..io.volumes import VolumeError, dataset_exists, list_datasets, open_array
from ..view.plots import plot_segmentation_slices, plot_voi_vs_threshold
from .metrics import segmentation_scores


def evaluate_volume(
    container,
    merge_function: str = "hist_quant_50",
    labels_dataset: str = NEURON_IDS,
    out_dir=None,
    roi=None,
) -> dict:
    """Scores of every segmentation under volumes/segmentation/<merge_function>/ against
    the labels, within `roi` (a funlib Roi in nm; default: all labels)."""
    container = Path(container)
    labels = open_array(container, labels_dataset)
    if roi is not None and not labels.roi.contains(roi):
        raise VolumeError(
            f"{container}/{labels_dataset}: the region to score, {roi}, is not inside the labels (ROI {labels.roi})"
        )
    region = roi if roi is not None else labels.roi
    prefix = f"{SEGMENTATIONS}/{merge_function}/"
    datasets = sorted(
        (d for d in list_datasets(container) if d.startswith(prefix) and "/." not in d),
        key=lambda d: float(d.removeprefix(prefix)),
    )
    if not datasets:
        raise VolumeError(f"{container}: no segmentations under {prefix} (run `lsdflow segment` first)")

    if dataset_exists(container, RAW):
        raw_roi = open_array(container, RAW).roi
        if not raw_roi.contains(labels.roi):
            raise VolumeError(
                f"{container}: {labels_dataset} (ROI {labels.roi}) is not inside {RAW} (ROI {raw_roi}); "
                f"labels and raw data must cover the same region"
            )
    gt = labels[region]
    rows = []
    for dataset in datasets:
        seg = open_array(container, dataset)
        if seg.roi != labels.roi or tuple(seg.voxel_size) != tuple(labels.voxel_size):
            raise VolumeError(
                f"{container}/{dataset}: ROI {seg.roi} / voxel size {tuple(seg.voxel_size)} do not match "
                f"{labels_dataset} (ROI {labels.roi}, voxel size {tuple(labels.voxel_size)})"
            )
        scores = segmentation_scores(gt, seg[region])
        rows.append({"threshold": float(dataset.removeprefix(prefix)), **scores.as_dict()})
    best = min(rows, key=lambda r: r["voi_sum"])
    report = {"volume": str(container), "roi": _roi_dict(region) if roi is not None else None,
              "merge_function": merge_function, "scores": rows, "best": best}
    out_dir = Path(out_dir) if out_dir else container.parent / f"{container.stem}_evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)

    report["pictures"] = [
        str(plot_voi_vs_threshold(rows, out_dir / "voi_vs_threshold.png", title=f"{container.name} ({merge_function})")),
    ]
    try:
        raw = open_array(container, RAW)
        best_seg = open_array(container, f"{prefix}{best['threshold']:g}")
        report["pictures"].append(str(plot_segmentation_slices(
            raw[region], gt, best_seg[region], out_dir / "segmentation.png",
            title=f"threshold {best['threshold']:g}: VOI split {best['voi_split']:.3f}, merge {best['voi_merge']:.3f}",
        )))
    except VolumeError:
        pass  # no raw to show
    write_bytes(out_dir / "evaluation.json", json.dumps(report, indent=2).encode())  # whole or not at all
    report["json"] = str(out_dir / "evaluation.json")
    return report


def _roi_dict(roi) -> dict:
    return {"offset_nm": list(roi.offset), "shape_nm": list(roi.shape)}


def format_scores(report: dict) -> str:
    lines = [f"{'threshold':>9s} {'VOI split':>9s} {'VOI merge':>9s} {'VOI sum':>8s} {'ARAND':>7s}"]
    for r in report["scores"]:
        mark = "  <- best" if r is report["best"] or r == report["best"] else ""
        lines.append(f"{r['threshold']:9.3g} {r['voi_split']:9.3f} {r['voi_merge']:9.3f} {r['voi_sum']:8.3f} {r['arand']:7.3f}{mark}")
    return "\n".join(lines)
