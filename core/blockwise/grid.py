"""The grid of a stage's blocks: their write ROIs in order, and small stable block ids."""

from __future__ import annotations

import numpy as np
from funlib.geometry import Coordinate, Roi


def block_index(block_write_roi: Roi, total_roi: Roi, block_size: Coordinate) -> int:
    """Linear index of a block in the stage's grid: small, stable ids for a block
    (daisy's own block ids grow cubically with the grid position)."""
    grid = tuple(-(-s // b) for s, b in zip(total_roi.shape, block_size))
    position = (block_write_roi.offset - total_roi.offset) / block_size
    return int(np.ravel_multi_index(tuple(position), grid))


def one_block_chunks(shape_voxels) -> tuple[int, ...]:
    """Chunks of the outputs of a stage run as one block (the small-volume path): 64 voxels
    per axis, as every other lsdflow array, whatever the block's size."""
    return tuple(min(64, int(v)) for v in shape_voxels)


def grid_blocks(total_roi: Roi, block_size: Coordinate) -> list[Roi]:
    """Write ROIs of all blocks in grid order, the last ones shrunk to the total ROI."""
    grid = tuple(-(-s // b) for s, b in zip(total_roi.shape, block_size))
    rois = []
    for position in np.ndindex(*grid):
        offset = total_roi.offset + Coordinate(position) * block_size
        rois.append(Roi(offset, block_size).intersect(total_roi))
    return rois
