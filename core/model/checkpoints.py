"""Checkpoints: gunpowder's training checkpoints and lsdflow's portable model files.

gunpowder.torch.Train writes `<dir>/model_checkpoint_<iteration>` (model + optimizer
state) and resumes from the newest one. For prediction and the registry we export a
*model file*: the state dict plus the resolved config, loadable with
`torch.load(weights_only=True)` (no pickled code).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..config import LsdflowConfig, ModelConfig
from ..io.atomic import replacing
from ..io.input_checks import ModelFileError
from ..io.intensity import intensity_shift, normalization_for, training_reference
from ..io.volumes import VolumeError, open_array
from .networks import build_model

CHECKPOINT_BASENAME = "model"

_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_BASENAME}_checkpoint_(\d+)$")


def checkpoint_path(directory: str | os.PathLike, iteration: int) -> Path:
    return Path(directory) / f"{CHECKPOINT_BASENAME}_checkpoint_{iteration}"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _CHECKPOINT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> tuple[int, Path] | None:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def save_training_checkpoint(
    directory: str | os.PathLike, iteration: int, model: torch.nn.Module, optimizer
) -> Path:
    """Same format as gunpowder.torch.Train, so that Train resumes from it."""
    path = checkpoint_path(directory, iteration)
    with replacing(path) as tmp:
        torch.save(
            {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
            tmp,
        )
    return path


def export_model(
    checkpoint: str | os.PathLike, config: LsdflowConfig, out: str | os.PathLike, iteration: int
) -> Path:
    """Write a portable model file: weights (float32, CPU) + resolved config, no optimizer."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return write_model_file(state["model_state_dict"], config, out, iteration)


def write_model_file(
    state_dict: dict[str, torch.Tensor], config: LsdflowConfig, out: str | os.PathLike, iteration: int, **extra: Any
) -> Path:
    """The portable model file format: weights + resolved config + the intensity
    distribution of the training data (`intensity_reference`, when the training volumes
    can be read; see core/io/intensity.py) (+ `extra` plain data)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "lsdflow-model/1",
        "model_state_dict": state_dict,
        "config": config.model_dump(mode="json"),
        "iteration": iteration,
        "config_fingerprint": config.fingerprint(),
        "intensity_reference": training_intensity_reference(config),
        **extra,
    }
    with replacing(out) as tmp:
        torch.save(payload, tmp)
    return out


def training_intensity_reference(config: LsdflowConfig) -> list[float] | None:
    """The z-scored intensity quantiles of `config`'s training volumes, None when one of
    them cannot be read (e.g. a config moved to another machine)."""
    try:
        volumes = [(open_array(v.path, config.data.raw_dataset), v.roi) for v in config.data.train]
    except (VolumeError, OSError, KeyError, ValueError):
        return None
    return training_reference(volumes) if volumes else None


def intensity_reference(path: str | os.PathLike, meta: dict[str, Any]) -> list[float]:
    """The training intensity distribution of the model at `path`: the one its file
    carries, else the one of the training volumes its config names."""
    if meta.get("intensity_reference"):
        return list(meta["intensity_reference"])
    try:
        config = LsdflowConfig.model_validate(meta["config"])
    except (KeyError, TypeError, ValueError):
        config = None
    reference = training_intensity_reference(config) if config is not None else None
    if not reference:
        raise ModelFileError(
            f"{path}: prediction.normalization = \"match_training\" needs the model's training intensities "
            f"(intensity_reference), which this file does not carry and its training volumes cannot be read; "
            f"export the model again where its training data is, or use prediction.normalization = \"zscore\"")
    return reference


def input_normalization(array, kind: str, path: str | os.PathLike, meta: dict[str, Any]):
    """How the raw `array` becomes input of the model at `path` (core/io/intensity.py)."""
    return normalization_for(array, kind, intensity_reference(path, meta) if kind == "match_training" else None)


def input_shift(array, path: str | os.PathLike, meta: dict[str, Any]) -> float | None:
    """`intensity.intensity_shift` of the raw `array` against the training intensities of
    the model at `path`; None when they are not known."""
    try:
        return round(intensity_shift(array, intensity_reference(path, meta)), 4)
    except ModelFileError:
        return None


def describe_model(meta: dict[str, Any]) -> str:
    """'iteration 8750', or for averaged weights 'average of iterations 9250..10000 (4)'."""
    averaged = meta.get("averaged_iterations")
    if averaged:
        return f"average of iterations {averaged[0]}..{averaged[-1]} ({len(averaged)})"
    return f"iteration {meta.get('iteration')}"


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load an exported model file or a gunpowder checkpoint next to its config.

    Returns the model in eval mode on `device` and the file's metadata (config dict,
    iteration). Only tensors and plain data are unpickled (`weights_only=True`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file or checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled code (refused, never loaded)
        reason = (str(e).splitlines() or ["empty or unreadable"])[0]
        if "weights_only" in str(e):
            reason = "it holds pickled code, which lsdflow never loads"
        raise ModelFileError(
            f"{path}: not a readable lsdflow model file or training checkpoint ({type(e).__name__}: {reason})"
        ) from None
    if not isinstance(payload, dict) or "model_state_dict" not in payload:
        raise ModelFileError(f"{path}: not an lsdflow model file or training checkpoint (no model_state_dict)")
    if "config" in payload:
        try:
            model_config = ModelConfig.model_validate(payload["config"]["model"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{path}: its network description is not valid: {str(e).splitlines()[0]}") from None
        meta = {k: v for k, v in payload.items() if k != "model_state_dict"}
    else:
        config_file = path.parent / "config.json"
        if not config_file.is_file():
            raise ModelFileError(
                f"{path}: a training checkpoint without {config_file.name} beside it; "
                f"cannot tell which network it belongs to"
            )
        config = json.loads(config_file.read_text())
        model_config = ModelConfig.model_validate(config["model"])
        match = _CHECKPOINT_RE.match(path.name)
        meta = {
            "config": config,
            "iteration": int(match.group(1)) if match else None,
        }
    model = build_model(model_config)
    try:
        model.load_state_dict(payload["model_state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelFileError(f"{path}: its weights do not fit its network ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), meta
