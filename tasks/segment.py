"""The blockwise segmentation stages as Prefect tasks: fragments, agglomerate, relabel
(each `stage_tasks.blockwise_task` of its core stage) and find segments (one process over
the whole graph). Each is cached on the key its stage derives from what it depends on, so
a rerun on unchanged inputs recomputes nothing and a new threshold recomputes only
find-segments and relabel."""

from __future__ import annotations

from ..core.blockwise.outputs import stage_key
from ..core.io.graphstore import redact
from ..core.io.layout import LUTS, segmentation_dataset
from ..core.segment.blockwise import AgglomerateStage, BlockwiseSegmentation, FragmentsStage, RelabelStage
from .cache_keys import stage_task
from .references import ArrayRef, GraphRef, LutsRef
from .run_names import logged_stage, task_run_name, volume_name
from .run_names import thresholds as listed
from .stage_tasks import RETRIES, blockwise_task


def _job(config, affs: ArrayRef, graph_url: str | None) -> BlockwiseSegmentation:
    return BlockwiseSegmentation(config, affs.container, affs.dataset, graph_url)


def fragments_stage(config, affs: ArrayRef, graph_url: str | None = None) -> FragmentsStage:
    return _job(config, affs, graph_url).fragments_stage


def agglomerate_stage(config, affs: ArrayRef, graph: GraphRef, graph_url: str | None = None) -> AgglomerateStage:
    return _job(config, affs, graph_url).agglomerate_stage()


def relabel_stage(config, affs: ArrayRef, luts: LutsRef, thresholds: list[float],
                  graph_url: str | None = None) -> RelabelStage:
    return _job(config, affs, graph_url).relabel_stage(thresholds)


fragments = blockwise_task(
    fragments_stage, describe=lambda p: volume_name(p["affs"]),
    result=lambda stage, summary: GraphRef(url=redact(stage.graph_url), sample=stage.sample, key=summary["key"]))
agglomerate = blockwise_task(
    agglomerate_stage, describe=lambda p: f"{volume_name(p['affs'])}, {p['config'].segmentation.merge_function}",
    result=lambda stage, summary: GraphRef(url=redact(stage.graph_url), sample=stage.sample, key=summary["key"]))
relabel = blockwise_task(
    relabel_stage, describe=lambda p: f"{volume_name(p['affs'])} at {listed(p['thresholds'])}",
    result=lambda stage, summary: [ArrayRef.of(stage.container, segmentation_dataset(stage.merge_function, t))
                                   for t in stage.thresholds])


def _find_segments_key(parameters) -> str:
    job = _job(parameters["config"], parameters["affs"], parameters.get("graph_url"))
    return f"find-segments-{stage_key(edges=job.edges_key(), thresholds=sorted(map(float, parameters['thresholds'])))}"


@stage_task(name="find-segments", cache_key_fn=lambda ctx, p: _find_segments_key(p),
            committed=lambda p: _job(p["config"], p["affs"], p.get("graph_url")).luts_done(p["thresholds"]),
            timeout_seconds=3600,
            task_run_name=task_run_name("find-segments", lambda p: f"{volume_name(p['affs'])} at {listed(p['thresholds'])}"),
            **RETRIES)
def find_segments(config, affs: ArrayRef, graph: GraphRef, thresholds: list[float], graph_url: str | None = None) -> LutsRef:
    """Segments per threshold over the whole region graph (one process, not blockwise)."""
    job = _job(config, affs, graph_url)
    with logged_stage("find-segments", volume=affs.container, thresholds=listed(thresholds)) as learned:
        found = job.find_segments(thresholds)
        learned["segments"] = found.get("segments")
    return LutsRef(directory=str(job.container / LUTS / job.merge_function),
                   thresholds=tuple(sorted(found["segments"])), key=found["key"])
