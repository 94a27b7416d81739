"""The model registry: portable model files registered as versions of a model with
aliases (`challenger` when registered, `champion` when promoted), and resolving a model
reference (`models:/name@alias`, `models:/name/version`, `@champion`, a file) to a file.

Models are registered as a state dict + config file (lsdflow's portable model file), never
as pickled code; loading goes through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.config import ConfigError, ModelConfig, config_from_dict
from ..core.model.checkpoints import export_model, load_model
from .tracking import (
    RegistryError,
    client_for,
    code_version,
    experiment_id,
    log_config,
    mlflow_for,
    tracking_uri,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_FILE = "model.pt"


def default_model_name(config) -> str:
    return f"mtlsd-{config.name}" if config.model.kind == "mtlsd" else f"{config.model.kind}-{config.name}"


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
    mlflow = mlflow_for(workspace)
    client = client_for(workspace)
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
                log_config(mlflow, meta["config"])  # the network and training settings it was made with
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

    client = client_for(workspace)
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


def version_by_alias(client, name: str, alias: str):
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
