"""Choosing the threshold without labels as a Prefect task: cached on the predictions'
and segmentations' fingerprints and the criterion's settings; rerun when the recorded
choice is gone from the container."""

from __future__ import annotations

import hashlib
import json

from ..core.segment.threshold_selection import choose_and_record, recorded_choice
from .cache_keys import stage_task
from .references import ArrayRef
from .retry import retry_transient
from .run_names import logged_stage, task_run_name, volume_name
from .run_names import thresholds as listed


def _thresholds(segmentations: list[ArrayRef]) -> list[float]:
    return [float(s.dataset.rsplit("/", 1)[1]) for s in segmentations]


def _key(ctx, p) -> str:
    refs: list[ArrayRef] = [p["affs"], *p["segmentations"]]
    digest = hashlib.sha256("|".join(f"{r.container}/{r.dataset}:{r.current_fingerprint()}" for r in refs).encode())
    config = p["config"]
    digest.update(json.dumps([config.segmentation.model_dump(mode="json"), config.training.lsd_sigma_nm,
                              config.training.lsd_downsample, config.model.affinity_neighborhood],
                             default=str, sort_keys=True).encode())
    return f"choose-threshold-{digest.hexdigest()[:16]}"


def _recorded(p) -> str | None:
    choice = recorded_choice(p["affs"].container, p["config"].segmentation.merge_function)
    return None if choice is None else json.dumps(choice, sort_keys=True)


@stage_task(name="choose-threshold", cache_key_fn=_key, persist_result=True, timeout_seconds=6 * 3600, retries=2,
            retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient,
            committed=lambda p: _recorded(p),
            task_run_name=task_run_name("choose-threshold", lambda p: f"{volume_name(p['affs'])} among "
                                                                      f"{listed(_thresholds(p['segmentations']))}"))
def choose_threshold(config, affs: ArrayRef, segmentations: list[ArrayRef]) -> dict | None:
    """The label-free choice among the segmentations (None with `threshold_criterion =
    "validation"` or a single threshold), recorded in the container."""
    with logged_stage("choose-threshold", volume=affs.container, criterion=config.segmentation.threshold_criterion,
                      thresholds=listed(_thresholds(segmentations))) as learned:
        choice = choose_and_record(affs.container, config, _thresholds(segmentations), affs.dataset)
        learned["chosen"] = None if choice is None else f"{choice['threshold']:g}"
    return choice
