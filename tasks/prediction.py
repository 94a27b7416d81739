"""The predict stage as a Prefect task, cached on raw data + model file + lineage + shapes."""

from __future__ import annotations

from ..core.blockwise_predict import predict_blockwise, prediction_state
from .artifacts import publish_summary
from .cache_keys import stage_task
from .progress import blockwise_settings
from .references import ArrayRef
from .retry import retry_transient


def _state(parameters) -> tuple[str, str | None]:
    from ..flows.registry import resolve_prediction_model

    config, raw = parameters["config"], parameters["raw"]
    model_file, lineage, _ = resolve_prediction_model(parameters.get("model"), config)
    return prediction_state(config, raw.container, model_file, extra_attrs=lineage)


@stage_task(name="predict", cache_key_fn=lambda ctx, p: f"predict-{_state(p)[0]}", committed=lambda p: _state(p)[1],
            retries=2, retry_delay_seconds=[30, 120], retry_condition_fn=retry_transient, persist_result=True,
            timeout_seconds=48 * 3600)
def predict(config, raw: ArrayRef, model: str | None = None) -> list[ArrayRef]:
    """Affinities and LSDs for `raw`'s volume with `model` (a file or models:/ URI; default
    the config's prediction.model, e.g. the champion)."""
    from ..flows.registry import resolve_prediction_model

    model_file, lineage, described = resolve_prediction_model(model, config)
    result = predict_blockwise(config, raw.container, model_file=model_file, extra_attrs=lineage,
                               settings=blockwise_settings(config, "predict"))
    stage = result["stage"]
    publish_summary(
        f"predict-{raw.container}", "prediction",
        {"volume": raw.container, "ROI (nm)": raw.roi, "model": described,
         "blocks": stage.get("blocks", "up to date"), "skipped (empty)": stage.get("skipped", 0),
         "seconds": stage.get("seconds", 0), "outputs": ", ".join(str(p) for p in result["written"])},
    )
    return [ArrayRef.of(raw.container, f"volumes/{path.name}") for path in result["written"]]
