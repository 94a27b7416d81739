"""The threshold at which two fragments were joined, for each region-graph edge.

Region merging (waterz's, or its port over a region graph in `region_merging.py`)
reports merges as a history (a, b, score) of regions, not per edge. Storing,
per edge, the score at which its two fragments first ended up in one region lets
find-segments rebuild the segmentation of any threshold as connected components of the
edges scored at or below it — the scheme of the LSD papers' blockwise pipeline.

waterz stops at a threshold when the next merge scores above it, so what it merged at
threshold t is the prefix of the history whose scores are all ≤ t. Scores in the history
can go down after a merge (a merged region's histogram changes); using the running
maximum of the scores makes "edge score ≤ t" match waterz's own result at t exactly.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def edge_merge_scores(u: np.ndarray, v: np.ndarray, merges: Iterable[tuple[int, int, float]]) -> np.ndarray:
    """Per edge (u[i], v[i]): the running-max merge score at which u and v were joined,
    NaN where they never were. `merges` are (a, b, score) in waterz's order."""
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    scores = np.full(len(u), np.nan)
    # union by size with explicit member lists: a merge relabels the smaller region's
    # members and scores the edges between the two regions (O(E log N) in all)
    root: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    incident: dict[int, list[int]] = {}
    for i, (a, b) in enumerate(zip(u.tolist(), v.tolist())):
        incident.setdefault(a, []).append(i)
        incident.setdefault(b, []).append(i)
    running = -np.inf
    for a, b, score in merges:
        running = max(running, float(score))
        ra = root.get(a, a)
        rb = root.get(b, b)
        if ra == rb:
            continue
        members_a = members.setdefault(ra, [ra])
        members_b = members.setdefault(rb, [rb])
        if len(members_a) < len(members_b):
            ra, rb, members_a, members_b = rb, ra, members_b, members_a
        for node in members_b:
            for e in incident.get(node, ()):
                if scores[e] != scores[e]:  # NaN: not joined yet
                    other = int(u[e]) if int(v[e]) == node else int(v[e])
                    if root.get(other, other) == ra:
                        scores[e] = running
        for node in members_b:
            root[node] = ra
        members_a.extend(members_b)
        del members[rb]
    return scores
