"""Segments of a whole region graph: one fragment → segment lookup table per threshold.

A segment at threshold t is a connected component of the edges whose merge score is
≤ t. Everything stays in arrays (no Python object per edge): ids are mapped to indices
with `searchsorted`, components come from scipy's sparse `connected_components`, and
thresholds are taken in increasing order on the graph contracted by the previous one,
so each edge is looked at once however many thresholds there are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def segment_luts(
    fragment_ids: np.ndarray, u: np.ndarray, v: np.ndarray, merge_score: np.ndarray, thresholds: Sequence[float]
) -> dict[float, np.ndarray]:
    """Per threshold: segment ids (uint64, 1..n) aligned with sorted unique `fragment_ids`.

    Edges whose endpoints are not among the fragments are ignored (a node missing from
    the graph store cannot be given a segment)."""
    ids = np.unique(np.asarray(fragment_ids, dtype=np.uint64))
    ids = ids[ids != 0]
    n = len(ids)
    u_index = np.searchsorted(ids, u)
    v_index = np.searchsorted(ids, v)
    known = (u_index < n) & (v_index < n)
    known[known] &= (ids[u_index[known]] == u[known]) & (ids[v_index[known]] == v[known])
    scores = np.asarray(merge_score, dtype=np.float64)
    merged = known & (scores == scores)  # NaN: never merged
    order = np.argsort(scores[merged], kind="stable")
    u_index = u_index[merged][order]
    v_index = v_index[merged][order]
    scores = scores[merged][order]

    component = np.arange(n)  # node -> component at the current threshold
    n_components = n
    start = 0
    luts = {}
    for threshold in sorted(float(t) for t in thresholds):
        stop = int(np.searchsorted(scores, threshold, side="right"))
        if stop > start:
            cu = component[u_index[start:stop]]
            cv = component[v_index[start:stop]]
            graph = coo_matrix(
                (np.ones(len(cu), dtype=np.int8), (cu, cv)), shape=(n_components, n_components)
            )
            n_components, labels = connected_components(graph, directed=False)
            component = labels[component]
            start = stop
        luts[threshold] = (component + 1).astype(np.uint64)
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
    ids = np.unique(np.asarray(fragment_ids, dtype=np.uint64))
    ids = ids[ids != 0]
    paths = {}
    for threshold, segments in luts.items():
        path = lut_path(luts_dir, threshold)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        with open(partial, "wb") as f:
            np.savez(f, fragments=ids, segments=segments, threshold=threshold, key=key)
        os.replace(partial, path)
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
        self.ids, self.inverse = np.unique(fragments, return_inverse=True)

    def apply(self, lut_fragments: np.ndarray, lut_segments: np.ndarray) -> np.ndarray:
        mapped = np.zeros(len(self.ids), dtype=np.uint64)
        if len(lut_fragments):
            index = np.minimum(np.searchsorted(lut_fragments, self.ids), len(lut_fragments) - 1)
            found = lut_fragments[index] == self.ids
            mapped[found] = lut_segments[index[found]]
        mapped[self.ids == 0] = 0
        return mapped[self.inverse].reshape(self.shape)
