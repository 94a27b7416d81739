"""Test-time augmentation: mirrored affinities are mapped back exactly, and the blockwise
path gives what the in-memory path gives."""

from __future__ import annotations

import numpy as np
import pytest

from lsdflow.core.io.volumes import open_array
from lsdflow.core.predict.augmentation import (
    MIRRORINGS,
    augmentation_margin,
    predict_mirrored,
    unmirror,
)
from lsdflow.core.train.affinities import labels_to_affinities

NEAREST = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
LONG_RANGE = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-3, 0, 0), (0, -9, 0), (0, 0, -9)]


@pytest.fixture(scope="module")
def labels(gala_test):
    array = open_array(gala_test, "volumes/labels/neuron_ids")
    return array[array.roi][10:34, 20:60, 30:70].astype(np.uint64)


@pytest.mark.parametrize("neighborhood", [NEAREST, LONG_RANGE], ids=["nearest", "long-range"])
def test_mirrored_affinities_map_back_exactly(labels, neighborhood):
    """Affinities of the mirrored labels, mapped back, are the affinities of the labels."""
    expected = labels_to_affinities(labels, neighborhood)
    margin = augmentation_margin(neighborhood)
    inner = (slice(None),) + tuple(slice(m, -m) for m in margin)
    for axes in MIRRORINGS:
        mirrored = labels_to_affinities(np.flip(labels, axes).copy(), neighborhood)
        np.testing.assert_array_equal(unmirror("affs", mirrored, axes, neighborhood)[inner], expected[inner], str(axes))


def test_affinities_across_axes_are_refused():
    with pytest.raises(ValueError, match="one axis each"):
        augmentation_margin([(-1, -1, 0)])


def _mirror_equivariant_network(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in 'network' with one voxel of context whose affinities commute with
    mirroring: exp(-|x(j) - x(j - 1)|) per axis; its 'LSDs' are the input itself."""
    inner = x[1:-1, 1:-1, 1:-1]
    affs = []
    for axis in range(3):
        before = np.roll(x, 1, axis=axis)[1:-1, 1:-1, 1:-1]
        affs.append(np.exp(-np.abs(inner - before)))
    return inner[None].copy(), np.stack(affs)


def test_averaging_an_equivariant_network_changes_nothing():
    """Each mirrored pass, mapped back, is the unmirrored pass: so is their average."""
    x = np.random.default_rng(1).normal(size=(12, 14, 16)).astype(np.float32)
    lsds, affs = predict_mirrored(_mirror_equivariant_network, x, ["lsds", "affs"], NEAREST)
    plain_lsds, plain_affs = _mirror_equivariant_network(x)
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    np.testing.assert_array_equal(lsds, plain_lsds[inner])
    np.testing.assert_allclose(affs, plain_affs[inner], rtol=1e-6)


def test_augmented_prediction_of_a_network_covers_the_volume(gala_test):
    import torch

    from lsdflow.core.config import load_config
    from lsdflow.core.io.intensity import Normalization, intensity_stats
    from lsdflow.core.model.networks import build_model
    from lsdflow.core.predict.tiling import predict_array

    from .conftest import TINY_NET

    config = load_config("gala", TINY_NET)
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    shapes = config.model.input_shape, config.model.output_shape
    raw_array = open_array(gala_test, "volumes/raw")
    raw = raw_array[raw_array.roi][:12, :12, :12] / 255.0
    normalization = Normalization(*intensity_stats(raw_array))
    plain_lsds, plain_affs = predict_array(model, raw, *shapes, normalization, device="cpu")
    lsds, affs = predict_array(model, raw, *shapes, normalization, device="cpu", augment=True)
    assert affs.shape == plain_affs.shape and lsds.shape == plain_lsds.shape
    assert affs.min() >= 0 and affs.max() <= 1 and 0 < np.abs(affs - plain_affs).mean() < 0.1


def test_a_block_of_one_tile_costs_one_pass_per_mirroring():
    """The mirrored passes cover the tile plus the margin: the tile grows by it, so a
    one-tile block takes 8 passes (it took 64 when the margin spilled into a second
    tile per axis), and a block shrunk at the volume's face no more than it needs."""
    from lsdflow.core.config import load_config
    from lsdflow.core.model.networks import build_model
    from lsdflow.core.predict.blockwise import block_voxels, covering_voxels
    from lsdflow.core.predict.tiling import (
        context_margin,
        predict_with_context,
        prediction_tile,
    )

    from .conftest import TINY

    config = load_config("gala", TINY)
    model = build_model(config.model).eval()
    input_shape, output_shape = config.prediction_shapes  # 76^3 -> 36^3
    margin = augmentation_margin(model.config.affinity_neighborhood, model.config.downsample_factors)
    assert prediction_tile(model, input_shape, output_shape, True) == (
        tuple(i + 2 * m for i, m in zip(input_shape, margin)), tuple(o + 2 * m for o, m in zip(output_shape, margin)))
    assert prediction_tile(model, input_shape, output_shape, False) == (input_shape, output_shape)
    assert tuple(block_voxels(model, input_shape, output_shape, (1, 1, 1), True)) == output_shape
    assert tuple(block_voxels(model, input_shape, output_shape, (2, 1, 1), False)) == (72, 36, 36)
    assert tuple(covering_voxels(model, input_shape, output_shape, True, (5, 36, 20))) == output_shape

    passes = []
    model.register_forward_hook(lambda *_: passes.append(1))
    context = context_margin(model, input_shape, output_shape, augment=True)
    x = np.zeros(tuple(o + 2 * c for o, c in zip(output_shape, context)), np.float32)
    affs = predict_with_context(model, x, input_shape, output_shape, device="cpu", augment=True)[1]
    assert len(passes) == len(MIRRORINGS) and affs.shape[1:] == output_shape


def test_blockwise_workers_share_the_cores(monkeypatch):
    import torch

    from lsdflow.core.model import devices

    monkeypatch.setattr(devices, "available_cores", lambda: 8)
    before = torch.get_num_threads()
    try:
        assert devices.share_cores(2) == 4 and torch.get_num_threads() == 4
        assert devices.share_cores(16) == 1
    finally:
        torch.set_num_threads(before)
