"""Score a model on a labelled volume (or a region of one): predict → fragments +
agglomeration → VOI/ARAND per threshold, with the stages that the blockwise path deploys
(the volume as one block): what is selected here is what runs on a new acquisition.

The one loop behind `lsdflow demo`, `lsdflow evaluate-model` (the registry's validation)
and `lsdflow select-checkpoint`. The work happens in a copy of the volume's raw data and
labels, so the user's volume is never written to. Prediction covers the whole volume (the
raw data around a region is the network's context); only the region is scored.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zarr

from ..config import LsdflowConfig, SegmentationConfig, VolumeRef
from ..io.graphstore import default_graph_url
from ..io.volumes import VolumeError, dataset_exists, open_array
from ..predict.blockwise import predict_volume
from ..segment.blockwise import segment_volume
from .scores import evaluate_volume


def check_labelled_volume(config: LsdflowConfig, volume: VolumeRef) -> None:
    """Raw data and labels present, and the region inside the labels: checked before any work."""
    for dataset in (config.data.raw_dataset, config.data.labels_dataset):
        if not dataset_exists(volume.path, dataset):
            raise VolumeError(f"{volume.path}: dataset {dataset!r} not found (scoring a model needs raw data and labels)")
    if volume.roi is not None:
        labels = open_array(volume.path, config.data.labels_dataset)
        if not labels.roi.contains(volume.roi):
            raise VolumeError(
                f"{volume}: the region is not inside {config.data.labels_dataset} (ROI {labels.roi})"
            )


def copy_labelled_volume(config: LsdflowConfig, volume: VolumeRef, work: Path) -> Path:
    """A fresh copy of the volume's raw data and labels at `work` (and no region graph of an
    earlier copy beside it)."""
    if work.exists():
        shutil.rmtree(work)
    Path(default_graph_url(work).removeprefix("sqlite:///")).unlink(missing_ok=True)
    for dataset in (config.data.raw_dataset, config.data.labels_dataset):
        shutil.copytree(volume.path / dataset, work / dataset)
    zarr.open_group(str(work), mode="a")
    return work


def segment_and_score(
    config: LsdflowConfig,
    work: Path,
    roi=None,
    segmentation: SegmentationConfig | None = None,
    out_dir: Path | None = None,
) -> dict:
    """Segment the predicted affinities in `work` (a working copy) with `segmentation`
    (default: the config's) and score every threshold within `roi`."""
    seg = segmentation or config.segmentation
    shutil.rmtree(work / "volumes" / "segmentation", ignore_errors=True)  # earlier settings' results
    segment_volume(config, work, thresholds=seg.thresholds, segmentation=seg)
    return evaluate_volume(work, seg.merge_function, config.data.labels_dataset, out_dir=out_dir, roi=roi)


def score_model(
    config: LsdflowConfig,
    model_file: str | Path,
    volume: VolumeRef | str | Path,
    work: str | Path,
    segmentation: SegmentationConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
    model_attrs: dict | None = None,
) -> dict:
    """Predict `volume` with `model_file` in a copy at `work`, segment, and score the region.

    Returns `evaluate_volume`'s report (scores per threshold, the best, pictures, JSON)."""
    volume = volume if isinstance(volume, VolumeRef) else VolumeRef(path=Path(volume))
    check_labelled_volume(config, volume)
    work = copy_labelled_volume(config, volume, Path(work))
    predict_volume(config, work, model_file=model_file, progress=progress, extra_attrs=model_attrs)
    out_dir = Path(out_dir) if out_dir else work.parent / f"{work.name}_evaluation"
    return segment_and_score(config, work, volume.roi, segmentation, out_dir)

