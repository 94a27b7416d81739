"""Hierarchical agglomeration of a region graph: waterz's region merging without the voxels.

`waterz.agglomerate` needs the affinities and fragments of the whole volume in one
process; what its merging actually uses is the region graph and, per edge, statistics of
the affinities on the boundary between two fragments (a 256-bin histogram for
`hist_quant_*`, a mean for `mean`). Both are additive over voxel pairs, so blocks can
compute them for the pairs they own (`boundary_statistics`), and one process can merge the
whole graph. Agglomerating each block on its own and taking the union of the merges, as the
LSD papers' pipeline does, over-merges: a region cut by a block sees only part of its
boundary, and any block's merge becomes a global one.

waterz has no entry point that takes a region graph, so its `IterativeRegionMerging`
(waterz/backend/IterativeRegionMerging.hpp, BinQueue.hpp, HistogramQuantileProvider.hpp)
is ported here rule for rule: the same discretization of affinities and scores, the same
256-bin FIFO queue, initial scores pushed in edge order (u, v), stale edges rescored when
popped, and a shared neighbour's two edges combined into the one with the lower score. On
the same fragments it makes the same merges in the same order as waterz (tested).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .merge_history import edge_merge_scores
from .unique_ids import unique_inverse, unique_pairs

BINS = 256  # waterz's histogram bins and queue bins


def discretize(values: np.ndarray) -> np.ndarray:
    """Affinities in [0, 1] → bins 0..255 as waterz's `discretize<int>` (NaN and ≤ 0 → 0)."""
    values = np.asarray(values, dtype=np.float32)
    bins = np.zeros(values.shape, dtype=np.int64)
    positive = values > 0
    bins[positive] = np.minimum((values[positive] * np.float32(BINS)).astype(np.int64), BINS - 1)
    return bins.astype(np.uint8)


@dataclass
class EdgeStatistics:
    """Per region-graph edge (u < v, sorted by (u, v)): its boundary's affinity histogram
    as sparse (edge, bin, count) triples sorted by edge then bin, and the sum and number of
    its affinities (for `mean`)."""

    u: np.ndarray  # uint64
    v: np.ndarray  # uint64
    hist_edge: np.ndarray  # int64 index into u / v
    hist_bin: np.ndarray  # uint8
    hist_count: np.ndarray  # int64
    sums: np.ndarray  # float64
    counts: np.ndarray  # int64

    @classmethod
    def empty(cls) -> EdgeStatistics:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.uint8),
                   np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.u)

    @classmethod
    def concatenate(cls, parts: list[EdgeStatistics]) -> EdgeStatistics:
        """One table from several (blocks): an edge seen by several blocks gets the sum."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
        u = np.concatenate([p.u for p in parts])
        v = np.concatenate([p.v for p in parts])
        pair_u, pair_v, edge = unique_pairs(u, v)
        hist_edge = np.concatenate([edge[p.hist_edge + o] for p, o in zip(parts, offsets)])
        hist_bin = np.concatenate([p.hist_bin for p in parts])
        hist_count = np.concatenate([p.hist_count for p in parts])
        return cls._aggregate(
            pair_u, pair_v, hist_edge, hist_bin, hist_count,
            np.bincount(edge, weights=np.concatenate([p.sums for p in parts]), minlength=len(pair_u)),
            np.bincount(edge, weights=np.concatenate([p.counts for p in parts]), minlength=len(pair_u)).astype(np.int64),
        )

    @classmethod
    def _aggregate(cls, u, v, hist_edge, hist_bin, hist_count, sums, counts) -> EdgeStatistics:
        key = hist_edge.astype(np.int64) * BINS + hist_bin.astype(np.int64)
        keys, inverse = unique_inverse(key)
        totals = np.bincount(inverse, weights=hist_count, minlength=len(keys)).astype(np.int64)
        return cls(u.astype(np.uint64), v.astype(np.uint64), keys // BINS, (keys % BINS).astype(np.uint8), totals,
                   np.asarray(sums, np.float64), np.asarray(counts, np.int64))


def boundary_statistics(affs: np.ndarray, fragments: np.ndarray, owned: tuple[slice, ...] | None = None) -> EdgeStatistics:
    """Statistics of every pair of touching voxels with different non-zero fragments, as
    waterz collects them: the pair (x - e_d, x) carries affinity channel d at x. With
    `owned`, only pairs whose x lies in those slices count (a block owns the pairs of its
    write ROI; its context must reach one voxel below it)."""
    own = None
    if owned is not None:
        own = np.zeros(fragments.shape, dtype=bool)
        own[owned] = True
    us, vs, values = [], [], []
    for d in range(3):
        at = [slice(None)] * 3
        below = [slice(None)] * 3
        at[d], below[d] = slice(1, None), slice(None, -1)
        a, b = fragments[tuple(at)], fragments[tuple(below)]
        pair = (a != b) & (a != 0) & (b != 0)
        if own is not None:
            pair &= own[tuple(at)]
        a, b = a[pair], b[pair]
        us.append(np.minimum(a, b))
        vs.append(np.maximum(a, b))
        values.append(affs[d][tuple(at)][pair])
    u = np.concatenate(us).astype(np.uint64)
    if not len(u):
        return EdgeStatistics.empty()
    v = np.concatenate(vs).astype(np.uint64)
    values = np.concatenate(values).astype(np.float32)
    pair_u, pair_v, edge = unique_pairs(u, v)
    return EdgeStatistics._aggregate(
        pair_u, pair_v, edge, discretize(values), np.ones(len(edge), np.int64),
        np.bincount(edge, weights=values.astype(np.float64), minlength=len(pair_u)),
        np.bincount(edge, minlength=len(pair_u)).astype(np.int64),
    )


def _quantile_of(merge_function: str) -> int | None:
    if merge_function == "mean":
        return None
    if merge_function.startswith("hist_quant_"):
        return int(merge_function.removeprefix("hist_quant_"))
    raise ValueError(f"unknown merge function {merge_function!r}")


def _queue_bin(score: float) -> int:
    if not score > 0:
        return 0
    return min(int(np.float32(score) * np.float32(BINS)), BINS - 1)


def _hist_score(hist: np.ndarray, quantile: int) -> float:
    """1 - the quantile of a dense histogram, as waterz's HistogramQuantileProvider."""
    cumulative = np.cumsum(hist)
    pivot = quantile * int(cumulative[-1]) // 100 + 1
    bin_ = int(np.searchsorted(cumulative, pivot))  # first bin whose cumulative count reaches pivot
    return 1.0 - (bin_ + 0.5) / BINS


def initial_scores(stats: EdgeStatistics, merge_function: str) -> np.ndarray:
    """Every edge's score before any merge (vectorized)."""
    quantile = _quantile_of(merge_function)
    n = len(stats)
    if quantile is None:
        return (1.0 - stats.sums / np.maximum(stats.counts, 1)).astype(np.float32).astype(np.float64)
    counts = stats.hist_count
    cumulative = np.cumsum(counts)
    totals = np.bincount(stats.hist_edge, weights=counts, minlength=n).astype(np.int64)
    group_start = np.concatenate([[0], np.cumsum(totals)[:-1]])
    within = cumulative - group_start[stats.hist_edge]
    pivot = quantile * totals // 100 + 1
    reached = np.flatnonzero(within >= pivot[stats.hist_edge])
    bins = np.full(n, BINS, dtype=np.int64)
    edges, first = np.unique(stats.hist_edge[reached], return_index=True)
    bins[edges] = stats.hist_bin[reached[first]]
    return 1.0 - (bins + 0.5) / BINS


def merge_history(stats: EdgeStatistics, merge_function: str, threshold: float = 1.0) -> tuple[np.ndarray, list]:
    """Merge the region graph until the next edge scores ≥ `threshold`.

    Returns the sorted node ids and the merges as (a, b, level) in node indices (b merged
    into a), in waterz's order; `level` is the highest score popped so far, so that waterz
    run to threshold t makes exactly the merges whose level is < t."""
    quantile = _quantile_of(merge_function)
    ids = np.unique(np.concatenate([stats.u, stats.v]))
    n, n_edges = len(ids), len(stats)
    eu = np.searchsorted(ids, stats.u).tolist()
    ev = np.searchsorted(ids, stats.v).tolist()
    scores = initial_scores(stats, merge_function).tolist()
    # per edge: its histogram (dense, int64), built when first needed; or [sum, count]
    if quantile is None:
        stat = [[s, c] for s, c in zip(stats.sums.tolist(), stats.counts.tolist())]
    else:
        bounds = np.searchsorted(stats.hist_edge, np.arange(n_edges + 1))
        stat = [None] * n_edges

        def dense(e: int) -> np.ndarray:
            if stat[e] is None:
                hist = np.zeros(BINS, np.int64)
                lo, hi = bounds[e], bounds[e + 1]
                hist[stats.hist_bin[lo:hi]] = stats.hist_count[lo:hi]
                stat[e] = hist
            return stat[e]

    def combine(into: int, source: int) -> None:
        if quantile is None:
            stat[into][0] += stat[source][0]
            stat[into][1] += stat[source][1]
        else:
            dense(into)
            stat[into] += dense(source)
        stat[source] = None

    def score(e: int) -> float:
        if quantile is None:
            total, count = stat[e]
            return float(np.float32(1.0 - total / max(count, 1)))
        return _hist_score(dense(e), quantile)

    adjacency: list[dict[int, int]] = [dict() for _ in range(n)]
    for e, (a, b) in enumerate(zip(eu, ev)):
        adjacency[a][b] = e
        adjacency[b][a] = e
    stale = bytearray(n_edges)
    deleted = bytearray(n_edges)
    queue = [deque() for _ in range(BINS)]
    for e, s in enumerate(scores):
        queue[_queue_bin(s)].append(e)
    lowest = 0
    level = -np.inf
    history = []
    while True:
        while lowest < BINS and not queue[lowest]:
            lowest += 1
        if lowest == BINS:
            break
        e = queue[lowest][0]
        s = scores[e]
        if s >= threshold:
            break
        queue[lowest].popleft()
        # waterz run to a threshold t stops at the first popped score >= t, even a stale or
        # deleted edge's: a merge is made at t only if every score popped before it is < t
        level = max(level, s)
        if deleted[e]:
            continue
        if stale[e]:
            scores[e] = new = score(e)
            stale[e] = 0
            b_ = _queue_bin(new)
            queue[b_].append(e)
            lowest = min(lowest, b_)
            continue
        a, b = eu[e], ev[e]  # b merged into a (a < b, as waterz keeps edges sorted)
        neighbours = adjacency[b]
        adjacency[b] = {}
        del neighbours[a]
        del adjacency[a][b]
        of_a = adjacency[a]
        for neighbour, edge in neighbours.items():
            of_neighbour = adjacency[neighbour]
            del of_neighbour[b]
            shared = of_a.get(neighbour)
            if shared is not None and scores[edge] > scores[shared]:
                combine(shared, edge)  # keep a's edge
                deleted[edge] = 1
                stale[shared] = 1
                continue
            if shared is not None:
                combine(edge, shared)  # b's edge replaces a's
                deleted[shared] = 1
                stale[edge] = 1
            of_a[neighbour] = edge
            of_neighbour[a] = edge
            eu[edge], ev[edge] = min(a, neighbour), max(a, neighbour)
        history.append((a, b, level))
    return ids, history


def edge_scores(stats: EdgeStatistics, merge_function: str, threshold: float = 1.0) -> np.ndarray:
    """Per edge of `stats`: the (running maximum) score at which its two fragments were
    joined, NaN if never: components of the edges ≤ t are waterz's segmentation at t."""
    if not len(stats):
        return np.zeros(0)
    ids, history = merge_history(stats, merge_function, threshold)
    return edge_merge_scores(np.searchsorted(ids, stats.u), np.searchsorted(ids, stats.v), history)


__all__ = ["BINS", "EdgeStatistics", "boundary_statistics", "discretize", "edge_scores", "initial_scores", "merge_history"]
