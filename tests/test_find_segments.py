"""Find-segments (connected components per threshold) and merge scores from waterz's history."""

from __future__ import annotations

import numpy as np
import waterz
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lsdflow.core.evaluate.metrics import segmentation_scores
from lsdflow.core.segment.find_segments import (
    apply_lut,
    read_lut,
    segment_luts,
    write_luts,
)
from lsdflow.core.segment.merge_history import edge_merge_scores
from lsdflow.core.segment.region_merging import boundary_statistics
from lsdflow.core.segment.watershed import (
    fragments_from_affinities,
    quiet_stdout,
    scoring_function,
)
from lsdflow.core.train.synthetic import synthetic_affinities, synthetic_labels


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(pairs[0]) == len(np.unique(a)) == len(np.unique(b))


def test_luts_are_connected_components_per_threshold():
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(10**12, size=2000, replace=False).astype(np.uint64) + 1)
    u = rng.choice(ids, 5000)
    v = rng.choice(ids, 5000)
    scores = rng.uniform(0, 1, 5000)
    scores[::10] = np.nan  # never merged
    # an edge to a node the store does not know is ignored
    u = np.append(u, np.uint64(7)).astype(np.uint64)
    v = np.append(v, ids[0]).astype(np.uint64)
    scores = np.append(scores, 0.0)
    thresholds = [0.5, 0.02, 0.2]
    luts = segment_luts(ids, u, v, scores, thresholds)
    assert list(luts) == [0.02, 0.2, 0.5]
    index = {int(i): k for k, i in enumerate(ids)}
    for t, lut in luts.items():
        keep = [k for k in range(len(u) - 1) if scores[k] <= t]
        rows = [index[int(u[k])] for k in keep]
        cols = [index[int(v[k])] for k in keep]
        n, expected = connected_components(coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids),) * 2), directed=False)
        assert lut.min() == 1 and lut.max() == n
        assert _same_partition(lut, expected)


def test_luts_round_trip_and_apply(tmp_path):
    ids = np.array([5, 9, 12], np.uint64)
    paths = write_luts(tmp_path / "luts", ids, {0.1: np.array([1, 1, 2], np.uint64)}, key="k")
    fragments, segments = read_lut(paths[0.1])
    assert paths[0.1].name == "0.1.npz" and not list((tmp_path / "luts").glob(".*"))
    volume = np.array([[0, 5], [9, 12]], dtype=np.uint64)
    assert apply_lut(volume, fragments, segments).tolist() == [[0, 1], [1, 2]]
    assert apply_lut(np.array([99], np.uint64), fragments, segments).tolist() == [0]  # unknown -> 0


def test_edge_merge_scores_reproduce_waterz_at_every_threshold():
    """Components of edges scored <= t equal waterz's own segmentation at t, even where
    waterz's merge scores go down after a merge (running maximum)."""
    labels = synthetic_labels((24, 48, 48), 25, seed=3)
    affs = synthetic_affinities(labels, noise=0.25, blur=1.0, seed=3)
    fragments = fragments_from_affinities(affs, min_seed_distance=4)
    thresholds = [0.1, 0.3, 0.5, 0.7]
    with quiet_stdout():
        history = [
            (m["a"], m["b"], m["score"])
            for _, merges in waterz.agglomerate(
                affs, [1.0], fragments=fragments.copy(), scoring_function=scoring_function("hist_quant_50"),
                discretize_queue=256, return_merge_history=True,
            )
            for m in merges
        ]
        plain = waterz.agglomerate(
            affs, thresholds, fragments=fragments.copy(), scoring_function=scoring_function("hist_quant_50"),
            discretize_queue=256,
        )
        reference = {t: segmentation.copy() for t, segmentation in zip(thresholds, plain)}
    graph = boundary_statistics(affs, fragments)
    rag = np.stack([graph.u, graph.v], axis=1).astype(np.int64)
    scores = edge_merge_scores(rag[:, 0], rag[:, 1], history)
    ids = np.unique(fragments)[1:]
    luts = segment_luts(ids, rag[:, 0].astype(np.uint64), rag[:, 1].astype(np.uint64), scores, thresholds)
    labelled = fragments > 0
    for t in thresholds:
        ours = apply_lut(fragments, ids, luts[t])
        assert segmentation_scores(reference[t][labelled], ours[labelled]).voi_sum == 0.0, t
