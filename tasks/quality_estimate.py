"""The label-free quality estimate of an acquisition as a Prefect task: cached on the raw
data, the predictions (which name the model that made them) and the settings; rerun when
the recorded estimate is gone from the container."""

from __future__ import annotations

import hashlib
import json

from ..core.segment.quality_estimate import estimate_for_predictions, recorded
from .cache_keys import stage_task
from .references import ArrayRef
from .retry import retry_transient
from .run_names import logged_stage, task_run_name, volume_name


def _key(ctx, p) -> str:
    config, affs, raw = p["config"], p["affs"], p["raw"]
    digest = hashlib.sha256("|".join(f"{r.container}/{r.dataset}:{r.current_fingerprint()}" for r in (raw, affs)).encode())
    digest.update(json.dumps([p["threshold"], config.segmentation.model_dump(mode="json"),
                              config.prediction.model_dump(mode="json")], default=str, sort_keys=True).encode())
    return f"estimate-quality-{digest.hexdigest()[:16]}"


def _recorded(p) -> str | None:
    estimate = recorded(p["affs"].container, p["config"].segmentation.merge_function)
    return None if estimate is None else json.dumps(estimate, sort_keys=True)


@stage_task(name="estimate-quality", cache_key_fn=_key, persist_result=True, timeout_seconds=6 * 3600, retries=2,
            retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient, committed=_recorded,
            task_run_name=task_run_name("estimate-quality", lambda p: f"{volume_name(p['affs'])} at {float(p['threshold']):g}"))
def estimate_quality(config, raw: ArrayRef, affs: ArrayRef, threshold: float) -> dict:
    """How much the segmentation at `threshold` changes between two halves of the
    test-time augmentations, on a central crop; recorded with the segmentations."""
    with logged_stage("estimate-quality", volume=affs.container, threshold=f"{threshold:g}") as learned:
        estimate = estimate_for_predictions(config, affs.container, affs.dataset, threshold)
        learned["verdict"] = estimate.get("verdict")
    return estimate
