"""Segments of a whole region graph: one fragment → segment lookup table per threshold.

A segment at threshold t is a connected component of the edges whose merge score is
≤ t. Everything stays in arrays (no Python object per edge): ids are mapped to indices
with a pandas hash index, components come from scipy's sparse `connected_components`, and
thresholds are taken in increasing order on the graph contracted by the previous one,
so each edge is looked at once however many thresholds there are, and each threshold
costs time in its new edges (plus one pass over the nodes), not in the whole graph.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..io.atomic import replacing


def sorted_fragment_ids(fragment_ids: np.ndarray) -> np.ndarray:
    """Sorted unique non-zero ids (node ids read block by block are sorted already: the
    check is one pass, the sort only when needed)."""
    ids = np.asarray(fragment_ids, dtype=np.uint64)
    if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
        ids = np.unique(ids)
    return ids[ids != 0]


def segment_luts(
    fragment_ids: np.ndarray, u: np.ndarray, v: np.ndarray, merge_score: np.ndarray, thresholds: Sequence[float]
) -> dict[float, np.ndarray]:
    """Per threshold: segment ids (uint64, 1..n) aligned with sorted unique `fragment_ids`.

    Edges whose endpoints are not among the fragments are ignored (a node missing from
    the graph store cannot be given a segment)."""
    ids = sorted_fragment_ids(fragment_ids)
    n = len(ids)
    # ids -> indices with a hash table (pandas): 4x faster than searchsorted on 10 M ids
    index = pd.Index(ids)
    u_index = index.get_indexer(np.asarray(u, dtype=np.uint64))
    v_index = index.get_indexer(np.asarray(v, dtype=np.uint64))
    known = (u_index >= 0) & (v_index >= 0)
    scores = np.asarray(merge_score, dtype=np.float64)
    merged = known & (scores == scores)  # NaN: never merged
    order = np.argsort(scores[merged], kind="stable")
    u_index = u_index[merged][order]
    v_index = v_index[merged][order]
    scores = scores[merged][order]

    # node -> the node index representing its component (a representative represents
    # itself); each threshold only looks at the components its new edges touch
    component = np.arange(n)
    start = 0
    luts = {}
    for threshold in sorted(float(t) for t in thresholds):
        stop = int(np.searchsorted(scores, threshold, side="right"))
        if stop > start:
            m = stop - start
            touched, inverse = np.unique(
                np.concatenate([component[u_index[start:stop]], component[v_index[start:stop]]]), return_inverse=True
            )
            graph = coo_matrix((np.ones(m, dtype=np.int8), (inverse[:m], inverse[m:])), shape=(len(touched),) * 2)
            _, groups = connected_components(graph, directed=False)
            # the smallest representative of each merged group represents it now
            _, first = np.unique(groups, return_index=True)
            remap = np.arange(n)
            remap[touched] = touched[first][groups]
            component = remap[component]
            start = stop
        is_representative = component == np.arange(n)
        luts[threshold] = np.cumsum(is_representative, dtype=np.uint64)[component]
    return luts


def lut_path(luts_dir: str | os.PathLike, threshold: float) -> Path:
    return Path(luts_dir) / f"{threshold:g}.npz"


def write_luts(
    luts_dir: str | os.PathLike, fragment_ids: np.ndarray, luts: dict[float, np.ndarray], key: str = ""
) -> dict[float, Path]:
    """`<luts_dir>/<threshold>.npz` with arrays `fragments` (sorted) and `segments`;
    each written to a temporary name and renamed in."""
    luts_dir = Path(luts_dir)
    luts_dir.mkdir(parents=True, exist_ok=True)
    ids = sorted_fragment_ids(fragment_ids)
    paths = {}
    for threshold, segments in luts.items():
        path = lut_path(luts_dir, threshold)
        with replacing(path) as partial, open(partial, "wb") as f:
            np.savez(f, fragments=ids, segments=segments, threshold=threshold, key=key)
        paths[threshold] = path
    return paths


def read_lut(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["fragments"], data["segments"]


def apply_lut(fragments: np.ndarray, lut_fragments: np.ndarray, lut_segments: np.ndarray) -> np.ndarray:
    """Map fragment ids to segment ids (0 stays 0; ids missing from the LUT become 0)."""
    return LutMapper(fragments).apply(lut_fragments, lut_segments)


class LutMapper:
    """Maps one block of fragments through several LUTs, finding its ids once."""

    def __init__(self, fragments: np.ndarray):
        self.shape = fragments.shape
        # a hash factorization (ids in order of appearance), 5x faster than np.unique's sort,
        # which cost more than mapping 8 thresholds
        self.inverse, self.ids = pd.factorize(fragments.ravel())

    def apply(self, lut_fragments: np.ndarray, lut_segments: np.ndarray) -> np.ndarray:
        mapped = np.zeros(len(self.ids), dtype=np.uint64)
        if len(lut_fragments):
            index = np.minimum(np.searchsorted(lut_fragments, self.ids), len(lut_fragments) - 1)
            found = lut_fragments[index] == self.ids
            mapped[found] = lut_segments[index[found]]
        mapped[self.ids == 0] = 0
        return mapped[self.inverse].reshape(self.shape)
