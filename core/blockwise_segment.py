"""Segmentation of large volumes block by block: fragments → agglomerate → find segments
→ relabel, each stage a `process_block` for the one runner in `blockwise.py`.

- fragments: watershed in each block with context, cropped to the block; each fragment is
  named after its deepest voxel (`global_fragment_ids`), so the pieces of a fragment cut by
  a block face get the same id; one node per fragment and block (its part's center in nm
  and size) in the graph store.
- agglomerate: each block stores the boundary statistics of the voxel pairs it owns;
  then the whole region graph is merged in one process, as waterz would merge it in
  memory (`region_merging.py`), up to threshold 1 so that any threshold can be chosen
  later; every edge gets the score at which its fragments were joined, NaN if never.
- find segments: connected components per threshold over the whole graph → LUTs.
- relabel: LUTs applied to the filled fragments, which the fragments stage writes beside
  the fragments (boundary voxels given to the fragment they are least separated from, in
  the block's context): a relabel costs one lookup per threshold written.

Stages are keyed on what they depend on (see `staged_arrays.py`): a rerun with the same
inputs resumes where it stopped; new inputs recompute, keeping the old result until the
new one is complete.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate

from .blockwise import BlockProcessor, RunSettings, Stage, block_index, run_stage
from .find_segments import LutMapper, read_lut, segment_luts, write_luts
from .graphstore import Edges, Nodes, credentials_to_environment, default_graph_url, open_graph_store, redact, sample_name
from .region_merging import boundary_statistics, edge_scores
from .segment import as_float_affinities, fill_boundaries, fragments_with_depth, scoring_function
from .output_lock import output_lock
from .input_checks import check_thresholds, check_writable
from .staged_arrays import OutputArray, StagedArrays, committed_fingerprint, stage_key
from .volumes import VolumeError, container_identity, dataset_fingerprint, open_array, voxel_slices

CODE_VERSION = "blockwise-segment-5"  # bump when a stage's results change (5: boundaries filled by fragments)
FRAGMENTS = "volumes/fragments"  # 0 on boundary voxels: the region graph's nodes
FILLED_FRAGMENTS = "volumes/fragments_filled"  # the same, boundary voxels filled: what relabel maps
FILL_CONTEXT = Coordinate((8, 8, 8))  # voxels around a block that its boundary filling sees
EDGES_PER_ROW = 1_000_000  # merged edges are stored in rows (SQLite) / blocks (MongoDB) of this many


class _GraphBlock(BlockProcessor):
    """A stage reading affinities and fragments of a volume and writing its region graph."""

    def __init__(self, container, affs_dataset, fragments_dataset, graph_url, sample, total_roi, block_size):
        self.container = str(container)
        self.affs_dataset = affs_dataset
        self.fragments_dataset = fragments_dataset
        self.graph_url = graph_url
        self.sample = sample
        self.total_roi = total_roi
        self.block_size = Coordinate(block_size)


class FragmentsBlock(_GraphBlock):
    def __init__(self, container, affs_dataset, fragments_dataset, graph_url, sample, total_roi, block_size,
                 fragments_in_xy, min_seed_distance, filter_fragments, filled_dataset):
        super().__init__(container, affs_dataset, fragments_dataset, graph_url, sample, total_roi, block_size)
        self.filled_dataset = filled_dataset
        self.fragments_in_xy = fragments_in_xy
        self.min_seed_distance = min_seed_distance
        self.filter_fragments = filter_fragments

    def setup(self):
        self._h_affs = open_array(self.container, self.affs_dataset)
        self._h_fragments = open_array(self.container, self.fragments_dataset, mode="r+")
        self._h_filled = open_array(self.container, self.filled_dataset, mode="r+")
        self._h_store = open_graph_store(self.graph_url, self.sample)

    def process(self, block):
        vs = self._h_affs.voxel_size
        # only the data that exists: padding would put a boundary at the volume's faces
        # that the in-memory path does not see
        read_roi = block.read_roi.intersect(self._h_affs.roi)
        affs = as_float_affinities(self._h_affs[read_roi][:3])
        if not np.isfinite(affs).all():
            raise VolumeError(f"{self.container}/{self.affs_dataset}: NaN or infinite affinities in {read_roi}")
        fragments, depth = fragments_with_depth(affs, self.fragments_in_xy, self.min_seed_distance, self.filter_fragments)
        unique_ids = global_fragment_ids(fragments, depth, read_roi, self.total_roi, vs)
        write = voxel_slices(block.write_roi, read_roi, vs)
        # filled here, once, with FILL_CONTEXT of the block's context (boundaries are a few
        # voxels thick; the old relabel stage read as much): relabelling then only maps ids
        fill_roi = block.write_roi.grow(FILL_CONTEXT * vs, FILL_CONTEXT * vs).intersect(read_roi)
        near = voxel_slices(fill_roi, read_roi, vs)
        filled = fill_boundaries(unique_ids[near], affs[(slice(None), *near)])
        self._h_filled[block.write_roi] = filled[voxel_slices(block.write_roi, fill_roi, vs)]
        unique_ids = unique_ids[write]
        self._h_fragments[block.write_roi] = unique_ids
        # nodes: size and center (nm) of each fragment's part in this block
        ids, local = np.unique(unique_ids, return_inverse=True)
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
        index = block_index(block.write_roi, self.total_roi, self.block_size)
        self._h_store.write_nodes(index, Nodes(ids[keep], centers[keep], sizes[keep].astype(np.int64)))


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


class BoundaryStatisticsBlock(_GraphBlock):
    """The statistics of the voxel pairs a block owns (`region_merging.boundary_statistics`):
    additive, so the whole graph can be agglomerated as one (`BlockwiseSegmentation.agglomerate`)."""

    def setup(self):
        self._h_affs = open_array(self.container, self.affs_dataset)
        self._h_fragments = open_array(self.container, self.fragments_dataset)
        self._h_store = open_graph_store(self.graph_url, self.sample)

    def process(self, block):
        vs = self._h_affs.voxel_size
        index = block_index(block.write_roi, self.total_roi, self.block_size)
        # the context reaches one voxel below the block: the pairs across its lower faces
        read_roi = block.read_roi.intersect(self._h_affs.roi)
        affs = as_float_affinities(self._h_affs[read_roi][:3])
        fragments = self._h_fragments[read_roi]
        statistics = boundary_statistics(affs, fragments, voxel_slices(block.write_roi, read_roi, vs))
        self._h_store.write_statistics(index, statistics)


class RelabelBlock(BlockProcessor):
    """Each threshold's segmentation: the filled fragments mapped through its LUT."""

    def __init__(self, container, filled_dataset, luts: dict[float, str], outputs: dict[float, str]):
        self.container = str(container)
        self.filled_dataset = filled_dataset
        self.luts = luts
        self.outputs = outputs

    def setup(self):
        self._h_filled = open_array(self.container, self.filled_dataset)
        self._h_luts = {t: read_lut(path) for t, path in self.luts.items()}
        self._h_outputs = {t: open_array(self.container, d, mode="r+") for t, d in self.outputs.items()}

    def process(self, block):
        mapper = LutMapper(self._h_filled[block.write_roi])
        for threshold, output in self._h_outputs.items():
            output[block.write_roi] = mapper.apply(*self._h_luts[threshold])


def _check_affinities_dataset(container: Path, dataset: str):
    affs = open_array(container, dataset)
    if len(affs.shape) != 4 or affs.shape[0] < 3:
        raise VolumeError(
            f"{container}/{dataset}: expected affinities (3 channels, z, y, x), found shape {tuple(affs.shape)}"
        )
    return affs


def _exclusive(stage_method):
    """Run a stage under the container's segmentation lock (`output_lock.py`)."""

    @functools.wraps(stage_method)
    def run(self, *args, **kwargs):
        with output_lock(self.container, "segmentation"):
            return stage_method(self, *args, **kwargs)

    return run


class BlockwiseSegmentation:
    """The four segmentation stages of one volume, each runnable on its own (the Prefect
    tasks run them one by one) or all in order (`segment_blockwise`).

    Every stage's key derives from its inputs, so a stage can tell whether its result is
    up to date without the earlier stages having run in this process."""

    def __init__(self, config, container, affs_dataset: str = "volumes/pred_affs", graph_url: str | None = None,
                 settings: RunSettings | None = None):
        self.container = Path(container).resolve()
        self.affs_dataset = affs_dataset
        seg = config.segmentation
        bw = config.blockwise
        self.settings = settings or RunSettings(bw.workers, bw.retries, bw.block_timeout_s, bw.launcher)
        self.merge_function = seg.merge_function
        scoring_function(self.merge_function)  # unknown names fail before any work
        self.fragments_in_xy = config.fragments_in_xy()
        self.min_seed_distance = seg.min_seed_distance
        self.filter_fragments = seg.filter_fragments
        affs = _check_affinities_dataset(self.container, affs_dataset)
        check_writable(self.container)
        self.roi, self.voxel_size = affs.roi, affs.voxel_size
        self.block_size = Coordinate(config.segmentation_block_nm)
        self.fragments_context = Coordinate(config.fragments_context_nm)
        vs = self.voxel_size
        if any(x % v for size in (self.block_size, self.fragments_context) for x, v in zip(size, vs)):
            raise VolumeError(
                f"{self.container}/{affs_dataset}: voxel size {tuple(vs)} nm does not divide the block size "
                f"{tuple(self.block_size)} / fragments context {tuple(self.fragments_context)} nm of the config"
            )
        self.chunk_shape = tuple(self.block_size / vs)
        # credentials travel by environment, never inside what is persisted or pickled
        self.graph_url = credentials_to_environment(graph_url or bw.graph or default_graph_url(self.container))
        self.sample = sample_name(self.container)
        self.geometry = {"block": tuple(self.block_size),
                         "fragments_context": tuple(self.fragments_context), "roi": str(self.roi)}

    # keys: what each stage's result depends on
    @property
    def fragments_key(self) -> str:
        return stage_key(
            stage="fragments", code=CODE_VERSION, container=container_identity(self.container),
            affs=dataset_fingerprint(self.container, self.affs_dataset),
            fragments_in_xy=self.fragments_in_xy, min_seed_distance=self.min_seed_distance,
            filter_fragments=self.filter_fragments, **self.geometry,
        )

    def edges_key(self, fragments_key: str | None = None) -> str:
        return stage_key(stage="agglomerate", code=CODE_VERSION, fragments=fragments_key or self.fragments_key,
                         merge_function=self.merge_function, **self.geometry)

    def _stage(self, name, process_block, tracking_dir, context=None) -> Stage:
        context = Coordinate((0,) * self.roi.dims) if context is None else context  # relabel reads no context
        return Stage(name, self.roi, self.block_size, context, process_block,
                     tracking_dir, log_dir=self.container / ".lsdflow" / "logs" / name)

    @_exclusive
    def fragments(self) -> dict:
        key = self.fragments_key
        attrs = {"affinities": f"{self.container}/{self.affs_dataset}", "graph": redact(self.graph_url)}
        staged = StagedArrays(
            self.container,
            [OutputArray(FRAGMENTS, self.roi, self.voxel_size, "uint64", self.chunk_shape, attrs=attrs),
             OutputArray(FILLED_FRAGMENTS, self.roi, self.voxel_size, "uint64", self.chunk_shape,
                         attrs={**attrs, "fragments": f"{self.container}/{FRAGMENTS}"})],
            key,
        )
        with open_graph_store(self.graph_url, self.sample) as store:
            if store.get_meta("fragments_key") == key and staged.complete():
                return {"stage": "fragments", "up_to_date": True, "key": key}
            if store.get_meta("fragments_key") != key:
                # new fragments: the old graph describes other fragments
                store.clear_nodes()
                for mf in store.merge_functions():
                    store.clear_edges(mf)
                store.set_meta("fragments_key", key)
                for output in staged.outputs:
                    shutil.rmtree(self.container / staged.partial(output), ignore_errors=True)
        partials = staged.prepare()
        summary = run_stage(self._stage("fragments", FragmentsBlock(
            self.container, self.affs_dataset, partials[FRAGMENTS], self.graph_url, self.sample, self.roi,
            self.block_size, self.fragments_in_xy, self.min_seed_distance, self.filter_fragments,
            partials[FILLED_FRAGMENTS],
        ), staged.tracking_dir, context=self.fragments_context), self.settings)
        staged.commit()
        return {**summary, "key": key}

    @_exclusive
    def agglomerate(self) -> dict:
        """Boundary statistics block by block, then one merge of the whole graph: the
        result equals waterz's in-memory agglomeration of the same fragments."""
        import time

        key = self.edges_key()
        mf = self.merge_function
        tracking = self.container / ".lsdflow" / f"agglomerate-{mf}-{key}"
        with open_graph_store(self.graph_url, self.sample) as store:
            if store.get_meta(f"edges_complete/{mf}") == key:
                return {"stage": "agglomerate", "up_to_date": True, "key": key}
            if store.get_meta(f"edges_key/{mf}") != key:
                store.clear_edges(mf)
                store.clear_statistics()
                shutil.rmtree(tracking, ignore_errors=True)
                store.set_meta(f"edges_key/{mf}", key)
        for stale in tracking.parent.glob(f"agglomerate-{mf}-*"):
            if stale != tracking:
                shutil.rmtree(stale, ignore_errors=True)
        summary = run_stage(self._stage("agglomerate", BoundaryStatisticsBlock(
            self.container, self.affs_dataset, FRAGMENTS, self.graph_url, self.sample, self.roi,
            self.block_size,
        ), tracking, context=self.voxel_size), self.settings)  # the pairs across the lower faces: one voxel
        start = time.perf_counter()
        with open_graph_store(self.graph_url, self.sample) as store:
            statistics = store.read_statistics()
            scores = edge_scores(statistics, mf)
            store.clear_edges(mf)
            for chunk, begin in enumerate(range(0, len(statistics), EDGES_PER_ROW)):
                end = begin + EDGES_PER_ROW
                store.write_edges(mf, chunk, Edges(statistics.u[begin:end], statistics.v[begin:end], scores[begin:end]))
            store.set_meta(f"edges_complete/{mf}", key)  # last: a killed merge is redone
        shutil.rmtree(tracking, ignore_errors=True)
        return {**summary, "edges": len(statistics), "merge_seconds": round(time.perf_counter() - start, 3), "key": key}

    @_exclusive
    def find_segments(self, thresholds: Sequence[float]) -> dict:
        import time

        start = time.perf_counter()
        key = self.edges_key()
        with open_graph_store(self.graph_url, self.sample) as store:
            if store.get_meta(f"edges_complete/{self.merge_function}") != key:
                raise VolumeError(
                    f"{self.container}: the region graph {redact(self.graph_url)} has no complete agglomeration "
                    f"for these fragments ({self.merge_function}); run the agglomerate stage first"
                )
            nodes = store.read_nodes()
            edges = store.read_edges(self.merge_function)
        thresholds = check_thresholds(thresholds)
        luts = segment_luts(nodes.ids, edges.u, edges.v, edges.merge_score, thresholds)
        paths = write_luts(self.container / "luts" / self.merge_function, nodes.ids, luts, key=key)
        return {
            "stage": "find_segments", "nodes": len(nodes), "edges": len(edges),
            "segments": {t: int(lut.max(initial=0)) for t, lut in luts.items()},
            "seconds": round(time.perf_counter() - start, 3), "luts": paths, "key": key,
        }

    def _relabel_outputs(self, thresholds: Sequence[float]) -> list[OutputArray]:
        from .find_segments import lut_path

        edges_key = self.edges_key()
        luts_dir = self.container / "luts" / self.merge_function
        return [
            OutputArray(
                f"volumes/segmentation/{self.merge_function}/{t:g}", self.roi, self.voxel_size, "uint64",
                self.chunk_shape,
                attrs={"threshold": t, "merge_function": self.merge_function, "lut": str(lut_path(luts_dir, t)),
                       "fragments": f"{self.container}/{FILLED_FRAGMENTS}", "graph": redact(self.graph_url)},
                key=stage_key(stage="relabel", code=CODE_VERSION, edges=edges_key, threshold=t, **self.geometry),
            )
            for t in sorted(float(t) for t in thresholds)
        ]

    # what each stage has committed for the current inputs: a fingerprint, or None when
    # the stage must run (cache layers put it into their keys)
    def fragments_done(self) -> str | None:
        key = self.fragments_key
        with open_graph_store(self.graph_url, self.sample) as store:
            if store.get_meta("fragments_key") != key:
                return None
        return committed_fingerprint(self.container, {FRAGMENTS: key, FILLED_FRAGMENTS: key})

    def edges_done(self) -> str | None:
        key = self.edges_key()
        with open_graph_store(self.graph_url, self.sample) as store:
            return key if store.get_meta(f"edges_complete/{self.merge_function}") == key else None

    def luts_done(self, thresholds: Sequence[float]) -> str | None:
        from .find_segments import lut_path

        key = self.edges_key()
        parts = []
        for t in sorted(float(t) for t in thresholds):
            path = lut_path(self.container / "luts" / self.merge_function, t)
            try:
                if str(np.load(path)["key"]) != key:
                    return None
            except (OSError, KeyError, ValueError):
                return None
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return stage_key(luts=parts)

    def relabel_done(self, thresholds: Sequence[float]) -> str | None:
        return committed_fingerprint(self.container, {o.dataset: o.key for o in self._relabel_outputs(thresholds)})

    @_exclusive
    def relabel(self, thresholds: Sequence[float]) -> dict:
        from .find_segments import lut_path

        edges_key = self.edges_key()
        luts_dir = self.container / "luts" / self.merge_function
        outputs = self._relabel_outputs(check_thresholds(thresholds))
        missing = [o for o in outputs if not StagedArrays(self.container, [o], o.key).complete()]
        if not missing:
            return {"stage": "relabel", "up_to_date": True}
        for o in missing:
            path = lut_path(luts_dir, o.attrs["threshold"])
            if not path.is_file() or str(np.load(path)["key"]) != edges_key:
                raise VolumeError(f"{path}: no lookup table for the current region graph; run find-segments first")
        staged = StagedArrays(self.container, missing, stage_key(keys=[o.key for o in missing]))
        partials = staged.prepare()
        summary = run_stage(self._stage("relabel", RelabelBlock(
            self.container, FILLED_FRAGMENTS,
            {float(o.attrs["threshold"]): o.attrs["lut"] for o in missing},
            {float(o.attrs["threshold"]): partials[o.dataset] for o in missing},
        ), staged.tracking_dir), self.settings)
        staged.commit()
        return summary

    def segmentation_datasets(self, thresholds: Sequence[float]) -> dict[float, Path]:
        return {float(t): self.container / f"volumes/segmentation/{self.merge_function}/{float(t):g}"
                for t in sorted(thresholds)}


def segment_blockwise(
    config,
    container,
    affs_dataset: str = "volumes/pred_affs",
    graph_url: str | None = None,
    thresholds: Sequence[float] | None = None,
    settings: RunSettings | None = None,
) -> dict:
    """fragments → agglomerate → find segments → relabel for a volume of any size.

    Writes `volumes/fragments`, the region graph (nodes + edges for the merge function),
    `luts/<merge_function>/<threshold>.npz` and `volumes/segmentation/<merge_function>/<threshold>`
    in `container`. Returns per-stage summaries and the written datasets."""
    job = BlockwiseSegmentation(config, container, affs_dataset, graph_url, settings)
    thresholds = check_thresholds(thresholds or config.segmentation.thresholds)
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


__all__ = ["BoundaryStatisticsBlock", "BlockwiseSegmentation", "FragmentsBlock", "RelabelBlock", "segment_blockwise"]
