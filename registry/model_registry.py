"""MLflow for lsdflow: tracked training runs, a model registry with aliases, and promotion
gated by evaluation on validation data.

Kept out of `core/` (which never imports MLflow): this is the platform layer the CLI and
the Prefect flows use. Models are registered as a state dict + config file (lsdflow's
portable model file), never as pickled code; loading goes through `torch.load(weights_only=True)`.

Default store: `sqlite:///<workspace>/mlflow.db` with artifacts under `<workspace>/mlartifacts`,
nothing to start; `MLFLOW_TRACKING_URI` points everything at a team server instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import ConfigError, ModelConfig, config_from_dict
from ..core.io.output_lock import file_lock
from ..core.model.checkpoints import export_model, load_model

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_FILE = "model.pt"


class RegistryError(ValueError):
    """A model reference that cannot be resolved, or a registry action that cannot be done."""


def tracking_uri(workspace: str | os.PathLike) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(workspace).resolve() / 'mlflow.db'}"


def _mlflow(workspace):
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


def _client(workspace):
    from mlflow import MlflowClient

    _mlflow(workspace)
    return MlflowClient()


def experiment_id(config, workspace) -> str:
    """One experiment per dataset config (`lsdflow-<name>`), artifacts in the workspace."""
    mlflow = _mlflow(workspace)
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


def _log_config(mlflow, dump: dict) -> None:
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


def default_model_name(config) -> str:
    return f"mtlsd-{config.name}" if config.model.kind == "mtlsd" else f"{config.model.kind}-{config.name}"


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
        mlflow = _mlflow(self.workspace)
        run = mlflow.start_run(experiment_id=experiment_id(self.config, self.workspace),
                               run_name=f"train-{self.config.name}")
        self.run_id = run.info.run_id
        dump = self.config.model_dump(mode="json")
        _log_config(mlflow, dump)
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


@dataclass
class RegisteredModel:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]
    file: Path  # the downloaded model file

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def lineage(self) -> dict[str, Any]:
        """What a prediction made with this model records about it."""
        return {
            "model_name": self.name,
            "model_version": self.version,
            "model_run_id": self.run_id,
            "model_config_hash": self.tags.get("config_hash"),
            "model_uri": self.uri,
            **({"best_threshold": float(self.tags["best_threshold"])} if "best_threshold" in self.tags else {}),
        }


def _run_config(saved: dict, config):
    """The config a training run saved beside its checkpoints; a run made by an older
    lsdflow whose config no longer validates keeps its network on the current config."""
    try:
        return config_from_dict(saved)
    except ConfigError:
        return config.with_model(ModelConfig.model_validate(saved["model"]))


def register_model(model_file, config, workspace, run_id: str | None = None, name: str | None = None,
                   alias: str = CHALLENGER, tags: dict | None = None) -> RegisteredModel:
    """Register a portable model file as a new version of `name` with `alias` (challenger).

    Without a training run, a run is made to hold the file (any checkpoint can be registered
    on demand)."""
    model_file = Path(model_file)
    _, meta = load_model(model_file)  # refuses files that are not lsdflow models
    mlflow = _mlflow(workspace)
    client = _client(workspace)
    name = name or default_model_name(config)
    if run_id is None:
        # no training run to hold it: a run that carries what the file says about its training
        with mlflow.start_run(experiment_id=experiment_id(config, workspace), run_name=f"register-{model_file.name}") as run:
            facts = {k: meta[k] for k in ("iteration", "config_fingerprint", "initialized_from", "best_threshold",
                                          "averaged_iterations") if meta.get(k) is not None}
            mlflow.set_tags({**code_version(), "dataset": config.name, "mlflow.source.name": "lsdflow register",
                             "mlflow.note.content": f"Registered from the model file {model_file.name}: "
                             + ", ".join(f"{k} {v}" for k, v in facts.items())})
            if isinstance(meta.get("config"), dict):
                _log_config(mlflow, meta["config"])  # the network and training settings it was made with
            mlflow.log_params({f"model_file.{k}": v for k, v in facts.items()})
            run_id = run.info.run_id
    active = mlflow.active_run()
    same_run = active is not None and active.info.run_id == run_id
    with contextlib.nullcontext() if same_run else mlflow.start_run(run_id=run_id):
        import shutil
        import tempfile

        # logged under the one name the loader looks for, whatever the file was called;
        # a training checkpoint is first exported to a portable file (weights + config)
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / MODEL_FILE
            if "format" in meta:
                shutil.copyfile(model_file, copy)
            else:
                run_config = _run_config(meta["config"], config)
                export_model(model_file, run_config, copy, meta.get("iteration") or 0)
                meta = {**meta, "config_fingerprint": run_config.fingerprint()}
            mlflow.log_artifact(str(copy), artifact_path="registered_model")
        artifact_uri = mlflow.get_artifact_uri("registered_model")
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MlflowException for a missing model
        client.create_registered_model(name, description=f"lsdflow {config.model.kind} models for {config.name}")
    version_tags = {
        "dataset": config.name,
        "config_hash": str(meta.get("config_fingerprint") or config.fingerprint()),
        "training_run": run_id,
        "model_iteration": str(meta.get("iteration")),
        **({"averaged_iterations": ",".join(map(str, meta["averaged_iterations"]))}
           if meta.get("averaged_iterations") else {}),
        "source_file": str(model_file.resolve()),
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    version = client.create_model_version(name, source=artifact_uri, run_id=run_id, tags=version_tags)
    _wait_ready(client, name, version.version)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return resolve_model(f"models:/{name}/{version.version}", workspace)


def _wait_ready(client, name: str, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get_model_version(name, version).status != "READY":
        if time.monotonic() > deadline:
            raise RegistryError(f"model {name} version {version} did not become READY")
        time.sleep(0.2)


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` or `models:/name/version` → (name, version, alias)."""
    if not uri.startswith("models:/"):
        raise RegistryError(f"{uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, None, alias
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        return name, version, None
    raise RegistryError(f"{uri!r}: give an alias (@champion) or a version (/3)")


def resolve_model(uri: str, workspace) -> RegisteredModel:
    """The registered version behind `uri`, with its model file downloaded (cached by version)."""
    from mlflow.exceptions import MlflowException

    client = _client(workspace)
    name, version, alias = parse_model_uri(uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models()]
        raise RegistryError(f"no registered model {name!r} in {tracking_uri(workspace)} (known: {known})") from None
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        aliases = client.get_registered_model(name).aliases
        what = f"alias {alias!r}" if alias else f"version {version!r}"
        raise RegistryError(f"model {name!r} has no {what} (aliases: {dict(aliases)})") from None
    cache = Path(workspace).resolve() / "models" / name / str(mv.version)
    file = cache / MODEL_FILE
    if not file.is_file():
        import mlflow

        cache.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(cache))
        found = next(cache.rglob(MODEL_FILE), None)
        if found is None:
            raise RegistryError(f"model {name} version {mv.version}: no {MODEL_FILE} in {mv.source}")
        if found != file:
            found.replace(file)
    return RegisteredModel(name, str(mv.version), mv.run_id, dict(mv.tags), file)


def load_registered_model(uri: str, workspace, device: str = "cpu"):
    """(torch.nn.Module ready to use, its metadata incl. config, RegisteredModel)."""
    registered = resolve_model(uri, workspace)
    model, meta = load_model(registered.file, device)
    return model, meta, registered


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
    client = _client(workspace)
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
    mlflow = _mlflow(workspace)
    client = _client(workspace)
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

    client = _client(workspace)
    challenger = _version_by_alias(client, name, CHALLENGER)
    if challenger is None:
        raise RegistryError(f"model {name!r} has no {CHALLENGER!r} version to promote")
    if "voi_sum" not in challenger.tags:
        raise RegistryError(
            f"{name} version {challenger.version} has not been evaluated: run `lsdflow evaluate-model "
            f"models:/{name}@{CHALLENGER} --volume VALIDATION.zarr` first"
        )
    champion = _version_by_alias(client, name, CHAMPION)
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


def _version_by_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def shipped_champion(config, workspace) -> tuple[RegisteredModel, str | None]:
    """The champion for `lsdflow demo`: the shipped model (`prediction.checkpoint`),
    registered on first use. A champion that is an older shipped model (another file
    hash) gives way to the one shipped now; a champion the user promoted stays.

    Returns the champion and, when one was registered, a line saying so."""
    import hashlib

    shipped = {"note": "shipped pretrained model",
               "sha256": hashlib.sha256(Path(config.prediction.checkpoint).read_bytes()).hexdigest()}
    try:
        champion = resolve_model(expand_model_reference(f"@{CHAMPION}", config), workspace)
    except RegistryError:
        champion = None
    if champion is not None and (champion.tags.get("note") != shipped["note"]
                                 or champion.tags.get("sha256") == shipped["sha256"]):
        return champion, None
    registered = register_model(config.prediction.checkpoint, config, workspace, alias=CHAMPION, tags=shipped)
    before = f" (was {champion.uri}, an older shipped model)" if champion else ""
    return registered, f"registered the shipped model as {registered.uri} @{CHAMPION}{before} in {tracking_uri(workspace)}"


def expand_model_reference(reference: str, config) -> str:
    """`@champion` → models:/<default name>@champion; full URIs pass through."""
    if reference.startswith("@"):
        return f"models:/{default_model_name(config)}{reference}"
    return reference


def resolve_prediction_model(reference: str | None, config):
    """(model file, lineage attrs, description) for `--model`, else the config's
    `prediction.model`, else its `prediction.checkpoint` file."""
    workspace = config.resolved_workspace
    if reference and not reference.startswith(("models:/", "@")):
        return Path(reference), {}, reference
    uri = expand_model_reference(reference, config) if reference else config.prediction.model
    if uri:
        try:
            registered = resolve_model(uri, workspace)
            return registered.file, registered.lineage(), f"{uri} (version {registered.version})"
        except RegistryError as e:
            if reference or config.prediction.checkpoint is None:
                raise
            logging.getLogger(__name__).warning("%s; using prediction.checkpoint %s", e, config.prediction.checkpoint)
    return config.prediction.checkpoint, {}, str(config.prediction.checkpoint)
