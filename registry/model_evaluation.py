"""Evaluate a registered model on a validation volume (or region): predict, segment, score,
and record the result with the model version (what promotion and the default threshold
rely on)."""

from __future__ import annotations

import time
from pathlib import Path

from ..core.config import VolumeRef
from ..core.evaluate.validation import check_labelled_volume, score_model
from .promotion import record_evaluation
from .registration import resolve_model


def evaluate_model(uri: str, volume, config, workspace, progress: bool = False) -> dict:
    """Scores of the model behind `uri` on `volume` (a path or a VolumeRef with a region;
    it must have labels), logged to MLflow as a run and as tags of the model version. The
    volume is not modified: the work happens in a copy under the workspace."""
    volume = volume if isinstance(volume, VolumeRef) else VolumeRef(path=Path(volume).resolve())
    check_labelled_volume(config, volume)
    registered = resolve_model(uri, workspace)
    started = time.time()
    work = Path(workspace).resolve() / "evaluations" / f"{registered.name}-v{registered.version}" / volume.path.name
    lineage = {k: v for k, v in registered.lineage().items() if k != "best_threshold"}
    report = score_model(config, registered.file, volume, work, out_dir=work.parent / "report",
                         progress=progress, model_attrs=lineage)
    record_evaluation(registered, report, str(volume), workspace, config, started=started)
    report["model_uri"] = registered.uri
    return report
