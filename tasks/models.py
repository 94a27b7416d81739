"""Training and the model registry as Prefect tasks: train, register, evaluate a model on
validation data, promote."""

from __future__ import annotations

import hashlib

from prefect import task

from .artifacts import publish_scores, publish_summary
from .references import ArrayRef
from .retry import retry_transient


def _train_key(ctx, parameters) -> str:
    config = parameters["config"]
    data = [ArrayRef(container=str(p), dataset=config.data.raw_dataset).current_fingerprint() for p in config.data.train]
    labels = [ArrayRef(container=str(p), dataset=config.data.labels_dataset).current_fingerprint() for p in config.data.train]
    payload = f"{config.fingerprint()}|{parameters.get('iterations')}|{data}|{labels}|{config.resolved_workspace}"
    return "train-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


@task(name="train", cache_key_fn=_train_key, persist_result=True, retries=1, retry_delay_seconds=60,
      retry_condition_fn=retry_transient, timeout_seconds=7 * 24 * 3600)
def train(config, iterations: int | None = None) -> dict:
    """Train (resuming from the newest checkpoint), tracked in MLflow; returns the exported
    model file and the MLflow run."""
    from ..core.checkpoints import export_model
    from ..core.plots import plot_training_log
    from ..core.train import train as train_model
    from ..flows.registry import TrainingRun

    workspace = config.resolved_workspace
    with TrainingRun(config, workspace) as run:
        result = train_model(config, iterations=iterations, progress=False, on_log=run.on_log)
        run.finish(result, plot_training_log(workspace / "training_log.csv"))
        model_file = export_model(result.checkpoint, config, workspace / "model.pt", result.iteration)
    publish_summary(f"train-{config.name}", f"training {config.name}",
                    {"iterations": result.iteration, "iterations/s": f"{result.iterations_per_second:.2f}",
                     "device": result.device, "model file": str(model_file), "MLflow run": run.run_id})
    return {"model_file": str(model_file), "run_id": run.run_id, "iteration": result.iteration}


@task(name="register", persist_result=True)
def register(config, model_file: str, run_id: str | None = None) -> str:
    """A new registered version with alias challenger; returns its models:/ URI."""
    from ..flows.registry import register_model

    return register_model(model_file, config, config.resolved_workspace, run_id=run_id).uri


@task(name="evaluate-model", persist_result=True, timeout_seconds=24 * 3600)
def evaluate_model(config, model_uri: str, volume: str) -> dict:
    from ..flows.model_evaluation import evaluate_model as run

    report = run(model_uri, volume, config, config.resolved_workspace)
    publish_scores(f"model-scores-{model_uri}", report["scores"], report["best"])
    return {"model_uri": report["model_uri"], "best": report["best"]}


@task(name="promote", persist_result=True)
def promote(config, name: str | None = None, margin: float = 0.0) -> dict:
    from ..flows.registry import default_model_name
    from ..flows.registry import promote as run

    decision = run(name or default_model_name(config), config.resolved_workspace, margin)
    publish_summary(f"promotion-{decision['model']}", "promotion",
                    {k: decision[k] for k in ("model", "challenger", "champion", "promoted", "reason")})
    if decision["promoted"]:
        from prefect.events import emit_event

        emit_event(event="lsdflow.model.promoted",
                   resource={"prefect.resource.id": f"lsdflow.model.{decision['model']}"},
                   payload={"model": decision["model"], "version": decision["challenger"]})
    return decision
