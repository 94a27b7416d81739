"""The `predict` flow: affinities and LSDs for a volume with a registered model."""

from __future__ import annotations

from prefect import flow

from ..core.config import load_config
from ..tasks.predict import predict as predict_task
from ..tasks.references import ArrayRef


@flow(name="predict", flow_run_name="predict {volume} · {config_name}",
      description="Affinities and LSDs for a Zarr volume, block by block, with the champion (or a given model).")
def predict(volume: str, config_name: str = "gala", model: str | None = None, overrides: list[str] | None = None,
            workspace: str | None = None) -> list[ArrayRef]:
    config = load_config(config_name, overrides or [], workspace)
    return predict_task(config, ArrayRef.of(volume, config.data.raw_dataset), model)
