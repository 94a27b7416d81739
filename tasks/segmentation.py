"""The blockwise segmentation stages as Prefect tasks: fragments, agglomerate, find
segments, relabel. Each is cached on the key its core stage derives from what it depends
on (input fingerprints, parameters, code version), so a rerun on unchanged inputs
recomputes nothing and a new threshold recomputes only find-segments and relabel."""

from __future__ import annotations

from ..core.segment.blockwise import BlockwiseSegmentation
from ..core.io.graphstore import redact
from .cache_keys import stage_task
from .progress import blockwise_settings
from .references import ArrayRef, GraphRef, LutsRef
from .retry import retry_transient
from .run_names import logged_stage, task_run_name, thresholds as listed, volume_name

RETRIES = dict(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient, persist_result=True)


def _job(parameters) -> BlockwiseSegmentation:
    affs: ArrayRef = parameters["affs"]
    return BlockwiseSegmentation(parameters["config"], affs.container, affs.dataset, parameters.get("graph_url"))


def _thresholds_key(parameters) -> str:
    return ",".join(f"{float(t):g}" for t in sorted(parameters["thresholds"]))


@stage_task(name="fragments", cache_key_fn=lambda ctx, p: f"fragments-{_job(p).fragments_key}",
            committed=lambda p: _job(p).fragments_done(), timeout_seconds=24 * 3600,
            task_run_name=task_run_name("fragments", lambda p: volume_name(p["affs"])), **RETRIES)
def fragments(config, affs: ArrayRef, graph_url: str | None = None) -> GraphRef:
    job = BlockwiseSegmentation(config, affs.container, affs.dataset, graph_url,
                                blockwise_settings(config, "fragments", str(affs.container)))
    with logged_stage("fragments", volume=affs.container, ROI=affs.roi, graph=redact(job.graph_url)) as learned:
        summary = job.fragments()
        learned["blocks"] = summary.get("blocks", "up to date")
    return GraphRef(url=redact(job.graph_url), sample=job.sample, key=summary["key"])


@stage_task(name="agglomerate", cache_key_fn=lambda ctx, p: f"agglomerate-{_job(p).edges_key()}",
            committed=lambda p: _job(p).edges_done(), timeout_seconds=24 * 3600,
            task_run_name=task_run_name("agglomerate", lambda p: f"{volume_name(p['affs'])}, {p['config'].segmentation.merge_function}"),
            **RETRIES)
def agglomerate(config, affs: ArrayRef, graph: GraphRef, graph_url: str | None = None) -> GraphRef:
    job = BlockwiseSegmentation(config, affs.container, affs.dataset, graph_url,
                                blockwise_settings(config, "agglomerate", str(affs.container)))
    with logged_stage("agglomerate", volume=affs.container, merge_function=job.merge_function) as learned:
        summary = job.agglomerate()
        learned["edges"] = summary.get("edges", "up to date")
    return GraphRef(url=graph.url, sample=graph.sample, key=summary["key"])


@stage_task(name="find-segments", cache_key_fn=lambda ctx, p: f"find-segments-{_job(p).edges_key()}-{_thresholds_key(p)}",
            committed=lambda p: _job(p).luts_done(p["thresholds"]), timeout_seconds=3600,
            task_run_name=task_run_name("find-segments", lambda p: f"{volume_name(p['affs'])} at {listed(p['thresholds'])}"),
            **RETRIES)
def find_segments(config, affs: ArrayRef, graph: GraphRef, thresholds: list[float], graph_url: str | None = None) -> LutsRef:
    job = BlockwiseSegmentation(config, affs.container, affs.dataset, graph_url)
    with logged_stage("find-segments", volume=affs.container, thresholds=listed(thresholds)) as learned:
        found = job.find_segments(thresholds)
        learned["segments"] = found.get("segments")
    return LutsRef(directory=str(job.container / "luts" / job.merge_function),
                   thresholds=tuple(sorted(found["segments"])), key=found["key"])


@stage_task(name="relabel", cache_key_fn=lambda ctx, p: f"relabel-{_job(p).edges_key()}-{_thresholds_key(p)}",
            committed=lambda p: _job(p).relabel_done(p["thresholds"]), timeout_seconds=24 * 3600,
            task_run_name=task_run_name("relabel", lambda p: f"{volume_name(p['affs'])} at {listed(p['thresholds'])}"),
            **RETRIES)
def relabel(config, affs: ArrayRef, luts: LutsRef, thresholds: list[float], graph_url: str | None = None) -> list[ArrayRef]:
    job = BlockwiseSegmentation(config, affs.container, affs.dataset, graph_url,
                                blockwise_settings(config, "relabel", str(affs.container)))
    with logged_stage("relabel", volume=affs.container, thresholds=listed(thresholds)) as learned:
        learned["blocks"] = job.relabel(thresholds).get("blocks", "up to date")
    return [ArrayRef.of(job.container, f"volumes/segmentation/{job.merge_function}/{float(t):g}")
            for t in sorted(thresholds)]
