"""Fragments + waterz agglomeration on the real gala volume."""

from __future__ import annotations

import numpy as np
import pytest

from lsdflow.core.evaluate.metrics import segmentation_scores
from lsdflow.core.io.volumes import open_array
from lsdflow.core.segment.watershed import (
    agglomerate,
    fragments_from_affinities,
    scoring_function,
)
from lsdflow.core.train.affinities import labels_to_affinities

NEIGHBORHOOD = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]


@pytest.fixture(scope="module")
def gala_labels(gala_test):
    a = open_array(gala_test, "volumes/labels/neuron_ids")
    return a[a.roi]


def test_ground_truth_affinities_reproduce_the_labels(gala_labels, capfd):
    """Post-processing loses nothing when the affinities are right (VOI sum <= 0.05)."""
    affs = labels_to_affinities(gala_labels, NEIGHBORHOOD)
    fragments = fragments_from_affinities(affs)
    segmentations = agglomerate(affs, fragments, [0.1, 0.5, 0.9])
    assert list(segmentations) == [0.1, 0.5, 0.9]
    scores = segmentation_scores(gala_labels, segmentations[0.5])
    assert scores.voi_sum <= 0.05, scores
    assert capfd.readouterr().out == ""  # waterz's C++ progress stays out of our output


def test_fragments_in_xy_are_per_section(gala_labels):
    affs = labels_to_affinities(gala_labels, NEIGHBORHOOD)
    fragments = fragments_from_affinities(affs, fragments_in_xy=True)
    ids_per_section = [set(np.unique(f)) - {0} for f in fragments]
    assert all(not (a & b) for a, b in zip(ids_per_section, ids_per_section[1:]))
    seg = agglomerate(affs, fragments, [0.5])[0.5]
    assert segmentation_scores(gala_labels, seg).voi_sum <= 0.1


def test_uint8_affinities_and_merge_functions(gala_labels):
    affs = (labels_to_affinities(gala_labels, NEIGHBORHOOD) * 255).astype(np.uint8)
    fragments = fragments_from_affinities(affs)
    seg = agglomerate(affs, fragments, [0.5], merge_function="mean")[0.5]
    assert segmentation_scores(gala_labels, seg).voi_sum <= 0.05
    assert "HistogramQuantileAffinity<RegionGraphType, 75, ScoreValue, 256, false>" in scoring_function("hist_quant_75")
    with pytest.raises(ValueError, match="unknown merge function"):
        scoring_function("hist_quant_42")


@pytest.mark.parametrize(
    "affs, message",
    [
        (np.zeros((2, 4, 4, 4), np.float32), "shape"),
        (np.full((3, 4, 4, 4), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_affinities_are_errors(affs, message):
    with pytest.raises(ValueError, match=message):
        fragments_from_affinities(affs)
