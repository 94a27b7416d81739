"""Evaluation as a Prefect task: cached on the segmentations' and labels' fingerprints."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import task

from ..core.evaluate.scores import evaluate_volume
from .artifacts import embedded_picture, publish_scores, publish_summary, volume_key
from .references import ArrayRef
from .retry import retry_transient
from .run_names import logged_stage, task_run_name, volume_name


def _key(ctx, parameters) -> str:
    refs: list[ArrayRef] = [*parameters["segmentations"], parameters["labels"]]
    digest = hashlib.sha256("|".join(f"{r.container}/{r.dataset}:{r.current_fingerprint()}" for r in refs).encode())
    digest.update(str(parameters.get("out_dir")).encode())
    return f"evaluate-{digest.hexdigest()[:16]}"


@task(name="evaluate", cache_key_fn=_key, persist_result=True, timeout_seconds=6 * 3600, retries=2,
      retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient,
      task_run_name=task_run_name("evaluate", lambda p: f"{volume_name(p['labels'])} against {p['labels'].dataset}"))
def evaluate(config, segmentations: list[ArrayRef], labels: ArrayRef, out_dir: str | None = None) -> dict:
    """VOI/ARAND per threshold against the labels; the report's JSON and pictures on disk
    (in `out_dir`; default beside the container), the table in the UI. Returns the best
    row and the report's paths."""
    with logged_stage("evaluate", volume=labels.container, labels=labels.dataset,
                      segmentations=len(segmentations)) as learned:
        report = evaluate_volume(labels.container, config.segmentation.merge_function, labels.dataset, out_dir)
        learned["best"] = f"VOI sum {report['best']['voi_sum']:.4f} at {report['best']['threshold']:g}"
    publish_scores(volume_key("scores", labels.container), report["scores"], report["best"])
    best = report["best"]
    publish_summary(
        volume_key("evaluation", labels.container), f"evaluation of {volume_name(labels)}",
        {"volume": labels.container, "best threshold": best["threshold"], "VOI split": f"{best['voi_split']:.4f}",
         "VOI merge": f"{best['voi_merge']:.4f}", "VOI sum": f"{best['voi_sum']:.4f}", "ARAND": f"{best['arand']:.4f}", "report": report["json"],
         **{Path(p).stem.replace("_", " "): embedded_picture(p) for p in report["pictures"]}},
    )
    return {"best": best, "scores": report["scores"], "json": report["json"], "pictures": report["pictures"]}
