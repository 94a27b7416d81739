"""MLflow tracking for lsdflow: the store of a workspace (or a team server), one experiment
per dataset config, and tracked training runs.

Kept out of `core/` (which never imports MLflow): the registry layer the CLI and the
Prefect flows use. Default store: `sqlite:///<workspace>/mlflow.db` with artifacts under
`<workspace>/mlartifacts`, nothing to start; `MLFLOW_TRACKING_URI` points everything at a
team server instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from pathlib import Path

from ..core.io.output_lock import file_lock


class RegistryError(ValueError):
    """A model reference that cannot be resolved, or a registry action that cannot be done."""


def tracking_uri(workspace: str | os.PathLike) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(workspace).resolve() / 'mlflow.db'}"


def mlflow_for(workspace):
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    user_setting = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(workspace))
    # set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses). Undone: the
    # variable means "the user's team server"; left set, the next workspace in this process
    # would write into the first one's store, and experiments would get no workspace
    # artifact location (MLflow's default is ./mlruns of the current directory).
    if user_setting is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_setting
    _create_store_once(tracking_uri(workspace), None if user_setting else Path(workspace))
    return mlflow


_CREATED: set[str] = set()


def _create_store_once(uri: str, workspace: Path | None = None) -> None:
    """MLflow creates a SQLite store's tables on first use (alembic migrations); two
    processes doing it at once on a new workspace (two acquisitions processed together, a
    training and a prediction) fail with "Online migration expected to match one row".
    The first use in each process waits on a lock beside the database, and points a
    workspace's store at the workspace's own artifacts (`relocate_artifacts`)."""
    if uri in _CREATED or not uri.startswith("sqlite:///"):
        return
    from mlflow import MlflowClient

    database = Path(uri.removeprefix("sqlite:///"))
    with file_lock(database.with_name(f".{database.name}.lock"), f"{database} (MLflow store)"):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)  # creates the tracking tables
        client.search_registered_models(max_results=1)  # and the registry's
        if workspace is not None:
            relocate_artifacts(database, Path(workspace).resolve() / "mlartifacts")
    _CREATED.add(uri)


# the columns of MLflow's SQLite schema that hold artifact locations
_ARTIFACT_COLUMNS = {"experiments": "artifact_location", "runs": "artifact_uri",
                     "model_versions": ("source", "storage_location"), "logged_models": "artifact_location"}


def relocate_artifacts(database: Path, artifacts: Path) -> int:
    """MLflow stores artifact locations as absolute paths. A workspace that was moved or
    copied still names its old place (a copy would even write into the original's
    folder): rewrite every location under another `.../mlartifacts` to `artifacts`, in one
    transaction. Returns the number of rows changed. Written here because MLflow has no
    way to change an experiment's artifact location."""
    import sqlite3

    here = artifacts.as_uri()
    changed = 0
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        olds = {row[0] for row in db.execute("SELECT artifact_location FROM experiments")
                if row[0] and row[0].startswith("file://") and row[0].rstrip("/").endswith("/mlartifacts")}
        for old in olds - {here}:
            for table, columns in _ARTIFACT_COLUMNS.items():
                present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for column in [c for c in ([columns] if isinstance(columns, str) else columns) if c in present]:
                    changed += db.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {column} = ? OR {column} LIKE ?",
                        (here, len(old) + 1, old, old + "/%")).rowcount
    return changed


def client_for(workspace):
    from mlflow import MlflowClient

    mlflow_for(workspace)
    return MlflowClient()


def experiment_id(config, workspace) -> str:
    """One experiment per dataset config (`lsdflow-<name>`), artifacts in the workspace."""
    mlflow = mlflow_for(workspace)
    name = f"lsdflow-{config.name}"
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (Path(workspace).resolve() / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def code_version() -> dict[str, str]:
    """Package version and, when run from a git checkout, the commit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("lsdflow")
    except PackageNotFoundError:
        package = "unknown"
    info = {"lsdflow_version": package}
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        info["git_commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def log_config(mlflow, dump: dict) -> None:
    """A config as the active run's parameters (section.field) and as config.json."""
    params = _flatten({k: v for k, v in dump.items() if k not in ("source", "workspace", "description")})
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per call
        mlflow.log_params(dict(list(params.items())[start : start + 100]))
    mlflow.log_dict(dump, "config.json")


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if not isinstance(value, str) else value
    return flat


class TrainingRun:
    """An MLflow run around `core.train.train`: params, loss curve, checkpoints, code version.

    Use as a context manager; pass `on_log` to `train()`."""

    def __init__(self, config, workspace, log_every: int | None = None):
        self.config = config
        self.workspace = Path(workspace)
        self.log_every = log_every or config.training.log_every
        self.run_id: str | None = None
        self._logged_checkpoints: set[str] = set()

    def __enter__(self) -> TrainingRun:
        mlflow = mlflow_for(self.workspace)
        run = mlflow.start_run(experiment_id=experiment_id(self.config, self.workspace),
                               run_name=f"train-{self.config.name}")
        self.run_id = run.info.run_id
        dump = self.config.model_dump(mode="json")
        log_config(mlflow, dump)
        mlflow.set_tags({**code_version(), "dataset": self.config.name, "config_hash": self.config.fingerprint()})
        self._mlflow = mlflow
        return self

    def on_log(self, iteration: int, loss: float, seconds: float) -> None:
        metrics = {"loss": loss}
        if seconds > 0:
            metrics["iterations_per_second"] = 1.0 / seconds
        self._mlflow.log_metrics(metrics, step=iteration)
        self.log_new_checkpoints()

    def log_new_checkpoints(self) -> None:
        for path in sorted(self.config.checkpoint_dir.glob("model_checkpoint_*")):
            if path.name not in self._logged_checkpoints:
                self._mlflow.log_artifact(str(path), artifact_path="checkpoints")
                self._logged_checkpoints.add(path.name)

    def finish(self, result, plot: Path | None = None) -> None:
        self.log_new_checkpoints()
        self._mlflow.log_metrics({"final_iteration": result.iteration,
                                  "iterations_per_second_overall": result.iterations_per_second})
        if plot and Path(plot).is_file():
            self._mlflow.log_artifact(str(plot))

    def __exit__(self, exc_type, exc, tb) -> None:
        self._mlflow.end_run(status="FAILED" if exc_type else "FINISHED")
