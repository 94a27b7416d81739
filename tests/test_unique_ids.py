"""The hash-based id helpers give numpy's sorted results, and edt scipy's distances."""

import numpy as np
import pytest
from scipy import ndimage

from lsdflow.core.segment.unique_ids import unique_inverse, unique_pairs
from lsdflow.core.segment.watershed import distance_to_boundary


@pytest.mark.parametrize("n", [0, 1, 5000])
def test_unique_inverse_and_pairs_equal_numpy(n):
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 2**60, max(n // 7, 1)).astype(np.uint64)[rng.integers(0, max(n // 7, 1), n)]
    other = rng.integers(0, 40, n).astype(np.uint64)

    ids, inverse = unique_inverse(labels.reshape(-1, 1))
    expected_ids, expected_inverse = np.unique(labels, return_inverse=True)
    assert ids.dtype == labels.dtype
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(inverse, expected_inverse)

    pair_u, pair_v, edge = unique_pairs(labels, other)
    pairs, expected_edge = np.unique(np.stack([labels, other], axis=1), axis=0, return_inverse=True)
    np.testing.assert_array_equal(pair_u, pairs[:, 0])
    np.testing.assert_array_equal(pair_v, pairs[:, 1])
    np.testing.assert_array_equal(edge, expected_edge.reshape(-1))


@pytest.mark.parametrize("shape", [(40, 50), (20, 30, 40)])
def test_distance_to_boundary_is_scipys_euclidean_distance(shape):
    rng = np.random.default_rng(1)
    mask = ndimage.binary_opening(rng.random(shape) > 0.2)
    distances = distance_to_boundary(mask)
    assert distances.dtype == np.float64
    np.testing.assert_allclose(distances, ndimage.distance_transform_edt(mask), atol=1e-5)
