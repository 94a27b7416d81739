"""Region merging over a region graph makes waterz's merges (the blockwise agglomeration)."""

from __future__ import annotations

import numpy as np
import pytest
import waterz

from lsdflow.core.evaluate.metrics import segmentation_scores
from lsdflow.core.segment.find_segments import apply_lut, segment_luts
from lsdflow.core.segment.region_merging import (
    EdgeStatistics,
    boundary_statistics,
    discretize,
    edge_scores,
    merge_history,
)
from lsdflow.core.segment.watershed import (
    agglomerate,
    fragments_from_affinities,
    quiet_stdout,
    scoring_function,
)
from lsdflow.core.train.synthetic import synthetic_affinities, synthetic_labels


@pytest.fixture(scope="module")
def noisy():
    labels = synthetic_labels((32, 64, 64), 30, seed=5)
    affs = synthetic_affinities(labels, noise=0.3, blur=1.0, seed=5).astype(np.float32)
    fragments = fragments_from_affinities(affs, min_seed_distance=4)
    return affs, fragments


def test_discretize_as_waterz():
    values = np.array([np.nan, -0.1, 0.0, 0.001, 0.5, 0.999, 1.0, 1.5], np.float32)
    assert discretize(values).tolist() == [0, 0, 0, 0, 128, 255, 255, 255]


def test_statistics_are_additive_over_the_blocks_that_own_the_voxel_pairs(noisy):
    affs, fragments = noisy
    whole = boundary_statistics(affs, fragments)
    parts = [boundary_statistics(affs, fragments, (slice(None), slice(y, y + 16), slice(None))) for y in range(0, 64, 16)]
    summed = EdgeStatistics.concatenate(parts)
    for field in ("u", "v", "hist_edge", "hist_bin", "hist_count", "counts"):
        assert np.array_equal(getattr(summed, field), getattr(whole, field)), field
    assert np.allclose(summed.sums, whole.sums)


def test_hist_quant_merges_are_waterz_merges_in_waterz_order(noisy):
    affs, fragments = noisy
    with quiet_stdout():
        reference = [
            (int(m["a"]), int(m["b"]), float(m["score"]))
            for _, merges in waterz.agglomerate(
                affs, [1.0], fragments=fragments.copy(), scoring_function=scoring_function("hist_quant_50"),
                discretize_queue=256, return_merge_history=True,
            )
            for m in merges
        ]
    ids, ours = merge_history(boundary_statistics(affs, fragments), "hist_quant_50")
    assert len(reference) > 100
    assert [(int(ids[a]), int(ids[b])) for a, b, _ in ours] == [(a, b) for a, b, _ in reference]
    levels = np.maximum.accumulate([s for _, _, s in reference])
    assert np.all(np.array([s for _, _, s in ours]) >= levels)


@pytest.mark.parametrize("merge_function", ["hist_quant_50", "hist_quant_75", "mean"])
def test_segments_of_the_merged_graph_equal_waterz_in_memory_at_every_threshold(noisy, merge_function):
    affs, fragments = noisy
    thresholds = [0.05, 0.1, 0.2, 0.3, 0.5, 0.7]
    in_memory = agglomerate(affs, fragments, thresholds, merge_function, fill=False)
    statistics = boundary_statistics(affs, fragments)
    ids = np.unique(fragments)[1:]
    luts = segment_luts(ids, statistics.u, statistics.v, edge_scores(statistics, merge_function), thresholds)
    labelled = fragments > 0
    for t in thresholds:
        voi = segmentation_scores(in_memory[t][labelled], apply_lut(fragments, ids, luts[t])[labelled]).voi_sum
        assert voi == 0.0, t
