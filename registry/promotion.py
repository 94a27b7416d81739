"""Promotion gated by validation: evaluations recorded with the model versions they score,
and `champion` moved to the `challenger` only when it wins on the same validation volume
under the same settings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .registration import CHALLENGER, CHAMPION, RegisteredModel, version_by_alias
from .tracking import RegistryError, client_for, code_version, experiment_id, mlflow_for

SCORES = ("voi_split", "voi_merge", "voi_sum", "arand")


def describe_scores(best: dict, volume: str) -> str:
    return (f"VOI sum {best['voi_sum']:.4f} (split {best['voi_split']:.4f}, merge {best['voi_merge']:.4f}), "
            f"ARAND {best['arand']:.4f} at threshold {best['threshold']:g} on {volume}")


def log_scores(mlflow, report: dict) -> None:
    """Per-threshold scores as metrics named by their threshold (`voi_sum_at_0.15`), the
    best as `best_*`, and the whole table as scores.json."""
    for row in report["scores"]:
        mlflow.log_metrics({f"{k}_at_{row['threshold']:g}": row[k] for k in SCORES})
    mlflow.log_metrics({f"best_{k}": report["best"][k] for k in SCORES})
    mlflow.log_param("best_threshold", report["best"]["threshold"])
    mlflow.log_table({k: [row[k] for row in report["scores"]] for k in ("threshold", *SCORES)}, "scores.json")


def record_validation_scores(registered: RegisteredModel, best: dict, volume: str, workspace, how: str) -> None:
    """Scores measured outside `evaluate-model` (e.g. by `lsdflow demo`) shown with the
    version: metrics `validation_*` of the run that registered it and the version's
    description. Not the tags promotion compares (those come from `evaluate-model` only,
    so that a champion and a challenger are scored by the same code)."""
    client = client_for(workspace)
    for key in SCORES:
        client.log_metric(registered.run_id, f"validation_{key}", float(best[key]))
    if "validation_threshold" not in client.get_run(registered.run_id).data.params:  # params are write-once
        client.log_param(registered.run_id, "validation_threshold", best["threshold"])
    client.update_model_version(registered.name, registered.version,
                                description=f"Validation ({how}): {describe_scores(best, volume)}.")


def record_evaluation(registered: RegisteredModel, report: dict, volume: str, workspace, config,
                      started: float | None = None) -> str:
    """Log an evaluation as a run (from `started`, a time.time(), so it shows how long the
    evaluation took; linked to the model version both ways) and as tags and the
    description of the model version; returns the run id."""
    mlflow = mlflow_for(workspace)
    client = client_for(workspace)
    best = report["best"]
    run = client.create_run(
        experiment_id(config, workspace), run_name=f"evaluate-{registered.name}-v{registered.version}",
        start_time=int((started or time.time()) * 1000),
        tags={"model_uri": registered.uri, "model_name": registered.name, "model_version": registered.version,
              "validation_volume": volume, "mlflow.source.name": "lsdflow evaluate-model",
              "mlflow.note.content": f"{registered.name} version {registered.version}: {describe_scores(best, volume)}",
              **code_version()})
    with mlflow.start_run(run_id=run.info.run_id):
        log_scores(mlflow, report)
        if report.get("json"):
            mlflow.log_artifact(str(report["json"]))
        for picture in report.get("pictures", []):
            mlflow.log_artifact(str(picture))
    tags = {
        "evaluation_run": run.info.run_id,
        "validation_volume": volume,
        "evaluation_settings": evaluation_settings(config),
        "voi_split": best["voi_split"], "voi_merge": best["voi_merge"], "voi_sum": best["voi_sum"],
        "arand": best["arand"], "best_threshold": best["threshold"],
    }
    for key, value in tags.items():
        client.set_model_version_tag(registered.name, registered.version, key, str(value))
    client.update_model_version(registered.name, registered.version,
                                description=f"Validation: {describe_scores(best, volume)} (run {run.info.run_id}).")
    return run.info.run_id


def evaluation_settings(config) -> str:
    """The prediction and segmentation settings an evaluation used: scores are comparable
    only under the same."""
    seg = config.segmentation
    return (f"test_time_augmentation {config.prediction.test_time_augmentation}, {seg.merge_function}, "
            f"min_seed_distance {seg.min_seed_distance}, fragments_in_xy {config.fragments_in_xy()}, "
            f"filter_fragments {seg.filter_fragments:g}")


def promote(name: str, workspace, margin: float = 0.0, log_file: Path | None = None) -> dict:
    """Move `champion` to the `challenger` version when it beats the champion's VOI sum on the
    same validation volume by more than `margin` (or when there is no champion).

    Every decision is appended to a JSON-lines log and to the challenger's `promotion_history`
    tag: aliases keep no history of their own."""
    from mlflow.exceptions import MlflowException

    client = client_for(workspace)
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is None:
        raise RegistryError(f"model {name!r} has no {CHALLENGER!r} version to promote")
    if "voi_sum" not in challenger.tags:
        raise RegistryError(
            f"{name} version {challenger.version} has not been evaluated: run `lsdflow evaluate-model "
            f"models:/{name}@{CHALLENGER} --volume VALIDATION.zarr` first"
        )
    champion = version_by_alias(client, name, CHAMPION)
    decision: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": name,
        "challenger": challenger.version,
        "challenger_voi_sum": float(challenger.tags["voi_sum"]),
        "validation_volume": challenger.tags.get("validation_volume"),
        "margin": margin,
    }
    if champion is None:
        promoted, reason = True, "no champion yet"
    elif champion.version == challenger.version:
        promoted, reason = False, "the challenger already is the champion"
    elif "voi_sum" not in champion.tags:
        promoted, reason = True, "the champion has no evaluation"
    elif champion.tags.get("validation_volume") != challenger.tags.get("validation_volume"):
        raise RegistryError(
            f"{name}: champion v{champion.version} was evaluated on {champion.tags.get('validation_volume')}, "
            f"challenger v{challenger.version} on {challenger.tags.get('validation_volume')}; evaluate both on the same volume"
        )
    elif champion.tags.get("evaluation_settings", "") != challenger.tags.get("evaluation_settings", ""):
        raise RegistryError(
            f"{name}: champion v{champion.version} was evaluated with {champion.tags.get('evaluation_settings')}, "
            f"challenger v{challenger.version} with {challenger.tags.get('evaluation_settings')}; evaluate both "
            f"with the same settings (`lsdflow evaluate-model` re-scores the champion)"
        )
    else:
        champion_voi = float(champion.tags["voi_sum"])
        decision["champion_voi_sum"] = champion_voi
        promoted = decision["challenger_voi_sum"] < champion_voi - margin
        reason = (
            f"VOI sum {decision['challenger_voi_sum']:.4f} vs champion's {champion_voi:.4f} "
            f"({'better' if promoted else 'not better'} by more than {margin})"
        )
    decision.update(champion=champion.version if champion else None, promoted=promoted, reason=reason)
    if promoted:
        try:
            client.set_registered_model_alias(name, CHAMPION, challenger.version)
        except MlflowException as e:
            raise RegistryError(f"could not move {CHAMPION!r} of {name}: {e}") from e
    history = json.loads(challenger.tags.get("promotion_history", "[]"))
    history.append({k: decision[k] for k in ("time", "promoted", "reason", "champion")})
    client.set_model_version_tag(name, challenger.version, "promotion_history", json.dumps(history))
    log_file = Path(log_file or Path(workspace) / "promotions.jsonl")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as f:
        f.write(json.dumps(decision) + "\n")
    decision["log"] = str(log_file)
    return decision
