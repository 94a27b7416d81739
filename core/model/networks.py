"""The four network heads on a shared U-Net: MTLSD, LSD-only, affinity-only, MTLSD+mito.

Every model's `forward` returns a tuple of sigmoid outputs in a fixed order, which
`outputs` names; training, prediction and the loss all follow that order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import ModelConfig
from .unet import Unet

NUM_LSDS_3D = 10


class _HeadedUnet(nn.Module):
    """A U-Net followed by one 1×1×1 convolution + sigmoid per output."""

    outputs: tuple[str, ...] = ()

    def __init__(self, config: ModelConfig, channels: Sequence[int]):
        super().__init__()
        self.config = config
        self.unet = Unet(
            in_channels=1,
            num_fmaps=config.num_fmaps,
            fmap_inc_factor=config.fmap_inc_factor,
            downsample_factors=config.downsample_factors,
            kernel_size_down=config.kernel_size_down,
            kernel_size_up=config.kernel_size_up,
            constant_upsample=config.constant_upsample,
        )
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv3d(self.unet.out_channels, c, 1), nn.Sigmoid())
            for c in channels
        )

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.unet(raw)
        return tuple(head(features) for head in self.heads)


class MtlsdModel(_HeadedUnet):
    """Multi-task: 10 LSD channels and nearest-neighbour affinities (recommended)."""

    outputs = ("lsds", "affs")

    def __init__(self, config: ModelConfig):
        super().__init__(config, [NUM_LSDS_3D, len(config.affinity_neighborhood)])


class LsdModel(_HeadedUnet):
    """LSDs only (an auxiliary network would turn them into affinities)."""

    outputs = ("lsds",)

    def __init__(self, config: ModelConfig):
        super().__init__(config, [NUM_LSDS_3D])


class AffModel(_HeadedUnet):
    """Affinities only: the baseline of the LSD paper."""

    outputs = ("affs",)

    def __init__(self, config: ModelConfig):
        super().__init__(config, [len(config.affinity_neighborhood)])


class MtlsdMitoModel(_HeadedUnet):
    """MTLSD plus affinities of mitochondria instances."""

    outputs = ("lsds", "affs", "mito_affs")

    def __init__(self, config: ModelConfig):
        n = len(config.affinity_neighborhood)
        super().__init__(config, [NUM_LSDS_3D, n, n])


MODEL_CLASSES: dict[str, type[_HeadedUnet]] = {
    "mtlsd": MtlsdModel,
    "lsd": LsdModel,
    "aff": AffModel,
    "mtlsd_mito": MtlsdMitoModel,
}


def build_model(config: ModelConfig) -> _HeadedUnet:
    return MODEL_CLASSES[config.kind](config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_shape_from_network(config: ModelConfig) -> tuple[int, ...]:
    """Output shape by running the real network on the `meta` device (no memory, no compute)."""
    model = build_model(config).to("meta")
    with torch.no_grad():
        out = model(torch.empty((1, 1, *config.input_shape), device="meta"))
    return tuple(out[0].shape[2:])
