"""The `segment` flow: affinities → fragments → agglomerate → find segments → relabel."""

from __future__ import annotations

from prefect import flow

from ..core.config import load_config
from ..core.io.layout import PRED_AFFS
from ..tasks import segment as segment_tasks
from ..tasks.credentials import use_graph_credentials
from ..tasks.references import ArrayRef


@flow(name="segment", flow_run_name="segment {volume} · {config_name}",
      description="Fragments, agglomeration, segments and relabelling of predicted affinities, block by block.")
def segment(config_name: str, volume: str, affs_dataset: str = PRED_AFFS,
            thresholds: list[float] | None = None, graph_url: str | None = None,
            overrides: list[str] | None = None, graph_secret: str | None = None,
            graph_user: str | None = None) -> list[ArrayRef]:
    """Segment `volume`'s affinities block by block; returns the segmentation datasets.
    `graph_secret`: a Prefect Secret block with the graph store's password."""
    use_graph_credentials(graph_url, graph_secret, graph_user)
    config = load_config(config_name, overrides or [])
    thresholds = thresholds or list(config.segmentation.thresholds)
    affs = ArrayRef.of(volume, affs_dataset)
    graph = segment_tasks.fragments(config, affs, graph_url)
    graph = segment_tasks.agglomerate(config, affs, graph, graph_url)
    luts = segment_tasks.find_segments(config, affs, graph, thresholds, graph_url)
    return segment_tasks.relabel(config, affs, luts, thresholds, graph_url)
