"""What a processed container holds, found by its layout (raw, predictions, fragments,
segmentations) and which segmentation is the one in use: the threshold a label-free
criterion chose, else the one the model carries from validation, else the only one."""

from __future__ import annotations

import os
from pathlib import Path

import zarr

from .layout import CHOICE_ATTRIBUTE, PRED_AFFS, SEGMENTATIONS
from .volumes import VolumeError, dataset_exists, list_datasets


def segmentations(container: str | os.PathLike) -> list[str]:
    """Every `volumes/segmentation/<merge function>/<threshold>`, by merge function and
    ascending threshold."""

    def order(name: str):
        merge_function, threshold = name.split("/")[-2:]
        try:
            return merge_function, float(threshold), threshold
        except ValueError:
            return merge_function, float("inf"), threshold

    return sorted((d for d in list_datasets(container) if d.startswith(SEGMENTATIONS + "/")), key=order)


def segmentation_in_use(container: str | os.PathLike) -> str | None:
    """The segmentation a user should look at first (None when there is none, or several
    and nothing says which)."""
    found = segmentations(container)
    if not found:
        return None
    for merge_function in sorted({d.split("/")[-2] for d in found}):
        attrs = Path(container, SEGMENTATIONS, merge_function, ".zattrs")
        choice = zarr.open_group(str(attrs.parent), mode="r").attrs.get(CHOICE_ATTRIBUTE) if attrs.is_file() else None
        if choice is not None and f"{SEGMENTATIONS}/{merge_function}/{choice['threshold']:g}" in found:
            return f"{SEGMENTATIONS}/{merge_function}/{choice['threshold']:g}"
    if dataset_exists(container, PRED_AFFS):
        best = zarr.open(str(Path(container, PRED_AFFS)), mode="r").attrs.get("best_threshold")
        carried = [d for d in found if best is not None and d.split("/")[-1] == f"{float(best):g}"]
        if carried:
            return carried[0]
    return found[0] if len(found) == 1 else None  # several, none recorded as chosen


def require(container: str | os.PathLike, datasets: list[str]) -> None:
    """Raise VolumeError naming the container and each missing dataset (before any output)."""
    container = Path(container)
    if not container.is_dir():
        raise VolumeError(f"{container}: no such Zarr container")
    missing = [d for d in datasets if not dataset_exists(container, d)]
    if missing:
        raise VolumeError(f"{container}: dataset(s) {missing} not found (present: {list_datasets(container)})")
