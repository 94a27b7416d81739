"""Training and the model registry as Prefect tasks: train, register, evaluate a model on
validation data, promote."""

from __future__ import annotations

import hashlib

from prefect import task

from ..registry.model_evaluation import evaluate_model as evaluate_registered_model
from ..registry.promotion import promote as promote_model
from ..registry.registration import default_model_name, register_model
from .artifacts import publish_scores, publish_summary
from .references import ArrayRef
from .retry import retry_transient


def _train_key(ctx, parameters) -> str:
    config = parameters["config"]
    data = [ArrayRef(container=str(v.path), dataset=config.data.raw_dataset).current_fingerprint() for v in config.data.train]
    labels = [ArrayRef(container=str(v.path), dataset=config.data.labels_dataset).current_fingerprint() for v in config.data.train]
    payload = f"{config.fingerprint()}|{parameters.get('iterations')}|{data}|{labels}|{config.resolved_workspace}"
    return "train-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


@task(name="train", cache_key_fn=_train_key, persist_result=True, retries=1, retry_delay_seconds=60,
      retry_condition_fn=retry_transient, timeout_seconds=7 * 24 * 3600)
def train(config, iterations: int | None = None) -> dict:
    """Train (resuming from the newest checkpoint), tracked in MLflow; returns the exported
    model file and the MLflow run.

    Runs `lsdflow train` in a subprocess: gunpowder forks its batch workers, and forking
    the multi-threaded process a Prefect task runs in deadlocks them; a subprocess is also
    what a task timeout can really stop."""
    import json
    import subprocess
    import sys

    workspace = config.resolved_workspace
    workspace.mkdir(parents=True, exist_ok=True)
    config_file = workspace / "train_config.json"
    config_file.write_text(config.model_dump_json(indent=2))
    command = [sys.executable, "-m", "lsdflow.cli", "train", str(config_file), "--workspace", str(workspace),
               "--no-register", "--quiet", "--json"] + (["--iterations", str(iterations)] if iterations else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
    trained = json.loads(done.stdout.strip().splitlines()[-1])  # `train --json` ends with its result
    publish_summary(f"train-{config.name}", f"training {config.name}",
                    {"iterations": trained["iteration"], "model file": trained["model_file"],
                     "MLflow run": trained["run_id"], "log": done.stdout.strip().splitlines()[-2:-1]})
    return trained


@task(name="register", persist_result=True, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=retry_transient, timeout_seconds=3600)
def register(config, model_file: str, run_id: str | None = None) -> str:
    """A new registered version with alias challenger; returns its models:/ URI."""
    return register_model(model_file, config, config.resolved_workspace, run_id=run_id).uri


@task(name="evaluate-model", persist_result=True, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=retry_transient, timeout_seconds=24 * 3600)
def evaluate_model(config, model_uri: str, volume) -> dict:
    """`volume`: a path (the whole volume) or a VolumeRef (e.g. the config's validation region)."""
    report = evaluate_registered_model(model_uri, volume, config, config.resolved_workspace)
    publish_scores(f"model-scores-{model_uri}", report["scores"], report["best"])
    return {"model_uri": report["model_uri"], "best": report["best"]}


@task(name="promote", persist_result=True, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=retry_transient, timeout_seconds=3600)
def promote(config, name: str | None = None, margin: float = 0.0) -> dict:
    decision = promote_model(name or default_model_name(config), config.resolved_workspace, margin)
    publish_summary(f"promotion-{decision['model']}", "promotion",
                    {k: decision[k] for k in ("model", "challenger", "champion", "promoted", "reason")})
    if decision["promoted"]:
        from prefect.events import emit_event

        emit_event(event="lsdflow.model.promoted",
                   resource={"prefect.resource.id": f"lsdflow.model.{decision['model']}"},
                   payload={"model": decision["model"], "version": decision["challenger"]})
    return decision
