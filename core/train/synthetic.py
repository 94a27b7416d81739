"""Synthetic EM-like volumes for tests and benchmarks: neuron-like labels and the noisy
affinities a good network would predict for them.

Labels are a Voronoi tessellation of random seeds, stretched along random directions
(so objects are elongated like neurites) and separated by thin boundaries; affinities
are the labels' ground-truth affinities, blurred and with noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .affinities import labels_to_affinities

NEIGHBORHOOD = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]


def synthetic_labels(shape: tuple[int, int, int], n_objects: int = 200, seed: int = 0) -> np.ndarray:
    """uint64 labels 1..n with one-voxel boundaries (0) between objects."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 1, size=(n_objects, 3)) * np.array(shape)
    # anisotropic distance per object makes elongated, neurite-like pieces
    stretch = rng.uniform(0.3, 1.0, size=(n_objects, 3))
    grid = np.stack(np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij"), axis=-1)
    best = np.full(shape, np.inf, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint64)
    for i, (p, w) in enumerate(zip(points, stretch)):
        d = (((grid - p) * w) ** 2).sum(axis=-1)
        closer = d < best
        best[closer] = d[closer]
        labels[closer] = i + 1
    boundary = np.zeros(shape, dtype=bool)
    for axis in range(3):
        diff = np.diff(labels, axis=axis) != 0
        index = [slice(None)] * 3
        index[axis] = slice(1, None)
        boundary[tuple(index)] |= diff
    labels[boundary] = 0
    return labels


def synthetic_affinities(labels: np.ndarray, noise: float = 0.1, blur: float = 1.0, seed: int = 0) -> np.ndarray:
    """float32 (3, z, y, x) affinities in [0, 1]: ground truth, blurred, plus noise."""
    rng = np.random.default_rng(seed)
    affs = labels_to_affinities(labels, NEIGHBORHOOD)
    affs = np.stack([ndimage.gaussian_filter(a, blur) for a in affs]) if blur > 0 else affs
    affs = affs + rng.normal(0, noise, affs.shape).astype(np.float32)
    return np.clip(affs, 0, 1).astype(np.float32)
