"""The U-Net's shape arithmetic without torch: output shapes, valid input sizes, crop
factors. Configs are validated (and valid alternatives suggested) from this alone, so
processes that never run a network (segmentation workers, the CLI's config checks) do not
pay torch's import."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Shape = tuple[int, ...]


def conv_crop_of(kernel_sizes: Sequence[Sequence[int]], dims: int) -> Shape:
    """Voxels removed along each axis by a pass of valid convolutions."""
    return tuple(sum(k[d] - 1 for k in kernel_sizes) for d in range(dims))


@dataclass(frozen=True)
class UnetGeometry:
    """Everything the shape arithmetic needs: the network without its weights."""

    downsample_factors: tuple[Shape, ...]
    kernel_size_down: tuple[tuple[Shape, ...], ...]
    kernel_size_up: tuple[tuple[Shape, ...], ...]

    @property
    def dims(self) -> int:
        return len(self.kernel_size_down[0][0])

    @property
    def num_levels(self) -> int:
        return len(self.downsample_factors) + 1

    def crop_factors(self) -> list[Shape]:
        """Product of the downsample factors below each level (index = level)."""
        factors: list[Shape] = []
        product = (1,) * self.dims
        for factor in reversed(self.downsample_factors):
            product = tuple(p * f for p, f in zip(product, factor))
            factors.append(product)
        return list(reversed(factors))

    def axis_output_size(self, axis: int, size: int) -> tuple[int, str | None]:
        """Output size along one axis, or (0, reason) if `size` is not a valid input."""
        skips = []
        for level, factor in enumerate(self.downsample_factors):
            size -= conv_crop_of(self.kernel_size_down[level], self.dims)[axis]
            if size <= 0:
                return 0, f"nothing left after the convolutions of level {level}"
            if size % factor[axis] != 0:
                return 0, (
                    f"size {size} before downsampling level {level} is not divisible "
                    f"by {factor[axis]}"
                )
            skips.append(size)
            size //= factor[axis]
        size -= conv_crop_of(self.kernel_size_down[-1], self.dims)[axis]
        if size <= 0:
            return 0, "nothing left at the bottom level"
        crop_factors = self.crop_factors()
        for level in reversed(range(self.num_levels - 1)):
            size *= self.downsample_factors[level][axis]
            conv_crop = conv_crop_of(self.kernel_size_up[level], self.dims)[axis]
            f = crop_factors[level][axis]
            n = math.floor((size - conv_crop) / f)
            size = n * f + conv_crop
            if size > skips[level]:
                return 0, f"upsampled size exceeds the skip connection at level {level}"
            size -= conv_crop
            if size <= 0:
                return 0, f"nothing left after the convolutions of up level {level}"
        return size, None

    def output_shape(self, input_shape: Sequence[int]) -> Shape:
        """Output shape for `input_shape`; raises ValueError for an invalid input shape."""
        out = []
        for axis, size in enumerate(input_shape):
            o, reason = self.axis_output_size(axis, size)
            if reason is not None:
                raise ValueError(f"axis {axis}: input size {size}: {reason}")
            out.append(o)
        return tuple(out)

    def smallest_input(self, min_output: int, search: int = 512) -> Shape:
        """The smallest valid input shape whose output has at least `min_output` voxels per
        axis (for quick measurements of a network's speed and memory)."""
        return tuple(next(s for s in range(1, search) if self.axis_output_size(axis, s)[0] >= min_output)
                     for axis in range(self.dims))

    def nearest_valid_sizes(self, axis: int, size: int, search: int = 512) -> list[int]:
        """The closest valid input sizes below and above `size` along `axis`."""
        below = next(
            (s for s in range(size - 1, 0, -1) if self.axis_output_size(axis, s)[1] is None),
            None,
        )
        above = next(
            (
                s
                for s in range(size + 1, size + search)
                if self.axis_output_size(axis, s)[1] is None
            ),
            None,
        )
        return [s for s in (below, above) if s is not None]


def _normalize_kernels(
    kernels: Sequence[Sequence[Sequence[int]]] | None, levels: int, dims: int
) -> tuple[tuple[Shape, ...], ...]:
    if kernels is None:
        return tuple(((3,) * dims, (3,) * dims) for _ in range(levels))
    return tuple(tuple(tuple(k) for k in level) for level in kernels)


def make_geometry(
    downsample_factors: Sequence[Sequence[int]],
    kernel_size_down: Sequence[Sequence[Sequence[int]]] | None = None,
    kernel_size_up: Sequence[Sequence[Sequence[int]]] | None = None,
) -> UnetGeometry:
    factors = tuple(tuple(f) for f in downsample_factors)
    dims = len(factors[0]) if factors else 3
    levels = len(factors) + 1
    down = _normalize_kernels(kernel_size_down, levels, dims)
    up = _normalize_kernels(kernel_size_up, levels - 1, dims)
    if len(down) != levels:
        raise ValueError(
            f"kernel_size_down has {len(down)} levels, expected {levels} "
            f"(one more than downsample_factors)"
        )
    if len(up) != levels - 1:
        raise ValueError(
            f"kernel_size_up has {len(up)} levels, expected {levels - 1} "
            f"(as many as downsample_factors)"
        )
    return UnetGeometry(factors, down, up)
