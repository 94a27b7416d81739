"""The predict stage as a Prefect task, cached on raw data + model file + lineage + shapes."""

from __future__ import annotations

from ..core.predict.blockwise import predict_blockwise, prediction_state
from .artifacts import publish_summary, volume_key
from .cache_keys import stage_task
from .progress import blockwise_settings
from .references import ArrayRef
from .retry import retry_transient
from .run_names import logged_stage, task_run_name, volume_name


def _state(parameters) -> tuple[str, str | None]:
    from ..registry.model_registry import resolve_prediction_model

    config, raw = parameters["config"], parameters["raw"]
    model_file, lineage, _ = resolve_prediction_model(parameters.get("model"), config)
    return prediction_state(config, raw.container, model_file, extra_attrs=lineage)


def _model_name(model: str | None) -> str:
    if model is None:
        return "the config's model"
    return model.removeprefix("models:/") if model.startswith("models:/") else volume_name(model)


@stage_task(name="predict", cache_key_fn=lambda ctx, p: f"predict-{_state(p)[0]}", committed=lambda p: _state(p)[1],
            retries=2, retry_delay_seconds=[30, 120], retry_condition_fn=retry_transient, persist_result=True,
            timeout_seconds=48 * 3600,
            task_run_name=task_run_name("predict", lambda p: f"{volume_name(p['raw'])} with {_model_name(p.get('model'))}"))
def predict(config, raw: ArrayRef, model: str | None = None) -> list[ArrayRef]:
    """Affinities and LSDs for `raw`'s volume with `model` (a file or models:/ URI; default
    the config's prediction.model, e.g. the champion)."""
    from ..registry.model_registry import resolve_prediction_model

    model_file, lineage, described = resolve_prediction_model(model, config)
    with logged_stage("predict", volume=raw.container, ROI=raw.roi, model=described) as learned:
        result = predict_blockwise(config, raw.container, model_file=model_file, extra_attrs=lineage,
                                   settings=blockwise_settings(config, "predict", str(raw.container)))
        stage = result["stage"]
        learned["blocks"] = stage.get("blocks", "up to date")
    publish_summary(
        volume_key("predict", raw.container), f"prediction of {volume_name(raw)}",
        {"volume": raw.container, "ROI (nm)": raw.roi, "model": described,
         "blocks": stage.get("blocks", "up to date"), "skipped (empty)": stage.get("skipped", 0),
         "seconds": stage.get("seconds", 0), "outputs": ", ".join(str(p) for p in result["written"])},
    )
    return [ArrayRef.of(raw.container, f"volumes/{path.name}") for path in result["written"]]
