"""`process-acquisition`: a new volume → segmentation with the champion, scored when it
has ground truth. Every step is a cached task: rerunning on unchanged input recomputes
nothing."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from ..core.config import load_config
from ..core.io.acquisitions import check_inside_roots, output_dir
from ..core.io.acquisitions import data_roots as acquisition_roots
from ..core.io.intensity import describe_shift
from ..core.io.layout import PRED_AFFS, PRED_LSDS
from ..core.io.volumes import dataset_exists
from ..core.predict.attributes import recorded_input_shift
from ..core.segment.threshold_selection import candidate_thresholds
from ..registry.registration import resolve_prediction_model
from ..tasks import segment as segment_tasks
from ..tasks.artifacts import publish_summary, volume_key
from ..tasks.assets import array_asset, materializing, ref_asset
from ..tasks.convert import convert_acquisition
from ..tasks.credentials import use_graph_credentials
from ..tasks.evaluate import evaluate
from ..tasks.predict import predict
from ..tasks.quality_estimate import estimate_quality
from ..tasks.references import ArrayRef
from ..tasks.run_names import rename_flow_run
from ..tasks.stage_tasks import assets
from ..tasks.threshold_selection import choose_threshold


def _run_name() -> str:
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    return f"{Path(parameters['path']).name} · {parameters.get('config_name', 'gala')}"


def model_label(lineage: dict, model_file) -> str:
    """A registered model as "name v3", a model file by its name."""
    if lineage.get("model_name"):
        return f"{lineage['model_name']} v{lineage['model_version']}"
    return Path(str(model_file)).name


def model_asset(lineage: dict, model_file) -> str:
    """The model as a Prefect asset: its registered version, else its file."""
    if lineage.get("model_name"):
        return f"mlflow://models/{lineage['model_name']}/versions/{lineage['model_version']}"
    return array_asset(str(Path(str(model_file)).resolve().parent), Path(str(model_file)).name)


@flow(name="process-acquisition", flow_run_name=_run_name,
      description="A new acquisition end to end: convert (when not Zarr), predict with the champion, fragments, "
                  "agglomerate, segments, threshold (chosen without labels when configured), a label-free quality "
                  "estimate, evaluation when it has labels; a summary with how to view and export it.")
def process_acquisition(path: str, config_name: str = "gala", model: str | None = None,
                        thresholds: list[float] | None = None, graph_url: str | None = None,
                        overrides: list[str] | None = None, output: str | None = None,
                        workspace: str | None = None, data_roots: list[str] | None = None,
                        graph_secret: str | None = None, graph_user: str | None = None) -> dict:
    """convert (when not Zarr) → predict → fragments → agglomerate → find segments → relabel
    → evaluate (when the volume has labels) → a summary in the UI. `graph_secret`: a
    Prefect Secret block with the graph store's password."""
    use_graph_credentials(graph_url, graph_secret, graph_user)
    config = load_config(config_name, overrides or [], workspace)
    # a path from an event must not point anywhere else on the machine: roots required
    source = check_inside_roots(path, acquisition_roots(data_roots))
    # the landing directory belongs to the data transfer: graph, report and converted
    # volumes go to the workspace (a Zarr acquisition takes its predictions inside)
    outputs = output_dir(config.resolved_workspace, source)
    if source.suffix == ".zarr":
        container = source
        raw = ArrayRef.of(container, config.data.raw_dataset)
    else:
        container = Path(output) if output else outputs / f"{source.name.split('.')[0]}.zarr"
        raw = convert_acquisition(str(source), str(container), list(config.data.voxel_size))
    graph_url = graph_url or config.blockwise.graph or f"sqlite:///{outputs / 'graph.db'}"
    raw_asset = ref_asset(raw)
    model_file, lineage, described = resolve_prediction_model(model, config)
    rename_flow_run(f"{source.name} · {config.name} · {model_label(lineage, model_file)}")
    # the predictions' assets by name: building the predict stage here would load the model in the
    # flow, and a broken model must fail as the predict task
    pred_assets = [array_asset(raw.container, PRED_AFFS), array_asset(raw.container, PRED_LSDS)]
    # the model as resolved now (a version, or the file), so the task names what it used
    resolved = lineage.get("model_uri") or str(model_file)
    predictions = materializing(predict, pred_assets, [raw_asset, model_asset(lineage, model_file)])(config, raw, resolved)
    affs = next(p for p in predictions if p.dataset.endswith("pred_affs"))
    thresholds = thresholds or _thresholds(affs, config)
    # each stage declares what it writes (its outputs as assets) and what it read
    fragments_stage = segment_tasks.fragments.build_stage(config=config, affs=affs, graph_url=graph_url)
    fragment_assets = assets(fragments_stage)  # fragments, filled fragments, the graph's nodes
    graph = materializing(segment_tasks.fragments, fragment_assets, [ref_asset(affs)])(config, affs, graph_url)
    agglomerate_stage = segment_tasks.agglomerate.build_stage(config=config, affs=affs, graph=graph, graph_url=graph_url)
    edge_assets = assets(agglomerate_stage)
    graph = materializing(segment_tasks.agglomerate, edge_assets, [fragment_assets[0], ref_asset(affs)])(
        config, affs, graph, graph_url)
    luts = segment_tasks.find_segments(config, affs, graph, thresholds, graph_url)
    relabel_stage = segment_tasks.relabel.build_stage(config=config, affs=affs, luts=luts, thresholds=thresholds,
                                                     graph_url=graph_url)
    segmentations = materializing(segment_tasks.relabel, assets(relabel_stage), [*fragment_assets[:2], *edge_assets])(
        config, affs, luts, thresholds, graph_url)
    result = {"volume": str(container), "model": described, "segmentations": [s.dataset for s in segmentations],
              "graph": graph.url,
              "input_shift": recorded_input_shift(affs.container, affs.dataset)}
    choice = None
    if config.segmentation.threshold_criterion != "validation" and len(segmentations) > 1:
        choice = choose_threshold(config, affs, segmentations)
        result["chosen"] = {k: choice[k] for k in ("threshold", "criterion", "quality")}
    # a label-free estimate of how good the segmentation in use is (core/segment/quality_estimate.py)
    used = choice["threshold"] if choice is not None else (thresholds[0] if len(thresholds) == 1 else None)
    if used is not None and config.segmentation.quality_max_voxels:
        estimate = estimate_quality(config, raw, affs, float(used))
        result["quality_estimate"] = {k: estimate[k] for k in ("tta_disagreement", "threshold", "verdict")}
    if dataset_exists(container, config.data.labels_dataset):
        scores = evaluate(config, segmentations, ArrayRef.of(container, config.data.labels_dataset),
                          str(outputs / "evaluation"))
        result["best"] = scores["best"]
        if choice is not None:
            result["chosen"]["scores"] = next(
                (r for r in scores.get("scores", []) if r["threshold"] == choice["threshold"]), None)
    publish_summary(volume_key("acquisition", container), f"acquisition {container.name}", _summary(result, raw, graph))
    return result


def _summary(result: dict, raw: ArrayRef, graph) -> dict:
    rows = {"volume": result["volume"], "ROI (nm)": raw.roi, "model": result["model"],
            "segmentations": ", ".join(s.rsplit("/", 2)[-2] + " " + s.rsplit("/", 1)[-1] for s in result["segmentations"]),
            "region graph": graph.url, "input shift (label-free)": describe_shift(result.get("input_shift"))}
    if "chosen" in result:
        chosen, quality = result["chosen"], result["chosen"]["quality"]
        rows["chosen threshold"] = f"{chosen['threshold']:g} (label-free, by {chosen['criterion']})"
        rows["label-free quality"] = (f"affinity uncertainty {quality['affinity_uncertainty']:.3f}, "
                                      f"{chosen['criterion']} {quality['disagreement']:.4f}")
        if chosen.get("scores"):
            rows["VOI sum at the chosen threshold"] = f"{chosen['scores']['voi_sum']:.4f}"
    if "quality_estimate" in result:
        estimate = result["quality_estimate"]
        value = estimate["tta_disagreement"]
        rows["quality estimate (label-free)"] = estimate["verdict"] + (
            "" if value is None else f"; test-time-augmentation disagreement {value:.3f} at threshold "
                                     f"{estimate['threshold']:g} (core/segment/quality_estimate.py)")
    if "best" in result:
        rows["best VOI sum"] = f"{result['best']['voi_sum']:.4f} at {result['best']['threshold']:g}"
    # where people look at segmentations: neuroglancer, and OME-Zarr for other viewers
    rows["view in neuroglancer"] = f"lsdflow view {result['volume']}"
    rows["export as OME-Zarr"] = f"lsdflow export {result['volume']} {Path(result['volume']).with_suffix('.ome.zarr')}"
    return rows


def _thresholds(affs: ArrayRef, config) -> list[float]:
    return candidate_thresholds(affs.container, affs.dataset, config)
