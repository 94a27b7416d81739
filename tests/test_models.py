"""The four models: built from config, forward and backward, shapes as derived."""

from __future__ import annotations

import pytest
import torch

from lsdflow.core.config import ModelConfig, load_config
from lsdflow.core.model.networks import MODEL_CLASSES, build_model, output_shape_from_network
from lsdflow.core.model.unet import Unet
from lsdflow.core.train.losses import MultiTaskWeightedMSELoss

EXPECTED_CHANNELS = {
    "mtlsd": (10, 3),
    "lsd": (10,),
    "aff": (3,),
    "mtlsd_mito": (10, 3, 3),
}


@pytest.mark.parametrize("kind", sorted(MODEL_CLASSES))
@pytest.mark.parametrize(
    "geometry",
    [
        dict(downsample_factors=[(2, 2, 2)], input_shape=(28, 28, 28)),
        dict(
            downsample_factors=[(1, 2, 2), (1, 2, 2)],
            kernel_size_down=[[(1, 3, 3), (1, 3, 3)], [(3, 3, 3)] * 2, [(3, 3, 3)] * 2],
            kernel_size_up=[[(3, 3, 3)] * 2, [(3, 3, 3)] * 2],
            input_shape=(20, 44, 44),
        ),
    ],
    ids=["isotropic", "anisotropic"],
)
def test_model_forward_and_backward(kind, geometry):
    config = ModelConfig(kind=kind, num_fmaps=3, fmap_inc_factor=2, **geometry)
    model = build_model(config)
    assert model.outputs == config.outputs
    x = torch.randn(2, 1, *config.input_shape)
    outputs = model(x)
    assert tuple(o.shape[1] for o in outputs) == EXPECTED_CHANNELS[kind]
    for o in outputs:
        assert tuple(o.shape[2:]) == config.output_shape
        assert o.shape[0] == 2
        assert 0 <= o.min() and o.max() <= 1  # sigmoid heads
    loss_fn = MultiTaskWeightedMSELoss([1.0] * len(outputs))
    args = []
    for o in outputs:
        args += [o, torch.rand_like(o), torch.ones_like(o)]
    loss = loss_fn(*args)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_transposed_convolution_upsampling_has_the_same_geometry():
    config = ModelConfig(num_fmaps=2, fmap_inc_factor=2, downsample_factors=[(2, 2, 2)],
                         input_shape=(28, 28, 28), constant_upsample=False)
    assert output_shape_from_network(config) == config.output_shape


def test_unet_rejects_mismatched_kernel_levels():
    with pytest.raises(ValueError, match="kernel_size_down has 1 levels, expected 2"):
        Unet(1, 2, 2, [(2, 2, 2)], kernel_size_down=[[(3, 3, 3)]])


def test_weighted_mse_ignores_unweighted_voxels():
    pred = torch.tensor([0.0, 1.0, 0.0])
    target = torch.tensor([0.0, 0.0, 1.0])
    weights = torch.tensor([1.0, 0.0, 2.0])
    # mean over voxels that carry weight: (0 + 2*1) / 2
    assert MultiTaskWeightedMSELoss([1.0])(pred, target, weights).item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["gala", "fib25", "cremi"])
def test_smallest_input_is_valid_and_minimal(name):
    geometry = load_config(name).model.geometry
    shape = geometry.smallest_input(8)
    assert all(o >= 8 for o in geometry.output_shape(shape))
    for axis, size in enumerate(shape):  # nothing smaller gives 8 output voxels
        assert all(geometry.axis_output_size(axis, s)[0] < 8 for s in range(1, size))
