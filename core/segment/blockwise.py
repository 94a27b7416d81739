"""Segmentation of large volumes block by block: the stages fragments → agglomerate →
relabel, with find segments (one process, the whole graph) between agglomerate and relabel.

- fragments: watershed in each block with context, cropped to the block; each fragment is
  named after its deepest voxel (`global_fragment_ids`), so the pieces of a fragment cut by
  a block face get the same id; one node per fragment and block (its part's center in nm
  and size) in the graph store.
- agglomerate: each block stores the boundary statistics of the voxel pairs it owns;
  then (`finish`) the whole region graph is merged in one process, as waterz would merge it
  in memory (`region_merging.py`), up to threshold 1 so that any threshold can be chosen
  later; every edge gets the score at which its fragments were joined, NaN if never.
- find segments: connected components per threshold over the whole graph → LUTs.
- relabel: LUTs applied to the filled fragments, which the fragments stage writes beside
  the fragments (boundary voxels given to the fragment they are least separated from, in
  the block's context): a relabel costs one lookup per threshold written.

Each stage is keyed on what it depends on and run by the one runner (core/blockwise/):
a rerun with the same inputs resumes where it stopped; new inputs recompute, keeping the
old result until the new one is complete.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
from funlib.geometry import Coordinate, Roi
from pydantic import PrivateAttr

from ..blockwise.grid import one_block_chunks
from ..blockwise.outputs import ArrayOutput, GraphOutput, stage_key
from ..blockwise.runner import RunSettings, block_index, committed, run_stage
from ..blockwise.stage import BlockwiseStage, nm, roi_field, roi_of
from ..io.graphstore import (
    Edges,
    Nodes,
    credentials_to_environment,
    default_graph_url,
    open_graph_store,
    redact,
    sample_name,
)
from ..io.input_checks import check_thresholds, check_writable
from ..io.layout import (
    FILLED_FRAGMENTS,
    FRAGMENTS,
    LUTS,
    PRED_AFFS,
    segmentation_dataset,
)
from ..io.output_lock import output_lock
from ..io.volumes import (
    VolumeError,
    container_identity,
    dataset_fingerprint,
    open_array,
    voxel_slices,
)
from .find_segments import LutMapper, lut_path, read_lut, segment_luts, write_luts
from .region_merging import boundary_statistics, edge_scores
from .unique_ids import unique_inverse
from .watershed import (
    as_float_affinities,
    fill_boundaries,
    fragments_with_depth,
    scoring_function,
)

CODE_VERSION = "blockwise-segment-5"  # bump when a stage's results change (5: boundaries filled by fragments)
FILL_CONTEXT = Coordinate((8, 8, 8))  # voxels around a block that its boundary filling sees
EDGES_PER_ROW = 1_000_000  # merged edges are stored in rows (SQLite) / blocks (MongoDB) of this many


class _SegmentationStage(BlockwiseStage):
    """What the segmentation stages of a volume share: its affinities, block grid and graph."""

    lock: ClassVar[str] = "segmentation"  # one writer of a container's segmentation at a time

    affs_dataset: str
    graph_url: str  # without credentials: they travel by environment, never in a description
    sample: str
    roi: tuple[tuple[int, ...], tuple[int, ...]]  # (begin, shape) nm
    voxel_size: tuple[int, int, int]
    block_nm: tuple[int, int, int]
    chunk_nm: tuple[int, int, int] | None = None  # of the arrays written; default one chunk per block

    def total_roi(self) -> Roi:
        return roi_of(self.roi)

    def block_size(self) -> Coordinate:
        return nm(self.block_nm)

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        return tuple(nm(self.chunk_nm or self.block_nm) / nm(self.voxel_size))

    def geometry(self, fragments_context: tuple[int, ...]) -> dict:
        return {"block": tuple(self.block_nm), "fragments_context": tuple(fragments_context),
                "roi": str(self.total_roi())}


class FragmentsStage(_SegmentationStage):
    name: ClassVar[str] = "fragments"

    context_nm: tuple[int, int, int]
    fragments_in_xy: bool
    min_seed_distance: int
    filter_fragments: float
    _affs: object = PrivateAttr(None)
    _fragments: object = PrivateAttr(None)
    _filled: object = PrivateAttr(None)
    _store: object = PrivateAttr(None)

    def context(self) -> Coordinate:
        return nm(self.context_nm)

    def check(self) -> None:
        if self.in_one_block():  # blockwise runs meet bad values block by block, as bad input
            affs = open_array(self.container, self.affs_dataset)
            data = affs[affs.roi]
            if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
                raise VolumeError(f"{self.container}/{self.affs_dataset}: the affinities contain NaN or infinite values")

    def key(self) -> str:
        return stage_key(
            stage="fragments", code=CODE_VERSION, container=container_identity(self.container),
            affs=dataset_fingerprint(self.container, self.affs_dataset),
            fragments_in_xy=self.fragments_in_xy, min_seed_distance=self.min_seed_distance,
            filter_fragments=self.filter_fragments, **self.geometry(self.context_nm),
        )

    def outputs(self) -> list:
        attrs = {"affinities": f"{self.container}/{self.affs_dataset}", "graph": redact(self.graph_url)}
        vs = nm(self.voxel_size)
        return [
            ArrayOutput(FRAGMENTS, self.total_roi(), vs, "uint64", self.chunk_shape, attrs=attrs),
            ArrayOutput(FILLED_FRAGMENTS, self.total_roi(), vs, "uint64", self.chunk_shape,
                        attrs={**attrs, "fragments": f"{self.container}/{FRAGMENTS}"}),
            # new fragments: the graph's edges (of every merge function) describe other fragments
            GraphOutput(self.graph_url, self.sample, "nodes", derived=("edges/*", "statistics")),
        ]

    @contextmanager
    def opened(self):
        self._affs = open_array(self.container, self.affs_dataset)
        self._fragments = open_array(self.container, self.writing[FRAGMENTS], mode="r+")
        self._filled = open_array(self.container, self.writing[FILLED_FRAGMENTS], mode="r+")
        with open_graph_store(self.graph_url, self.sample) as self._store:
            yield self

    def process(self, block):
        vs = self._affs.voxel_size
        # only the data that exists: padding would put a boundary at the volume's faces
        # that the in-memory path does not see
        read_roi = block.read_roi.intersect(self._affs.roi)
        affs = as_float_affinities(self._affs[read_roi][:3])
        if not np.isfinite(affs).all():
            raise VolumeError(f"{self.container}/{self.affs_dataset}: NaN or infinite affinities in {read_roi}")
        fragments, depth = fragments_with_depth(affs, self.fragments_in_xy, self.min_seed_distance, self.filter_fragments)
        unique_ids = global_fragment_ids(fragments, depth, read_roi, self.total_roi(), vs)
        write = voxel_slices(block.write_roi, read_roi, vs)
        # filled here, once, with FILL_CONTEXT of the block's context (boundaries are a few
        # voxels thick): relabelling then only maps ids
        fill_roi = block.write_roi.grow(FILL_CONTEXT * vs, FILL_CONTEXT * vs).intersect(read_roi)
        near = voxel_slices(fill_roi, read_roi, vs)
        filled = fill_boundaries(unique_ids[near], affs[(slice(None), *near)])
        self._filled[block.write_roi] = filled[voxel_slices(block.write_roi, fill_roi, vs)]
        unique_ids = unique_ids[write]
        self._fragments[block.write_roi] = unique_ids
        # nodes: size and center (nm) of each fragment's part in this block
        ids, local = unique_inverse(unique_ids)
        local = local.reshape(unique_ids.shape)
        labelled = unique_ids > 0
        flat = local[labelled]
        sizes = np.bincount(flat, minlength=len(ids))
        coordinates = np.nonzero(labelled)
        centers = np.stack(
            [np.bincount(flat, weights=c, minlength=len(ids)) for c in coordinates], axis=1
        ) / np.maximum(sizes, 1)[:, None]
        centers = centers * np.array(vs) + np.array(block.write_roi.begin)
        keep = ids > 0
        index = block_index(block.write_roi, self.total_roi(), self.block_size())
        self._store.write_nodes(index, Nodes(ids[keep], centers[keep], sizes[keep].astype(np.int64)))


def global_fragment_ids(fragments: np.ndarray, depth: np.ndarray, roi, total_roi, voxel_size) -> np.ndarray:
    """Ids that blocks agree on: each fragment is named after its deepest voxel (farthest
    from a boundary, ties broken by a fixed per-voxel jitter), as 1 + that voxel's index in
    the whole volume. A fragment cut by a block face is the same fragment in the blocks on
    both sides when both watersheds flood it from the same core, and then gets the same
    id there: the pieces are stitched without a merge decision, as in memory."""
    if not fragments.any():
        return np.zeros(fragments.shape, dtype=np.uint64)
    offset = np.array((roi.begin - total_roi.begin) / voxel_size, dtype=np.int64)
    shape = tuple(total_roi.shape / voxel_size)
    # depths tie along a neurite (a ridge of equal distances); a fixed jitter per voxel of the
    # volume, far below the gaps between distinct depths, picks the same voxel in every block
    grid = np.ix_(*(np.arange(o, o + n) for o, n in zip(offset, fragments.shape)))
    index = np.ravel_multi_index(grid, shape).astype(np.uint64)
    jitter = ((index * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)).astype(np.float64) / 2.0**24
    label_of = fragments.ravel().astype(np.int64)
    value = (depth + 1e-3 * jitter).ravel()
    # the deepest voxel of each fragment, the first in z, y, x order among equals (an order
    # every block agrees on); a scatter-max, 10x faster than scipy's maximum_position (a sort)
    best = np.full(int(label_of.max()) + 1, -np.inf)
    np.maximum.at(best, label_of, value)
    candidates = np.flatnonzero((value == best[label_of]) & (label_of > 0))
    found, first = np.unique(label_of[candidates], return_index=True)
    deepest = np.stack(np.unravel_index(candidates[first], fragments.shape), axis=1)
    names = np.ravel_multi_index(tuple((deepest + offset).T), shape).astype(np.uint64) + 1
    lookup = np.zeros(len(best), dtype=np.uint64)
    lookup[found] = names
    return lookup[label_of].reshape(fragments.shape)


class AgglomerateStage(_SegmentationStage):
    """The statistics of the voxel pairs each block owns (`region_merging.boundary_statistics`),
    additive, so that `finish` merges the whole graph as one: the result equals waterz's
    in-memory agglomeration of the same fragments."""

    name: ClassVar[str] = "agglomerate"

    fragments_key: str
    fragments_context_nm: tuple[int, int, int]
    merge_function: str
    _affs: object = PrivateAttr(None)
    _fragments: object = PrivateAttr(None)
    _store: object = PrivateAttr(None)

    def context(self) -> Coordinate:
        return nm(self.voxel_size)  # the pairs across the lower faces: one voxel

    def key(self) -> str:
        return stage_key(stage="agglomerate", code=CODE_VERSION, fragments=self.fragments_key,
                         merge_function=self.merge_function, **self.geometry(self.fragments_context_nm))

    def outputs(self) -> list:
        return [GraphOutput(self.graph_url, self.sample, f"edges/{self.merge_function}", derived=("statistics",))]

    @contextmanager
    def opened(self):
        self._affs = open_array(self.container, self.affs_dataset)
        self._fragments = open_array(self.container, FRAGMENTS)
        with open_graph_store(self.graph_url, self.sample) as self._store:
            yield self

    def process(self, block):
        vs = self._affs.voxel_size
        index = block_index(block.write_roi, self.total_roi(), self.block_size())
        # the context reaches one voxel below the block: the pairs across its lower faces
        read_roi = block.read_roi.intersect(self._affs.roi)
        affs = as_float_affinities(self._affs[read_roi][:3])
        fragments = self._fragments[read_roi]
        statistics = boundary_statistics(affs, fragments, voxel_slices(block.write_roi, read_roi, vs))
        self._store.write_statistics(index, statistics)

    def finish(self, summary: dict) -> dict:
        start = time.perf_counter()
        with open_graph_store(self.graph_url, self.sample) as store:
            statistics = store.read_statistics()
            scores = edge_scores(statistics, self.merge_function)
            store.clear_edges(self.merge_function)
            for chunk, begin in enumerate(range(0, len(statistics), EDGES_PER_ROW)):
                end = begin + EDGES_PER_ROW
                store.write_edges(self.merge_function, chunk,
                                  Edges(statistics.u[begin:end], statistics.v[begin:end], scores[begin:end]))
        return {**summary, "edges": len(statistics), "merge_seconds": round(time.perf_counter() - start, 3)}


class RelabelStage(_SegmentationStage):
    """Each threshold's segmentation: the filled fragments mapped through its LUT."""

    name: ClassVar[str] = "relabel"
    independent_outputs: ClassVar[bool] = True  # a threshold's segmentation is made alone

    edges_key: str
    fragments_context_nm: tuple[int, int, int]
    merge_function: str
    thresholds: tuple[float, ...]
    _filled: object = PrivateAttr(None)
    _luts: dict | None = PrivateAttr(None)
    _outputs: dict | None = PrivateAttr(None)

    def _output_key(self, threshold: float) -> str:
        return stage_key(stage="relabel", code=CODE_VERSION, edges=self.edges_key, threshold=threshold,
                         **self.geometry(self.fragments_context_nm))

    def key(self) -> str:
        return stage_key(keys=[self._output_key(t) for t in self.thresholds])

    def _luts_dir(self) -> Path:
        return Path(self.container) / LUTS / self.merge_function

    def outputs(self) -> list[ArrayOutput]:
        return [
            ArrayOutput(
                segmentation_dataset(self.merge_function, t), self.total_roi(), nm(self.voxel_size), "uint64",
                self.chunk_shape,
                attrs={"threshold": t, "merge_function": self.merge_function, "lut": str(lut_path(self._luts_dir(), t)),
                       "fragments": f"{self.container}/{FILLED_FRAGMENTS}", "graph": redact(self.graph_url)},
                key=self._output_key(t),
            )
            for t in self.thresholds
        ]

    def check(self) -> None:
        for t in self.thresholds:
            path = lut_path(self._luts_dir(), t)
            if not path.is_file() or str(np.load(path)["key"]) != self.edges_key:
                raise VolumeError(f"{path}: no lookup table for the current region graph; run find-segments first")

    @contextmanager
    def opened(self):
        self._filled = open_array(self.container, FILLED_FRAGMENTS)
        self._luts, self._outputs = {}, {}
        for t in self.thresholds:
            dataset = segmentation_dataset(self.merge_function, t)
            if dataset in self.writing:
                self._luts[t] = read_lut(lut_path(self._luts_dir(), t))
                self._outputs[t] = open_array(self.container, self.writing[dataset], mode="r+")
        yield self

    def process(self, block):
        mapper = LutMapper(self._filled[block.write_roi])
        for threshold, output in self._outputs.items():
            output[block.write_roi] = mapper.apply(*self._luts[threshold])


def _check_affinities_dataset(container: Path, dataset: str):
    affs = open_array(container, dataset)
    if len(affs.shape) != 4 or affs.shape[0] < 3:
        raise VolumeError(
            f"{container}/{dataset}: expected affinities (3 channels, z, y, x), found shape {tuple(affs.shape)}"
        )
    return affs


class BlockwiseSegmentation:
    """The segmentation stages of one volume, built from its config: each runnable on its
    own (the Prefect tasks run them one by one) or all in order (`segment_blockwise`).
    `one_block`: the whole volume as one block, run in this process (`segment_volume`, the
    small-volume path and validation); its region graph is a SQLite file beside the volume
    unless `graph_url` names another.

    Every stage's key derives from its inputs, so a stage can tell whether its result is
    up to date without the earlier stages having run in this process."""

    def __init__(self, config, container, affs_dataset: str = PRED_AFFS, graph_url: str | None = None,
                 settings: RunSettings | None = None, segmentation=None, one_block: bool = False):
        self.container = Path(container).resolve()
        self.affs_dataset = affs_dataset
        seg = segmentation or config.segmentation
        self.settings = settings or RunSettings.from_config(config)
        self.merge_function = seg.merge_function
        scoring_function(self.merge_function)  # unknown names fail before any work
        affs = _check_affinities_dataset(self.container, affs_dataset)
        check_writable(self.container)
        self.roi, self.voxel_size = affs.roi, affs.voxel_size
        vs = self.voxel_size
        chunk_nm = None
        if one_block:
            self.settings = replace(self.settings, in_process=True)
            block_size, fragments_context = self.roi.shape, Coordinate((0,) * vs.dims)
            chunk_nm = tuple(Coordinate(one_block_chunks(block_size / vs)) * vs)
            graph_url = graph_url or default_graph_url(self.container)
        else:
            block_size = Coordinate(config.segmentation_block_nm)
            fragments_context = Coordinate(config.fragments_context_nm)
        if any(x % v for size in (block_size, fragments_context) for x, v in zip(size, vs)):
            raise VolumeError(
                f"{self.container}/{affs_dataset}: voxel size {tuple(vs)} nm does not divide the block size "
                f"{tuple(block_size)} / fragments context {tuple(fragments_context)} nm of the config"
            )
        # credentials travel by environment, never inside what is persisted or described
        self.graph_url = credentials_to_environment(graph_url or config.blockwise.graph or default_graph_url(self.container))
        common = dict(container=str(self.container), affs_dataset=affs_dataset, graph_url=self.graph_url,
                      sample=sample_name(self.container), roi=roi_field(self.roi), voxel_size=tuple(vs),
                      block_nm=tuple(block_size), chunk_nm=chunk_nm)
        self.fragments_stage = FragmentsStage(
            **common, context_nm=tuple(fragments_context), fragments_in_xy=config.fragments_in_xy(seg),
            min_seed_distance=seg.min_seed_distance, filter_fragments=seg.filter_fragments)
        self._common = {**common, "fragments_context_nm": tuple(fragments_context)}

    @property
    def sample(self) -> str:
        return self.fragments_stage.sample

    # keys: what each stage's result depends on
    @property
    def fragments_key(self) -> str:
        return self.fragments_stage.key()

    def agglomerate_stage(self) -> AgglomerateStage:
        return AgglomerateStage(**self._common, fragments_key=self.fragments_key, merge_function=self.merge_function)

    def edges_key(self) -> str:
        return self.agglomerate_stage().key()

    def relabel_stage(self, thresholds: Sequence[float]) -> RelabelStage:
        return RelabelStage(**self._common, edges_key=self.edges_key(), merge_function=self.merge_function,
                            thresholds=tuple(sorted(float(t) for t in check_thresholds(thresholds))))

    def fragments(self) -> dict:
        return run_stage(self.fragments_stage, self.settings)

    def agglomerate(self) -> dict:
        return run_stage(self.agglomerate_stage(), self.settings)

    def relabel(self, thresholds: Sequence[float]) -> dict:
        return run_stage(self.relabel_stage(thresholds), self.settings)

    def find_segments(self, thresholds: Sequence[float]) -> dict:
        """Connected components of the merged graph per threshold → one LUT each (one
        process: the whole graph)."""
        start = time.perf_counter()
        with output_lock(self.container, "segmentation"):
            stage = self.agglomerate_stage()
            key = stage.key()
            edges = stage.outputs()[0]
            if not edges.complete(key):
                raise VolumeError(
                    f"{self.container}: the region graph {redact(self.graph_url)} has no complete agglomeration "
                    f"for these fragments ({self.merge_function}); run the agglomerate stage first"
                )
            with open_graph_store(self.graph_url, self.sample) as store:
                nodes = store.read_nodes()
                edges = store.read_edges(self.merge_function)
            thresholds = check_thresholds(thresholds)
            luts = segment_luts(nodes.ids, edges.u, edges.v, edges.merge_score, thresholds)
            paths = write_luts(self.container / LUTS / self.merge_function, nodes.ids, luts, key=key)
        return {
            "stage": "find_segments", "nodes": len(nodes), "edges": len(edges),
            "segments": {t: int(lut.max(initial=0)) for t, lut in luts.items()},
            "seconds": round(time.perf_counter() - start, 3), "luts": paths, "key": key,
        }

    # what each stage has committed for the current inputs: a fingerprint, or None when
    # the stage must run (cache layers put it into their keys)
    def fragments_done(self) -> str | None:
        return committed(self.fragments_stage)

    def edges_done(self) -> str | None:
        return committed(self.agglomerate_stage())

    def luts_done(self, thresholds: Sequence[float]) -> str | None:
        key = self.edges_key()
        parts = []
        for t in sorted(float(t) for t in thresholds):
            path = lut_path(self.container / LUTS / self.merge_function, t)
            try:
                if str(np.load(path)["key"]) != key:
                    return None
            except (OSError, KeyError, ValueError):
                return None
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return stage_key(luts=parts)

    def relabel_done(self, thresholds: Sequence[float]) -> str | None:
        return committed(self.relabel_stage(thresholds))

    def segmentation_datasets(self, thresholds: Sequence[float]) -> dict[float, Path]:
        return {float(t): self.container / segmentation_dataset(self.merge_function, t) for t in sorted(thresholds)}


def segment_blockwise(
    config,
    container,
    affs_dataset: str = PRED_AFFS,
    graph_url: str | None = None,
    thresholds: Sequence[float] | None = None,
    settings: RunSettings | None = None,
    segmentation=None,
    one_block: bool = False,
) -> dict:
    """fragments → agglomerate → find segments → relabel for a volume of any size.

    Writes `volumes/fragments`, the region graph (nodes + edges for the merge function),
    `luts/<merge_function>/<threshold>.npz` and `volumes/segmentation/<merge_function>/<threshold>`
    in `container`. Returns per-stage summaries and the written datasets."""
    job = BlockwiseSegmentation(config, container, affs_dataset, graph_url, settings, segmentation, one_block)
    thresholds = check_thresholds(thresholds or (segmentation or config.segmentation).thresholds)
    stages = {"fragments": job.fragments(), "agglomerate": job.agglomerate()}
    found = job.find_segments(thresholds)
    stages["find_segments"] = {k: v for k, v in found.items() if k != "luts"}
    stages["relabel"] = job.relabel(thresholds)
    return {
        "graph": redact(job.graph_url),
        "stages": stages,
        "fragments": job.container / FRAGMENTS,
        "luts": found["luts"],
        "segmentations": job.segmentation_datasets(thresholds),
    }


def segment_volume(
    config,
    container,
    affs_dataset: str = PRED_AFFS,
    thresholds: Sequence[float] | None = None,
    segmentation=None,
    graph_url: str | None = None,
) -> dict:
    """Segment a small volume in this process: the same stages as `segment_blockwise`, with
    the whole volume as their one block, so that what validation measures is what the
    blockwise path deploys. `segmentation`: settings other than the config's (validation
    sweeps them). Returns what `segment_blockwise` returns."""
    return segment_blockwise(config, container, affs_dataset, graph_url, thresholds,
                             RunSettings(in_process=True, progress=False), segmentation=segmentation, one_block=True)


__all__ = ["AgglomerateStage", "BlockwiseSegmentation", "FragmentsStage", "RelabelStage", "segment_blockwise",
           "segment_volume"]
