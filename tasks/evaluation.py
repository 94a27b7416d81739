"""Evaluation as a Prefect task: cached on the segmentations' and labels' fingerprints."""

from __future__ import annotations

import hashlib

from prefect import task

from ..core.evaluate import evaluate_volume
from .artifacts import publish_scores, publish_summary
from .references import ArrayRef
from .retry import retry_transient


def _key(ctx, parameters) -> str:
    refs: list[ArrayRef] = [*parameters["segmentations"], parameters["labels"]]
    digest = hashlib.sha256("|".join(f"{r.container}/{r.dataset}:{r.current_fingerprint()}" for r in refs).encode())
    digest.update(str(parameters.get("out_dir")).encode())
    return f"evaluate-{digest.hexdigest()[:16]}"


@task(name="evaluate", cache_key_fn=_key, persist_result=True, timeout_seconds=6 * 3600, retries=2,
      retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient)
def evaluate(config, segmentations: list[ArrayRef], labels: ArrayRef, out_dir: str | None = None) -> dict:
    """VOI/ARAND per threshold against the labels; the report's JSON and pictures on disk
    (in `out_dir`; default beside the container), the table in the UI. Returns the best
    row and the report's paths."""
    report = evaluate_volume(labels.container, config.segmentation.merge_function, labels.dataset, out_dir)
    publish_scores(f"scores-{labels.container}", report["scores"], report["best"])
    best = report["best"]
    publish_summary(
        f"evaluation-{labels.container}", "evaluation",
        {"volume": labels.container, "best threshold": best["threshold"], "VOI split": f"{best['voi_split']:.4f}",
         "VOI merge": f"{best['voi_merge']:.4f}", "ARAND": f"{best['arand']:.4f}", "report": report["json"],
         **{f"picture {i + 1}": p for i, p in enumerate(report["pictures"])}},
    )
    return {"best": best, "scores": report["scores"], "json": report["json"], "pictures": report["pictures"]}
