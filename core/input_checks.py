"""Checks of user values that every entry point runs before any output is touched.

Bad input fails the same way every time, so it is reported once, clearly (`lsdflow:
error:` naming the file, dataset or field and what was expected), and never retried."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import ConfigError
from .volumes import VolumeError


class ModelFileError(ValueError):
    """A model file or checkpoint that cannot be used: the message names the file and why."""


def check_thresholds(thresholds: Sequence[float], where: str = "--thresholds") -> list[float]:
    """Sorted, de-duplicated merge thresholds, each in [0, 1] (agglomeration scores are
    affinities' quantiles; 0 merges nothing, 1 everything)."""
    values = []
    for t in thresholds:
        try:
            value = float(t)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: threshold {t!r} is not a number (expected values in [0, 1])") from None
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"{where}: threshold {t!r} is outside [0, 1]")
        values.append(value)
    if not values:
        raise ConfigError(f"{where}: no thresholds given (expected values in [0, 1])")
    return sorted(set(values))


def check_writable(container: str | os.PathLike, what: str = "output") -> Path:
    """The container (or the directory it will be created in) must be writable."""
    path = Path(container)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    # the container and the groups outputs go into (never a walk over its chunks)
    targets = [probe] + [path / group for group in ("volumes", "volumes/segmentation", ".lsdflow", "luts")
                         if (path / group).is_dir()]
    for target in targets:
        if not os.access(target, os.W_OK | os.X_OK):
            raise VolumeError(f"{path}: cannot write the {what} ({target} is read-only)")
    return path


def check_not_constant(low: float, high: float, where: str) -> None:
    """Raw data with one intensity everywhere holds no image: an empty or failed
    acquisition, refused rather than segmented into something meaningless."""
    if low == high:
        raise VolumeError(f"{where}: every voxel has intensity {low:g}; expected an image "
                          f"(an empty or failed acquisition?)")


def check_finite(data: np.ndarray, where: str) -> None:
    """Float data must hold no NaN or infinity (integers always do)."""
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise VolumeError(f"{where}: {bad} NaN or infinite value(s); expected finite intensities")
