"""What every prediction dataset records about the model and input that made it."""

from __future__ import annotations

from pathlib import Path

from ..io.layout import PRED_AFFS


def recorded_input_shift(container, dataset: str = PRED_AFFS) -> float | None:
    """The input shift recorded with a volume's predictions (`intensity.intensity_shift`)."""
    import zarr

    path = Path(container) / dataset
    if not (path / ".zattrs").is_file():
        return None
    return zarr.open(str(path), mode="r").attrs.get("intensity_shift")


def prediction_attrs(model_file, meta: dict, model, raw: str, dtype: str) -> dict:
    """What every prediction dataset records about the model that made it."""
    attrs = {
        "model_file": str(Path(model_file).resolve()),
        "model_iteration": meta.get("iteration"),
        "model_config_fingerprint": meta.get("config_fingerprint"),
        "model_kind": model.config.kind,
        "raw": raw,
        "value_scale": 255 if dtype == "uint8" else 1,
    }
    if meta.get("averaged_iterations"):  # weights averaged over checkpoints (checkpoint_averaging)
        attrs["model_averaged_iterations"] = list(meta["averaged_iterations"])
    if meta.get("best_threshold") is not None:  # chosen on validation data when the file was written
        attrs["best_threshold"] = float(meta["best_threshold"])
    return attrs
