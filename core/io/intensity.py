"""Raw intensities → network input, the same for training, prediction (in memory and
blockwise), the demo and the benchmarks.

Two normalizations (`prediction.normalization`):

- `zscore` (default): each volume z-scored by its own mean and standard deviation, as in
  training. Survives a change of brightness and contrast (a linear change).
- `match_training`: each volume's intensities mapped through their own distribution onto
  the distribution the model saw in training (its training volumes, each z-scored, pooled):
  histogram matching. Survives a non-linear change of the intensity curve as well (gamma,
  saturation, another detector). The model file carries that distribution
  (`intensity_reference`, quantiles of z-scored training intensities), so a model moves
  with what it needs; for a file without one it is computed from the training volumes its
  config names, when they can be read.

Statistics come from up to 64 randomly chosen chunks, so they stay cheap on terabyte
volumes, and every block of a blockwise run gets the same mapping. scikit-image's
`match_histograms` needs both images whole in memory, hence this small version.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

NORMALIZATIONS = ("zscore", "match_training")
REFERENCE_LEVELS = 1001  # quantiles kept of the training intensities
_SAMPLE = 1_000_000  # intensities kept per volume to build a mapping
_GRID = 1024  # points of the mapping for non-integer data
# an input shift above this flags an acquisition as unlike the model's training data; set
# between the gala model's own held-out volume (0.021) and the medulla acquisition (0.083),
# the only two acquisitions measured so far (docs/training.md)
OUT_OF_DEPTH_SHIFT = 0.05


def _scale(dtype) -> float:
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def scaled_intensities(raw: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Raw values in [0, 1] (integers divided by their type's maximum), as gunpowder's
    Normalize gives them to the network in training."""
    return raw.astype(dtype) / _scale(raw.dtype)


def normalization_factor(dtype) -> float:
    """The factor gunpowder's Normalize applies: integer data to [0, 1]."""
    return 1.0 / _scale(dtype)


def _sampled_chunks(array, max_chunks: int, seed: int):
    """Up to `max_chunks` random chunks of a funlib `Array` (raw values), one at a time."""
    data = array._source_data
    shape = np.array(data.shape)
    chunks = np.array(getattr(data, "chunks", None) or data.shape)
    grid = np.ceil(shape / chunks).astype(int)
    n_chunks = int(np.prod(grid))
    picks = np.random.default_rng(seed).choice(n_chunks, size=min(max_chunks, n_chunks), replace=False)
    for index in picks:
        start = np.array(np.unravel_index(index, grid)) * chunks
        stop = np.minimum(start + chunks, shape)
        yield np.asarray(data[tuple(slice(a, b) for a, b in zip(start, stop))])


def intensity_stats(array, max_chunks: int = 64, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of raw intensities, scaled to [0, 1] for integer data;
    used to z-score each volume, because acquisitions differ in contrast."""
    total = total_sq = 0.0
    count = 0
    for block in _sampled_chunks(array, max_chunks, seed):
        block = block.astype(np.float64)
        total += block.sum()
        total_sq += np.square(block).sum()
        count += block.size
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
    scale = _scale(array._source_data.dtype)
    return float(mean / scale), max(std / scale, 1e-6)


def sampled_intensities(array, max_chunks: int = 64, seed: int = 0) -> np.ndarray:
    """At most `_SAMPLE` intensities (scaled to [0, 1] for integer data) drawn evenly from
    the same chunks as `intensity_stats`."""
    rng = np.random.default_rng(seed)
    per_chunk = -(-_SAMPLE // max_chunks)
    kept = []
    for block in _sampled_chunks(array, max_chunks, seed):
        block = block.ravel()
        kept.append(block if block.size <= per_chunk else rng.choice(block, per_chunk, replace=False))
    return np.concatenate(kept).astype(np.float64) / _scale(array._source_data.dtype)


@dataclass(frozen=True)
class Normalization:
    """Raw intensities scaled to [0, 1] → network input.

    Without a mapping: (x - mean) / std. With one: piecewise linear through the points
    (`map_from`, `map_to`), `map_from` strictly increasing (values outside are clamped)."""

    mean: float
    std: float
    map_from: tuple[float, ...] = ()
    map_to: tuple[float, ...] = ()

    @property
    def kind(self) -> str:
        return "match_training" if self.map_from else "zscore"

    def __call__(self, scaled: np.ndarray) -> np.ndarray:
        scaled = np.asarray(scaled, dtype=np.float32)
        if self.map_from:
            return np.interp(scaled, self.map_from, self.map_to).astype(np.float32)
        return (scaled - np.float32(self.mean)) / np.float32(self.std)

    def describe(self) -> str:
        if self.map_from:
            return f"intensities matched to the model's training data ({len(self.map_from)} points)"
        return f"z-scored (mean {self.mean:.4f}, std {self.std:.4f})"


def reference_quantiles(zscored: Iterable[np.ndarray], weights: Sequence[float] | None = None) -> list[float]:
    """`REFERENCE_LEVELS` quantiles of z-scored intensities pooled over volumes (each
    volume weighted by `weights`, default equally)."""
    zscored = [np.asarray(z, dtype=np.float64).ravel() for z in zscored]
    weights = list(weights) if weights is not None else [1.0] * len(zscored)
    levels = np.linspace(0.0, 1.0, REFERENCE_LEVELS)
    # the quantile function of a mixture: average of per-volume CDFs, inverted on a grid
    grid = np.linspace(min(z.min() for z in zscored), max(z.max() for z in zscored), 8192)
    cdf = sum(w * np.searchsorted(np.sort(z), grid, side="right") / len(z) for w, z in zip(weights, zscored))
    cdf = cdf / sum(weights)
    return [float(q) for q in np.interp(levels, cdf, grid)]


def _mid_ranks(sample: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Where each point sits in the sample's distribution, ties at their middle (0..1)."""
    ordered = np.sort(sample)
    below = np.searchsorted(ordered, points, side="left")
    at_or_below = np.searchsorted(ordered, points, side="right")
    return (below + at_or_below) / (2.0 * len(ordered))


def matching(sample: np.ndarray, reference: Sequence[float], integer_levels: int | None = None) -> Normalization:
    """The mapping that gives `sample`'s distribution (scaled intensities) the reference's
    (z-scored quantiles at evenly spaced levels). For integer data every level is a point
    of the mapping, so it is exact on stored values."""
    sample = np.asarray(sample, dtype=np.float64)
    if len(sample) > _SAMPLE:
        sample = np.random.default_rng(0).choice(sample, _SAMPLE, replace=False)
    if integer_levels:
        points = np.arange(integer_levels + 1, dtype=np.float64) / integer_levels
    else:
        points = np.unique(np.linspace(sample.min(), sample.max(), _GRID))
    if len(points) < 2:  # a constant volume: nothing to match (prediction refuses it)
        return Normalization(float(sample.mean()), 1e-6)
    reference = np.asarray(reference, dtype=np.float64)
    targets = np.interp(_mid_ranks(sample, points), np.linspace(0.0, 1.0, len(reference)), reference)
    return Normalization(float(sample.mean()), max(float(sample.std()), 1e-6),
                         tuple(float(p) for p in points), tuple(float(t) for t in targets))


def normalization_for(array, kind: str = "zscore", reference: Sequence[float] | None = None) -> Normalization:
    """The normalization of a funlib `Array` of raw data: `zscore`, or `match_training`
    onto `reference` (a model's `intensity_reference`)."""
    if kind not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {kind!r}; expected one of {NORMALIZATIONS}")
    if kind == "zscore":
        return Normalization(*intensity_stats(array))
    sample = sampled_intensities(array)
    if not reference:
        raise ValueError("match_training needs the model's intensity_reference")
    dtype = np.dtype(array._source_data.dtype)
    levels = int(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2 else None
    return matching(sample, reference, levels)


def intensity_shift(array, reference: Sequence[float]) -> float:
    """How far a volume's intensity distribution lies from a model's training data: the
    mean absolute difference between their z-scored quantile functions (the Wasserstein-1
    distance, extreme 0.5 % at either end left out). Label-free: a volume whose intensities
    the model has not seen in training is likely out of its depth, whatever the
    normalization hides of a linear change (measured: gala test 0.021 and the medulla
    acquisition 0.083 against the gala model's training data; `OUT_OF_DEPTH_SHIFT`)."""
    mean, std = intensity_stats(array)
    reference = np.asarray(reference, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, len(reference))
    inner = (levels >= 0.005) & (levels <= 0.995)
    quantiles = np.quantile((sampled_intensities(array) - mean) / max(std, 1e-12), levels[inner])
    return float(np.mean(np.abs(quantiles - reference[inner])))


def describe_shift(shift: float | None) -> str:
    """The input shift as a line for people: its value and whether it flags the volume."""
    if shift is None:
        return "unknown (the model carries no training intensities)"
    verdict = ("unlike the model's training data: likely out of its depth, check the result or fine-tune"
               if shift > OUT_OF_DEPTH_SHIFT else "like the model's training data")
    return f"{shift:.3f} ({verdict}; flagged above {OUT_OF_DEPTH_SHIFT})"


def training_reference(volumes: Sequence[tuple[object, object | None]]) -> list[float]:
    """`intensity_reference` of a model trained on `volumes`: (funlib Array of raw, ROI of
    the region trained on or None). Each volume is z-scored on its own statistics, from
    the same sampled chunks as training's, and weighted by the size of its region."""
    zscored, weights = [], []
    for array, roi in volumes:
        mean, std = intensity_stats(array)  # as training z-scores it
        zscored.append((sampled_intensities(array) - mean) / std)
        weights.append(float(np.prod((roi if roi is not None else array.roi).shape)))
    return reference_quantiles(zscored, weights)


__all__ = [
    "NORMALIZATIONS",
    "Normalization",
    "REFERENCE_LEVELS",
    "OUT_OF_DEPTH_SHIFT",
    "describe_shift",
    "intensity_shift",
    "intensity_stats",
    "matching",
    "normalization_factor",
    "normalization_for",
    "reference_quantiles",
    "sampled_intensities",
    "training_reference",
]
