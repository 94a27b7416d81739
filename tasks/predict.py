"""The predict stage as a Prefect task (`stage_tasks.blockwise_task`), cached on its key:
raw data, model file, lineage, shapes and settings."""

from __future__ import annotations

from ..core.predict.blockwise import PredictStage
from ..registry.registration import resolve_prediction_model
from .artifacts import publish_summary, volume_key
from .references import ArrayRef
from .run_names import volume_name
from .stage_tasks import blockwise_task


def predict_stage(config, raw: ArrayRef, model: str | None = None) -> PredictStage:
    """Affinities and LSDs for `raw`'s volume with `model` (a file or models:/ URI; default
    the config's prediction.model, e.g. the champion)."""
    model_file, lineage, _ = resolve_prediction_model(model, config)
    return PredictStage.for_volume(config, raw.container, model_file, extra_attrs=lineage)


def _model_name(model: str | None) -> str:
    if model is None:
        return "the config's model"
    return model.removeprefix("models:/") if model.startswith("models:/") else volume_name(model)


def _predictions(stage: PredictStage, summary: dict) -> list[ArrayRef]:
    outputs = [o.dataset for o in stage.outputs()]
    model = stage.lineage.get("model_uri") or stage.model_file
    publish_summary(
        volume_key("predict", stage.container), f"prediction of {volume_name(stage.container)}",
        {"volume": stage.container, "ROI (nm)": str(stage.total_roi()), "model": model,
         "blocks": summary.get("blocks", "up to date"), "skipped (empty)": summary.get("skipped", 0),
         "seconds": summary.get("seconds", 0), "outputs": ", ".join(f"{stage.container}/{d}" for d in outputs)},
    )
    return [ArrayRef.of(stage.container, dataset) for dataset in outputs]


predict = blockwise_task(
    predict_stage, name="predict", result=_predictions, timeout_seconds=48 * 3600, retry_delay_seconds=[30, 120],
    describe=lambda p: f"{volume_name(p['raw'])} with {_model_name(p.get('model'))}")
