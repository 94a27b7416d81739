"""Affinities → fragments → segments on arrays in memory: the algorithms the segmentation
stages (blockwise.py) run per block, and waterz's agglomeration of a whole array.

Fragments: seeds at the maxima of the distance transform of the boundary map (where the
mean affinity falls below 0.5), grown by watershed (scikit-image) — in 3D, or section by
section for anisotropic data. Written here because `lsd.post` no longer imports.
Agglomeration (`agglomerate`): waterz over the fragments' region graph, one segmentation
per threshold: the reference that the stages' region merging equals (tests), and the
label-free quality estimate's small crops.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

import edt
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from ..config import ConfigError
from .unique_ids import unique_inverse

HIST_QUANTILES = tuple(range(10, 100, 5))


def scoring_function(merge_function: str) -> str:
    """waterz's C++ scoring function for a merge function name (those waterz ships prebuilt)."""
    if merge_function == "mean":
        return "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>"
    if merge_function.startswith("hist_quant_"):
        quantile = int(merge_function.removeprefix("hist_quant_"))
        if quantile in HIST_QUANTILES:
            # InitWithMax=false: initialise edges with their histogram, not their maximum
            # affinity (with the default `true`, ground-truth affinities over-merge badly)
            return f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {quantile}, ScoreValue, 256, false>>"
    known = ["mean"] + [f"hist_quant_{q}" for q in HIST_QUANTILES]
    raise ConfigError(f"segmentation.merge_function: unknown merge function {merge_function!r}; known: {known}")


def _check_affinities(affs: np.ndarray, channels: int = 3) -> None:
    if affs.ndim != 4 or affs.shape[0] < channels:
        raise ValueError(
            f"affinities must have shape (channels >= {channels}, z, y, x), got {affs.shape}"
        )
    if np.issubdtype(affs.dtype, np.floating) and not np.isfinite(affs).all():
        raise ValueError("affinities contain NaN or infinite values")


def as_float_affinities(affs: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] (waterz needs float32; uint8 predictions are scaled by 255)."""
    if affs.dtype == np.uint8:
        return affs.astype(np.float32) / 255.0
    return np.ascontiguousarray(affs, dtype=np.float32)


def _seeded_watershed(boundary_distances: np.ndarray, mask: np.ndarray, min_seed_distance: int, id_offset: int):
    """Fragments inside `mask` (0 outside), ids id_offset+1 ... id_offset+n; returns (fragments, n)."""
    maxima = ndimage.maximum_filter(boundary_distances, min_seed_distance) == boundary_distances
    seeds, n = ndimage.label(maxima & mask)
    fragments = watershed(boundary_distances.max() - boundary_distances, seeds, mask=mask)
    # a small object next to a larger one may have no maximum of its own: give it a
    # fragment instead of leaving it unlabelled
    orphans, n_orphans = ndimage.label(mask & (fragments == 0))
    fragments[orphans > 0] = orphans[orphans > 0] + n
    fragments = fragments.astype(np.uint64)
    fragments[fragments > 0] += id_offset
    return fragments, n + n_orphans


def consecutive_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, consecutive) with `ids[consecutive] == labels`: labels 1..n in the order of
    their ids, 0 kept for 0 (boundary) whether or not `labels` holds any."""
    ids, consecutive = unique_inverse(labels)
    consecutive = consecutive.reshape(labels.shape).astype(np.uint64)
    if not len(ids) or ids[0] != 0:
        ids = np.concatenate([[0], ids]).astype(labels.dtype)
        consecutive += 1
    return ids, consecutive


def fill_boundaries(segmentation: np.ndarray, affs: np.ndarray) -> np.ndarray:
    """Give every boundary voxel (0) to the segment it is least separated from.

    Done after agglomeration: boundary voxels left out of the fragments keep the region
    graph clean (edges only where fragments touch), and filling them afterwards avoids a
    segment "0" that would count as one huge false merge. Any ids: large ones (the
    blockwise fragments' global ids) are made consecutive first, as scikit-image's
    watershed sizes its work by the largest marker."""
    unlabelled = segmentation == 0
    if not unlabelled.any():
        return segmentation
    if segmentation.max() > segmentation.size:
        ids, consecutive = consecutive_labels(segmentation)
        return ids[fill_boundaries(consecutive, affs)]
    boundary = 1.0 - as_float_affinities(affs[:3]).mean(axis=0)
    # flooding only ever crosses unlabelled voxels: a watershed restricted to them and
    # their labelled rim gives the same result as one over the whole volume, 5-10x faster
    region = ndimage.binary_dilation(unlabelled)
    filled = watershed(boundary, segmentation, mask=region)
    filled[~region] = segmentation[~region]
    return filled.astype(segmentation.dtype)


def distance_to_boundary(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (voxels, float64) of every voxel in `mask` to the nearest voxel
    outside it (0 there), as scipy's distance_transform_edt computes it; seung-lab's `edt`
    is 4x faster on a block. Its float32 distances order and tie voxels exactly as scipy's
    float64 ones (distinct squared distances lie far apart at float32's precision), so the
    fragments seeded and flooded from them are the same."""
    return edt.edt(mask, parallel=1).astype(np.float64)


def fragments_with_depth(
    affs: np.ndarray,
    fragments_in_xy: bool = False,
    min_seed_distance: int = 10,
    filter_fragments: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Watershed fragments (uint64, 0 = boundary) and the distance of every voxel to the
    nearest boundary (the depth the watershed floods; per section with `fragments_in_xy`)."""
    _check_affinities(affs)
    affs = as_float_affinities(affs)
    if fragments_in_xy:
        fragments = np.zeros(affs.shape[1:], dtype=np.uint64)
        distances = np.zeros(affs.shape[1:], dtype=np.float64)
        mean_xy = 0.5 * (affs[1] + affs[2])
        offset = 0
        for z in range(affs.shape[1]):
            mask = mean_xy[z] > 0.5
            distances[z] = distance_to_boundary(mask)
            fragments[z], n = _seeded_watershed(distances[z], mask, min_seed_distance, offset)
            offset += n
    else:
        mask = affs[:3].mean(axis=0) > 0.5
        distances = distance_to_boundary(mask)
        fragments, _ = _seeded_watershed(distances, mask, min_seed_distance, 0)
    if filter_fragments > 0:
        ids = np.unique(fragments)
        ids = ids[ids != 0]
        mean_affinity = ndimage.mean(affs[:3].mean(axis=0), fragments, ids)
        fragments[np.isin(fragments, ids[np.asarray(mean_affinity) < filter_fragments])] = 0
    return fragments, distances


def fragments_from_affinities(
    affs: np.ndarray,
    fragments_in_xy: bool = False,
    min_seed_distance: int = 10,
    filter_fragments: float = 0.0,
) -> np.ndarray:
    """Watershed fragments (uint64, 0 = boundary) from (3+, z, y, x) affinities in [0, 1].

    `filter_fragments` > 0 sets fragments whose mean affinity is below it to 0 (background)."""
    return fragments_with_depth(affs, fragments_in_xy, min_seed_distance, filter_fragments)[0]


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """waterz prints progress from C++ on file descriptor 1 and from Python on
    sys.stdout: send both to /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def agglomerate(
    affs: np.ndarray,
    fragments: np.ndarray,
    thresholds: Sequence[float],
    merge_function: str = "hist_quant_50",
    fill: bool = True,
) -> dict[float, np.ndarray]:
    """One segmentation per threshold (sorted), by waterz over the fragments; with `fill`,
    boundary voxels (0) go to the fragment they are least separated from, and so to its
    segment (`fill_boundaries`)."""
    import waterz

    _check_affinities(affs)
    affs = as_float_affinities(affs[:3])
    if fragments.shape != affs.shape[1:]:
        raise ValueError(f"fragments {fragments.shape} do not match affinities {affs.shape[1:]}")
    # waterz's memory grows with the largest id: relabel to consecutive ids first
    _, consecutive = consecutive_labels(fragments)
    thresholds = sorted(float(t) for t in thresholds)
    # boundary voxels are assigned to fragments once; each threshold then only maps
    # fragments to segments (one watershed instead of one per threshold)
    filled = fill_boundaries(consecutive, affs) if fill else consecutive
    labelled = consecutive > 0
    results = {}
    with quiet_stdout():
        for threshold, segmentation in zip(
            thresholds,
            waterz.agglomerate(
                affs,
                thresholds,
                fragments=consecutive.copy(),  # waterz agglomerates in place
                scoring_function=scoring_function(merge_function),
                discretize_queue=256,
            ),
        ):
            fragment_to_segment = np.zeros(int(consecutive.max()) + 1, dtype=np.uint64)
            fragment_to_segment[consecutive[labelled]] = segmentation[labelled]
            results[threshold] = fragment_to_segment[filled]
    return results
