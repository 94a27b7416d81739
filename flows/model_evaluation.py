"""Evaluate a registered model on a validation volume: predict, segment, score, and record
the result with the model version (what promotion and the default threshold rely on)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..core.evaluate import evaluate_volume
from ..core.predict import predict_volume
from ..core.segment import segment_volume
from ..core.volumes import VolumeError, dataset_exists
from .registry import record_evaluation, resolve_model


def evaluate_model(uri: str, volume, config, workspace, progress: bool = False) -> dict:
    """Scores of the model behind `uri` on `volume` (which must have labels), logged to
    MLflow as a run and as tags of the model version. The volume is not modified: the
    work happens in a copy of its raw data and labels under the workspace."""
    volume = Path(volume).resolve()
    for dataset in (config.data.raw_dataset, config.data.labels_dataset):
        if not dataset_exists(volume, dataset):
            raise VolumeError(f"{volume}: dataset {dataset!r} not found (a validation volume needs raw data and labels)")
    registered = resolve_model(uri, workspace)
    work = Path(workspace).resolve() / "evaluations" / f"{registered.name}-v{registered.version}" / volume.name
    if work.exists():
        shutil.rmtree(work)
    for dataset in (config.data.raw_dataset, config.data.labels_dataset):
        shutil.copytree(volume / dataset, work / dataset)
    (work / ".zgroup").write_text('{"zarr_format": 2}')
    lineage = {k: v for k, v in registered.lineage().items() if k != "best_threshold"}
    predict_volume(config, work, model_file=registered.file, progress=progress, extra_attrs=lineage)
    seg = config.segmentation
    segment_volume(
        work, thresholds=seg.thresholds, merge_function=seg.merge_function,
        fragments_in_xy=seg.fragments_in_xy if seg.fragments_in_xy is not None else config.data.is_anisotropic,
        min_seed_distance=seg.min_seed_distance, filter_fragments=seg.filter_fragments,
    )
    report = evaluate_volume(work, seg.merge_function, config.data.labels_dataset, out_dir=work.parent / "report")
    record_evaluation(registered, report, str(volume), workspace, config)
    report["model_uri"] = registered.uri
    return report
