"""Test-time augmentation: predict the 8 mirrorings of the input and average the affinity
predictions after mapping each back.

Mapping back is exact: a mirrored affinity with offset -1 along a mirrored axis is the
original affinity one voxel over (the pair (j-1, j) becomes (j, j+1)). Shifted affinities
need one voxel (per unit of offset) beyond the region: predictions are made on a region
grown by `augmentation_margin` and cropped after mapping back.

LSDs are taken from the unmirrored pass: their offset and Pearson channels would change
sign (v -> 1-v) under mirroring, but background voxels carry 0 in every channel, which
has no mirrored counterpart, so an average would blur them at every boundary.
Segmentation uses the affinities only.

gunpowder's augment nodes act on training batches and have no inverse for predictions,
so this is written here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

# every subset of the spatial axes (z, y, x) to mirror, the identity first
MIRRORINGS: tuple[tuple[int, ...], ...] = tuple(
    tuple(axis for axis, flip in enumerate(flips) if flip) for flips in itertools.product((False, True), repeat=3)
)


def _check_neighborhood(neighborhood: Sequence[Sequence[int]]) -> None:
    for offset in neighborhood:
        if sum(1 for o in offset if o) != 1:
            raise ValueError(
                f"test-time augmentation needs affinities along one axis each; offset {tuple(offset)} is not"
            )


def augmentation_margin(
    neighborhood: Sequence[Sequence[int]], downsample_factors: Sequence[Sequence[int]] = ()
) -> tuple[int, int, int]:
    """Voxels per axis that affinities of `neighborhood` need beyond the region when mirrored,
    rounded up to the network's total downsampling: a U-Net's output is shift-equivariant
    only for shifts by multiples of it, so tiles moved by the margin give the same values
    in every block and in the whole volume."""
    _check_neighborhood(neighborhood)
    total = [int(np.prod([f[axis] for f in downsample_factors])) for axis in range(3)]
    needed = [max(abs(offset[axis]) for offset in neighborhood) for axis in range(3)]
    return tuple(-(-n // t) * t for n, t in zip(needed, total))


def unmirror(name: str, data: np.ndarray, axes: tuple[int, ...], neighborhood) -> np.ndarray:
    """Map affinities (channels, z, y, x) predicted for the input mirrored along `axes` back
    to the original's frame; the `augmentation_margin` faces are invalid after."""
    if not name.endswith("affs"):
        raise ValueError(f"no test-time augmentation rule for model output {name!r}")
    if not axes:
        return data
    data = np.flip(data, [a + 1 for a in axes]).copy()
    for channel, offset in enumerate(neighborhood):
        axis = next(a for a, o in enumerate(offset) if o)
        if axis in axes:
            # mirrored, the channel holds the pair (j, j - o): the original's value at j is at j + o
            data[channel] = np.roll(data[channel], -offset[axis], axis=axis)
    return data


def predict_mirrored(
    predict: Callable[[np.ndarray], Sequence[np.ndarray]],
    normalized: np.ndarray,
    names: Sequence[str],
    neighborhood,
    downsample_factors: Sequence[Sequence[int]] = (),
) -> tuple[np.ndarray, ...]:
    """Affinity outputs: the average of `predict` over the 8 mirrorings of `normalized`,
    each mapped back; other outputs: the unmirrored pass. `augmentation_margin` is cropped
    from every face of what `predict` returns."""
    margin = augmentation_margin(neighborhood, downsample_factors)
    crop = (slice(None),) + tuple(slice(m, -m if m else None) for m in margin)
    averaged = [name.endswith("affs") for name in names]
    results = [o[crop] for o in predict(normalized)]
    if not any(averaged):  # e.g. an LSD-only model: the mirrored passes would change nothing
        return tuple(results)
    for axes in MIRRORINGS[1:]:
        outputs = predict(np.flip(normalized, axes).copy())
        for k, (name, output) in enumerate(zip(names, outputs)):
            if averaged[k]:
                results[k] += unmirror(name, output, axes, neighborhood)[crop]
    return tuple(r / len(MIRRORINGS) if avg else r for r, avg in zip(results, averaged))
