"""Checks of user values that every entry point runs before any output is touched.

Bad input fails the same way every time, so it is reported once, clearly (`lsdflow:
error:` naming the file, dataset or field and what was expected), and never retried."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import ConfigError
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


# Peak resident memory of in-memory prediction per voxel of the volume: measured with
# test-time augmentation (4.0 GB for a 250^3 volume, issue 16), estimated without it (the
# raw copy, the z-scored input, 13 float32 output channels and their uint8 copies).
PREDICT_BYTES_PER_VOXEL = {True: 256, False: 128}
MEMORY_LIMIT_VARIABLE = "LSDFLOW_MEMORY_LIMIT_GB"


def available_memory_bytes() -> int | None:
    """Memory the in-memory path may plan to use: `LSDFLOW_MEMORY_LIMIT_GB` when set, else
    what the kernel reports available (MemAvailable), lowered to the cgroup's free quota
    on a cluster node or container; None where neither can be read."""
    if os.environ.get(MEMORY_LIMIT_VARIABLE):
        try:
            return int(float(os.environ[MEMORY_LIMIT_VARIABLE]) * 1e9)
        except ValueError:
            raise ConfigError(f"{MEMORY_LIMIT_VARIABLE}={os.environ[MEMORY_LIMIT_VARIABLE]!r}: expected a number "
                              "of gigabytes") from None
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        quota = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if quota != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            limits.append(int(quota) - used)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def check_fits_in_memory(needed_bytes: int, what: str, instead: str) -> None:
    """Refuse work that would not fit in memory (swapping or being killed half-way helps
    no one) with what to run instead."""
    available = available_memory_bytes()
    if available is not None and needed_bytes > available:
        raise VolumeError(f"{what}: needs about {needed_bytes / 1e9:.1f} GB of memory in one piece, and "
                          f"{max(available, 0) / 1e9:.1f} GB are available; {instead}")
