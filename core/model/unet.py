"""A 3D U-Net with valid convolutions, as in funlib.learn.torch (which is not on PyPI).

The architecture follows the one used for the published LSD/MTLSD networks: per level a
pass of valid convolutions + ReLU, max-pool downsampling, nearest-neighbour ("constant")
or transposed-convolution upsampling, and before each skip connection a crop so that the
output stays translation-equivariant ("crop to factor").

The shape arithmetic lives in `unet_geometry` (no torch), so configs can be validated
without importing torch or allocating anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .unet_geometry import Shape, conv_crop_of, make_geometry


class ConvPass(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: Sequence[Shape]):
        layers: list[nn.Module] = []
        for kernel_size in kernel_sizes:
            layers += [nn.Conv3d(in_channels, out_channels, kernel_size), nn.ReLU(inplace=True)]
            in_channels = out_channels
        super().__init__(*layers)


def crop_to_shape(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Center-crop the spatial (last len(shape)) axes of `x` to `shape`."""
    dims = len(shape)
    offsets = [(a - b) // 2 for a, b in zip(x.shape[-dims:], shape)]
    slices = tuple(slice(o, o + s) for o, s in zip(offsets, shape))
    return x[(...,) + slices]


class Unet(nn.Module):
    """3D U-Net with valid padding; `geometry` fixes the shape arithmetic."""

    def __init__(
        self,
        in_channels: int,
        num_fmaps: int,
        fmap_inc_factor: int,
        downsample_factors: Sequence[Sequence[int]],
        kernel_size_down: Sequence[Sequence[Sequence[int]]] | None = None,
        kernel_size_up: Sequence[Sequence[Sequence[int]]] | None = None,
        constant_upsample: bool = True,
    ):
        super().__init__()
        self.geometry = make_geometry(downsample_factors, kernel_size_down, kernel_size_up)
        g = self.geometry
        levels = g.num_levels
        fmaps = [num_fmaps * fmap_inc_factor**level for level in range(levels)]
        self.out_channels = fmaps[0]

        self.down = nn.ModuleList(
            ConvPass(in_channels if level == 0 else fmaps[level - 1], fmaps[level], g.kernel_size_down[level])
            for level in range(levels)
        )
        self.pool = nn.ModuleList(
            nn.MaxPool3d(f, stride=f) for f in g.downsample_factors
        )
        if constant_upsample:
            self.upsample = nn.ModuleList(
                nn.Upsample(scale_factor=f, mode="nearest") for f in g.downsample_factors
            )
            up_in = [fmaps[level + 1] + fmaps[level] for level in range(levels - 1)]
        else:
            self.upsample = nn.ModuleList(
                nn.ConvTranspose3d(fmaps[level + 1], fmaps[level + 1], f, stride=f)
                for level, f in enumerate(g.downsample_factors)
            )
            up_in = [fmaps[level + 1] + fmaps[level] for level in range(levels - 1)]
        self.up = nn.ModuleList(
            ConvPass(up_in[level], fmaps[level], g.kernel_size_up[level])
            for level in range(levels - 1)
        )
        self._crop_factors = g.crop_factors()

    def _crop_to_factor(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Crop so that (size - conv crop) is a multiple of the total downsampling below."""
        g = self.geometry
        shape = x.shape[-g.dims :]
        conv_crop = conv_crop_of(g.kernel_size_up[level], g.dims)
        factor = self._crop_factors[level]
        target = tuple(
            math.floor((s - c) / f) * f + c for s, c, f in zip(shape, conv_crop, factor)
        )
        return crop_to_shape(x, target) if target != tuple(shape) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in range(self.geometry.num_levels - 1):
            x = self.down[level](x)
            skips.append(x)
            x = self.pool[level](x)
        x = self.down[-1](x)
        for level in reversed(range(self.geometry.num_levels - 1)):
            x = self._crop_to_factor(self.upsample[level](x), level)
            skip = crop_to_shape(skips[level], x.shape[-self.geometry.dims :])
            x = self.up[level](torch.cat([skip, x], dim=1))
        return x
