"""Thin flows for training and the registry: train (→ register as challenger),
evaluate (a registered model on validation data), promote."""

from __future__ import annotations

from prefect import flow

from ..core.config import load_config
from ..registry.registration import default_model_name, expand_model_reference
from ..tasks import models


@flow(name="train", flow_run_name="train {config_name}",
      description="Train (resuming from the newest checkpoint), tracked in MLflow; the model registered as @challenger.")
def train(config_name: str = "gala", iterations: int | None = None, overrides: list[str] | None = None,
          workspace: str | None = None) -> str:
    """Train, track in MLflow, register the model as challenger; returns its models:/ URI."""
    config = load_config(config_name, overrides or [], workspace)
    trained = models.train(config, iterations)
    return models.register(config, trained["model_file"], trained["run_id"])


@flow(name="evaluate", flow_run_name="evaluate {model_uri} · {config_name}",
      description="Score a registered model on validation data; the scores recorded with its version.")
def evaluate(model_uri: str = "@challenger", config_name: str = "gala", volume: str | None = None,
             overrides: list[str] | None = None, workspace: str | None = None) -> dict:
    config = load_config(config_name, overrides or [], workspace)
    return models.evaluate_model(config, expand_model_reference(model_uri, config), volume or _validation_volume(config))


@flow(name="promote", flow_run_name="promote {config_name}",
      description="Evaluate @challenger on validation data and make it @champion only if it wins.")
def promote(config_name: str = "gala", name: str | None = None, margin: float = 0.0,
            overrides: list[str] | None = None, workspace: str | None = None) -> dict:
    """Evaluate the challenger on the validation volume, then promote it if it wins."""
    config = load_config(config_name, overrides or [], workspace)
    models.evaluate_model(config, f"models:/{name or _default_name(config)}@challenger", _validation_volume(config))
    return models.promote(config, name, margin)


def _validation_volume(config):
    if not config.data.validation:
        raise ValueError(f"{config.source}: data.validation is empty; name a validation volume (or region)")
    return config.data.validation[0]


def _default_name(config) -> str:
    return default_model_name(config)
