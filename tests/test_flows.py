"""The segment flow on a real Prefect API: cached reruns, partial recomputation, retries."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lsdflow.core.blockwise.runner import BlockwiseError
from lsdflow.core.config import load_config
from lsdflow.core.io.volumes import VolumeError, open_array, write_array
from lsdflow.core.segment.blockwise import FragmentsStage
from lsdflow.core.train.affinities import labels_to_affinities
from lsdflow.tasks.run_names import stage_of

# one prediction pass per tile: these tests are about orchestration, not the shipped setting
BLOCKS = ["blockwise.block_size_nm=[640, 640, 640]", "prediction.test_time_augmentation=false"]


@pytest.fixture
def volume(tmp_path, gala_test):
    container = tmp_path / "gala.zarr"
    shutil.copytree(gala_test, container)
    labels = open_array(container, "volumes/labels/neuron_ids")
    affs = labels_to_affinities(labels[labels.roi], [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
    write_array(container, "volumes/pred_affs", labels.roi, labels.voxel_size, (affs * 255).astype(np.uint8))
    return container


def _task_states(flow_state) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])))
    # task run names are "<stage>: <what it works on>"
    return {stage_of(run.name): run.state.name for run in runs}


def _materialized_assets(wanted: str, timeout: float = 60) -> dict[str, set[str]]:
    """Asset key -> keys of the assets it was made from, from the server's events (waits
    until `wanted` is among them: events reach the server asynchronously)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(event=EventNameFilter(prefix=["prefect.asset.materialization"])),
                                      limit=50)
        found = {}
        for event in page.events:
            related = {r.id for r in event.related if r.role == "asset"}
            found.setdefault(event.resource.id, set()).update(related)
        if wanted in found or time.monotonic() > deadline:
            return found
        time.sleep(1)


@pytest.mark.slow
def test_reruns_are_cached_and_a_new_threshold_recomputes_only_downstream(prefect_api, volume):
    from lsdflow.flows.segment import segment

    first = segment(config_name="gala", volume=str(volume), thresholds=[0.5], overrides=BLOCKS, return_state=True)
    assert first.is_completed()
    assert set(_task_states(first).values()) == {"Completed"}
    refs = first.result()
    assert refs[0].dataset == "volumes/segmentation/hist_quant_50/0.5"

    again = segment(config_name="gala", volume=str(volume), thresholds=[0.5], overrides=BLOCKS, return_state=True)
    assert set(_task_states(again).values()) == {"Cached"}

    changed = segment(config_name="gala", volume=str(volume), thresholds=[0.3], overrides=BLOCKS, return_state=True)
    states = _task_states(changed)
    assert states["fragments"] == "Cached" and states["agglomerate"] == "Cached"
    assert states["find-segments"] == "Completed" and states["relabel"] == "Completed"
    assert (volume / "volumes/segmentation/hist_quant_50/0.3").exists()


def test_transient_failures_are_retried_and_bad_input_is_not(prefect_api, volume, monkeypatch):
    from lsdflow.flows import segment as segment_flow
    from lsdflow.tasks import segment as segmentation

    calls = {"n": 0}
    original = FragmentsStage.prepare

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise BlockwiseError("stage 'fragments': 1 block(s) failed (injected)")
        return original(self)

    monkeypatch.setattr(FragmentsStage, "prepare", flaky)
    monkeypatch.setattr(segmentation, "fragments", segmentation.fragments.with_options(
        retry_delay_seconds=0, cache_key_fn=None, cache_policy=None, refresh_cache=True))
    state = segment_flow.segment(config_name="gala", volume=str(volume), thresholds=[0.5],
                                 overrides=[*BLOCKS, "segmentation.min_seed_distance=9"], return_state=True)
    assert state.is_completed() and calls["n"] == 2

    def bad(self):
        calls["n"] += 1
        raise VolumeError(f"{volume}/volumes/pred_affs: NaN affinities (injected)")

    calls["n"] = 0
    monkeypatch.setattr(FragmentsStage, "prepare", bad)
    state = segment_flow.segment(config_name="gala", volume=str(volume), thresholds=[0.5],
                                 overrides=[*BLOCKS, "segmentation.min_seed_distance=8"], return_state=True)
    assert state.is_failed() and calls["n"] == 1


@pytest.mark.slow
def test_process_acquisition_end_to_end_and_fully_cached_rerun(prefect_api, tmp_path, gala_test, monkeypatch):
    import time

    from lsdflow.flows.process_acquisition import process_acquisition

    volume = tmp_path / "acquisition.zarr"
    shutil.copytree(gala_test, volume)
    label_free = ["segmentation.threshold_criterion=lsd_disagreement", "segmentation.criterion_max_voxels=32768"]
    # the suite logs warnings only; this test reads the stages' info lines back from the server
    import logging

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    kwargs = dict(path=str(volume), config_name="gala", overrides=[*BLOCKS, *label_free], workspace=str(tmp_path / "ws"),
                  thresholds=[0.1, 0.2], data_roots=[str(tmp_path)])
    began = time.perf_counter()
    first = process_acquisition(**kwargs, return_state=True)
    first_seconds = time.perf_counter() - began
    assert first.is_completed(), first
    result = first.result()
    assert result["segmentations"] == ["volumes/segmentation/hist_quant_50/0.1", "volumes/segmentation/hist_quant_50/0.2"]
    assert result["best"]["voi_sum"] < 3.0
    assert 0 < result["input_shift"] < 0.05  # gala_test is like the model's training data
    assert set(_task_states(first)) == {"predict", "fragments", "agglomerate", "find-segments", "relabel",
                                        "choose-threshold", "estimate-quality", "evaluate"}
    # how good the segmentation in use is, estimated without labels, recorded with it
    from lsdflow.core.segment.quality_estimate import recorded

    estimate = result["quality_estimate"]
    assert estimate["threshold"] == result["chosen"]["threshold"] and estimate["tta_disagreement"] >= 0
    assert recorded(volume, "hist_quant_50")["verdict"] == estimate["verdict"]
    # the threshold chosen without labels, its criterion and quality estimate, scored too
    chosen = result["chosen"]
    assert chosen["threshold"] in (0.1, 0.2) and chosen["criterion"] == "lsd_disagreement"
    assert chosen["scores"]["threshold"] == chosen["threshold"] and 0 <= chosen["quality"]["affinity_uncertainty"] <= 1
    from lsdflow.core.segment.threshold_selection import recorded_choice

    assert recorded_choice(volume, "hist_quant_50")["threshold"] == chosen["threshold"]
    segmentation_asset = f"file://{volume}/volumes/segmentation/hist_quant_50/0.1"
    materialized = _materialized_assets(segmentation_asset)
    assert segmentation_asset in materialized
    assert f"file://{volume}/volumes/fragments" in materialized[segmentation_asset]  # lineage
    assert f"file://{volume}/volumes/raw" in materialized[f"file://{volume}/volumes/pred_affs"]
    # the acquisition's summary in the UI says how to look at it
    from prefect.artifacts import Artifact

    from lsdflow.tasks.artifacts import volume_key

    summary = Artifact.get(volume_key("acquisition", volume)).data
    assert f"lsdflow view {volume}" in summary and f"lsdflow export {volume}" in summary
    assert "gala_mtlsd.pt" in summary  # the model (no registry here: the config's checkpoint)
    # the model is upstream of the predictions
    model_file = load_config("gala").prediction.checkpoint.resolve()
    assert f"file://{model_file}" in materialized[f"file://{volume}/volumes/pred_affs"]
    # readable names, progress with its key and block counts, a log line at each stage's start and end
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + 30
    while True:  # logs reach the server in batches
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(first.state_details.flow_run_id)
            logs = [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))]
        if any(m.startswith("evaluate: done") for m in logs) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert run.name == "acquisition.zarr · gala · gala_mtlsd.pt", run.name
    progress = Artifact.get(volume_key("progress-predict", volume))
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert "of acquisition.zarr: 100 %" in progress.description and "blocks done" in progress.description
    for stage in ("predict", "fragments", "agglomerate", "find-segments", "relabel", "evaluate"):
        assert any(m.startswith(f"{stage}: start (volume {volume}") for m in logs), (stage, logs)
        assert any(m.startswith(f"{stage}: done in") for m in logs), (stage, logs)

    began = time.perf_counter()
    again = process_acquisition(**kwargs, return_state=True)
    again_seconds = time.perf_counter() - began
    assert set(_task_states(again).values()) == {"Cached"}
    assert again_seconds < 0.5 * first_seconds, (again_seconds, first_seconds)


@pytest.mark.slow
def test_train_and_promote_flows(prefect_api, tmp_path, monkeypatch):
    """train → registered challenger; promote → evaluated on validation data, champion."""
    from lsdflow.flows.models import promote, train
    from lsdflow.registry.registration import resolve_model

    from .conftest import TINY_NET

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = str(tmp_path / "ws")
    uri = train(config_name="gala", iterations=2, overrides=TINY_NET, workspace=workspace)
    assert uri == "models:/mtlsd-gala/1"
    assert resolve_model("models:/mtlsd-gala@challenger", workspace).version == "1"
    decision = promote(config_name="gala", overrides=TINY_NET, workspace=workspace)
    assert decision["promoted"] and decision["reason"] == "no champion yet"
    champion = resolve_model("models:/mtlsd-gala@champion", workspace)
    assert champion.version == "1" and "voi_sum" in champion.tags
