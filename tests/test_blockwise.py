"""The blockwise runner and blockwise segmentation on real gala data and a synthetic volume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

from lsdflow.cli.main import main
from lsdflow.core.blockwise.runner import (
    BlockwiseError,
    RunSettings,
    block_index,
    run_stage,
)
from lsdflow.core.blockwise.stage import BlockwiseStage
from lsdflow.core.config import load_config
from lsdflow.core.evaluate.metrics import segmentation_scores
from lsdflow.core.io.volumes import open_array, write_array
from lsdflow.core.segment.blockwise import segment_blockwise
from lsdflow.core.segment.watershed import agglomerate, fragments_from_affinities
from lsdflow.core.train.affinities import labels_to_affinities
from lsdflow.core.train.synthetic import synthetic_affinities, synthetic_labels

from .conftest import ROOT

NEIGHBORHOOD = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
QUIET = RunSettings(workers=2, progress=False)
GALA_BLOCKS = ["blockwise.block_size_nm=[640, 640, 640]"]  # 8 blocks on gala_test


class RecordStage(BlockwiseStage):
    """Writes one file per processed block; fails blocks listed in a flag file."""

    name: ClassVar[str] = "record"
    out_dir: str
    flag: str
    tracking: str

    def total_roi(self) -> Roi:
        return Roi((0, 0, 0), (40, 40, 10))

    def block_size(self) -> Coordinate:
        return Coordinate(10, 10, 10)

    def context(self) -> Coordinate:
        return Coordinate(2, 2, 2)

    def key(self) -> str:
        return "record"

    def tracking_dir(self) -> Path:
        return Path(self.tracking)

    def process(self, block):
        index = block_index(block.write_roi, self.total_roi(), self.block_size())
        if os.path.exists(self.flag):
            failing = {int(i) for i in Path(self.flag).read_text().split()}
            if index in failing:
                if index % 2:
                    os._exit(3)  # a worker killed mid-block
                raise RuntimeError(f"injected failure in block {index}")
        Path(self.out_dir, f"{index}-{uuid.uuid4().hex}").touch()


def _record_stage(tmp_path, flag) -> RecordStage:
    (tmp_path / "out").mkdir(exist_ok=True)
    return RecordStage(container=str(tmp_path), out_dir=str(tmp_path / "out"), flag=str(flag),
                       tracking=str(tmp_path / "tracking"))


def _processed(tmp_path) -> list[int]:
    return sorted(int(p.name.split("-")[0]) for p in (tmp_path / "out").iterdir())


def test_failed_blocks_fail_the_stage_and_a_rerun_does_only_the_missing_ones(tmp_path):
    flag = tmp_path / "fail"
    flag.write_text("4 7")
    with pytest.raises(BlockwiseError, match="record") as error:
        run_stage(_record_stage(tmp_path, flag), RunSettings(workers=2, retries=1, progress=False))
    assert "failed" in str(error.value) or "abandoned" in str(error.value)
    first = _processed(tmp_path)
    assert 4 not in first and 7 not in first
    flag.unlink()
    summary = run_stage(_record_stage(tmp_path, flag), RunSettings(workers=2, progress=False))
    assert summary["blocks"] == 16 and summary["failed"] == 0
    assert summary["resumed"] == len(set(first)) and summary["processed"] == 16 - len(set(first))
    assert sorted(set(_processed(tmp_path))) == list(range(16))
    assert len(_processed(tmp_path)) == 16  # no block done twice
    again = run_stage(_record_stage(tmp_path, flag), RunSettings(workers=1, progress=False))
    assert again["processed"] == 0 and again["resumed"] == 16


def test_cluster_launcher_template_starts_workers_that_connect_back(tmp_path):
    # a stand-in for `sbatch --wait --wrap {command}`: the same command run by a shell
    settings = RunSettings(workers=2, progress=False, launcher="sh -c {command}")
    summary = run_stage(_record_stage(tmp_path, tmp_path / "no-flag"), settings)
    assert summary["processed"] == 16 and sorted(_processed(tmp_path)) == list(range(16))


def test_process_roi_runs_the_same_blocks_in_this_process(tmp_path):
    """The in-memory path of a stage: every block of its ROI, in order, without daisy."""
    stage = _record_stage(tmp_path, tmp_path / "no-flag")
    stage.process_roi()
    assert _processed(tmp_path) == list(range(16))
    from lsdflow.core.blockwise.stage import load_stage

    assert load_stage(stage.describe()) == stage  # what a worker gets: the stage as JSON


@pytest.fixture(scope="module")
def gala_gt(tmp_path_factory, gala_test):
    """A copy of gala_test with ground-truth affinities as `volumes/pred_affs`."""
    root = tmp_path_factory.mktemp("gala_gt")
    container = root / "gala.zarr"
    shutil.copytree(gala_test, container)
    labels = open_array(container, "volumes/labels/neuron_ids")
    affs = labels_to_affinities(labels[labels.roi], NEIGHBORHOOD)
    write_array(container, "volumes/pred_affs", labels.roi, labels.voxel_size, (affs * 255).astype(np.uint8))
    return container


def _copy(container: Path, name: str) -> Path:
    target = container.parent / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(container, target, ignore=shutil.ignore_patterns("fragments", "segmentation", "luts", ".lsdflow"))
    return target


def _labels(container):
    a = open_array(container, "volumes/labels/neuron_ids")
    return a[a.roi]


def _segmentation(container, threshold, merge_function="hist_quant_50"):
    a = open_array(container, f"volumes/segmentation/{merge_function}/{threshold:g}")
    return a[a.roi]


def test_gala_ground_truth_blockwise_matches_in_memory_on_sqlite_and_mongodb(gala_gt, mongodb_url):
    config = load_config("gala", GALA_BLOCKS)
    labels = _labels(gala_gt)
    affs = open_array(gala_gt, "volumes/pred_affs")
    affs = affs[affs.roi]
    in_memory = agglomerate(affs, fragments_from_affinities(affs), [0.5])[0.5]

    on_sqlite = _copy(gala_gt, "sqlite.zarr")
    result = segment_blockwise(config, on_sqlite, thresholds=[0.5], settings=QUIET)
    assert result["stages"]["relabel"]["blocks"] >= 8
    assert result["graph"].startswith("sqlite:///")
    blockwise = _segmentation(on_sqlite, 0.5)
    assert segmentation_scores(labels, blockwise).voi_sum <= 0.05
    labelled = labels > 0
    assert segmentation_scores(in_memory[labelled], blockwise[labelled]).voi_sum <= 0.05

    on_mongo = _copy(gala_gt, "mongo.zarr")
    url = mongodb_url.rsplit("/", 1)[0] + f"/t{uuid.uuid4().hex[:8]}"
    assert main(["segment", "gala", str(on_mongo), "--blockwise", "--graph", url, "--thresholds", "0.5",
                 "--set", GALA_BLOCKS[0],
                 "--workers", "2", "--quiet"]) == 0
    assert np.array_equal(_segmentation(on_mongo, 0.5), blockwise)  # same result on either store
    attrs = open_array(on_mongo, "volumes/segmentation/hist_quant_50/0.5")
    assert attrs.roi == open_array(gala_gt, "volumes/pred_affs").roi


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """64 x 128 x 128 voxels of neuron-like labels: 32 blocks of 32^3."""
    root = tmp_path_factory.mktemp("synthetic")
    labels = synthetic_labels((64, 128, 128), 40, seed=1)
    roi = Roi((0, 0, 0), (640, 1280, 1280))
    containers = {}
    for name, noise, blur in (("gt", 0.0, 0.0), ("noisy", 0.1, 1.0)):
        container = root / f"{name}.zarr"
        affs = synthetic_affinities(labels, noise=noise, blur=blur)
        write_array(container, "volumes/labels/neuron_ids", roi, (10, 10, 10), labels)
        write_array(container, "volumes/pred_affs", roi, (10, 10, 10), (affs * 255).round().astype(np.uint8))
        containers[name] = container
    return labels, containers


@pytest.mark.parametrize("name", ["gt", "noisy"])
def test_synthetic_volume_blockwise_matches_in_memory(synthetic, name):
    labels, containers = synthetic
    config = load_config("gala", ["blockwise.block_size_nm=[320, 320, 320]"])
    threshold = 0.3
    result = segment_blockwise(config, containers[name], thresholds=[threshold], settings=QUIET)
    assert result["stages"]["fragments"]["blocks"] == 32
    blockwise = _segmentation(containers[name], threshold)
    affs = open_array(containers[name], "volumes/pred_affs")
    affs = affs[affs.roi]
    in_memory = agglomerate(affs, fragments_from_affinities(affs), [threshold])[threshold]
    labelled = labels > 0
    assert segmentation_scores(in_memory[labelled], blockwise[labelled]).voi_sum <= 0.05
    if name == "gt":
        assert segmentation_scores(labels, blockwise).voi_sum <= 0.05


def _done_blocks(tracking: Path) -> int:
    """Blocks daisy has marked done (its tracking keeps one byte per block)."""
    return sum(int(np.count_nonzero(np.fromfile(p, np.uint8))) for p in tracking.glob("blocks/done/c/**/*") if p.is_file())


def test_a_new_region_graph_store_for_finished_fragments_is_filled_again(gala_gt, tmp_path):
    """The fragments are complete in the container but the graph is in another store: the
    stage's outputs are made together, so the new store gets every node and the result is
    the same."""
    from lsdflow.core.io.graphstore import open_graph_store, sample_name

    config = load_config("gala", GALA_BLOCKS)
    container = _copy(gala_gt, "two_graphs.zarr")
    first, second = f"sqlite:///{tmp_path / 'first.db'}", f"sqlite:///{tmp_path / 'second.db'}"
    segment_blockwise(config, container, graph_url=first, thresholds=[0.5], settings=QUIET)
    reference = _segmentation(container, 0.5)
    again = segment_blockwise(config, container, graph_url=second, thresholds=[0.5], settings=QUIET)
    assert again["stages"]["fragments"]["processed"] == again["stages"]["fragments"]["blocks"]
    nodes = []
    for url in (first, second):
        with open_graph_store(url, sample_name(container)) as store:
            nodes.append(np.sort(store.read_nodes().ids))
    assert len(nodes[0]) and np.array_equal(*nodes)
    assert np.array_equal(_segmentation(container, 0.5), reference)


@pytest.mark.slow
def test_a_killed_run_resumes_and_gives_the_same_segmentation(gala_gt):
    overrides = ["blockwise.block_size_nm=[320, 320, 320]", "blockwise.workers=1"]
    reference = _copy(gala_gt, "reference.zarr")
    segment_blockwise(load_config("gala", overrides), reference, settings=QUIET)

    interrupted = _copy(gala_gt, "interrupted.zarr")
    script = (
        "from lsdflow.core.config import load_config; from lsdflow.core.blockwise.runner import RunSettings;"
        "from lsdflow.core.segment.blockwise import segment_blockwise;"
        f"segment_blockwise(load_config('gala', {overrides!r}), {str(interrupted)!r},"
        " settings=RunSettings(workers=1, progress=False))"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while True:  # kill the whole run (server and workers) part-way through agglomeration
            trackings = list((interrupted / ".lsdflow" / "blocks").glob("agglomerate-*"))
            if trackings and _done_blocks(trackings[0]) >= 5:
                break
            assert process.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (interrupted / "volumes/segmentation").exists()

    result = segment_blockwise(load_config("gala", overrides), interrupted, settings=QUIET)
    stages = result["stages"]
    assert stages["fragments"].get("up_to_date")
    agglomerate_stage = stages["agglomerate"]
    assert agglomerate_stage["resumed"] >= 5
    assert agglomerate_stage["resumed"] + agglomerate_stage["processed"] == agglomerate_stage["blocks"]
    for threshold in load_config("gala").segmentation.thresholds:
        assert np.array_equal(_segmentation(interrupted, threshold), _segmentation(reference, threshold))


def test_bad_affinities_fail_before_anything_is_written(tmp_path, gala_test):
    container = tmp_path / "bad.zarr"
    shutil.copytree(gala_test, container)
    labels = open_array(container, "volumes/labels/neuron_ids")
    two_channels = np.zeros((2, *labels.shape), np.uint8)
    write_array(container, "volumes/pred_affs", labels.roi, labels.voxel_size, two_channels)
    from lsdflow.core.io.volumes import VolumeError

    with pytest.raises(VolumeError, match="3 channels"):
        segment_blockwise(load_config("gala"), container, settings=QUIET)
    with pytest.raises(VolumeError, match="not found"):
        segment_blockwise(load_config("gala"), container, affs_dataset="volumes/missing", settings=QUIET)
    assert not (container / "volumes/fragments").exists()
    assert not (tmp_path / "bad.graph.db").exists()


@pytest.mark.slow
def test_shipped_model_affinities_blockwise_matches_in_memory_at_every_threshold(tmp_path, gala_test):
    """Real predicted affinities, 8 blocks: the blockwise agglomeration equals waterz in memory
    on the same fragments at every threshold, and the whole blockwise path stays close to the
    in-memory one down to the lowest threshold (fragments cut by block faces are stitched)."""
    from lsdflow.core.predict.blockwise import predict_volume

    container = tmp_path / "gala.zarr"
    shutil.copytree(gala_test, container)
    config = load_config("gala", [*GALA_BLOCKS, "prediction.test_time_augmentation=false"])  # one pass: 8x faster
    predict_volume(config, container, progress=False)
    affs = open_array(container, "volumes/pred_affs")
    affs = affs[affs.roi]
    thresholds = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
    in_memory = agglomerate(affs, fragments_from_affinities(affs), thresholds)
    segment_blockwise(config, container, thresholds=thresholds, settings=QUIET)
    fragments = open_array(container, "volumes/fragments")
    fragments = fragments[fragments.roi]
    same_fragments = agglomerate(affs, fragments, thresholds, fill=False)
    labels = _labels(container)
    labelled, on_fragments = labels > 0, fragments > 0
    for t in thresholds:
        blockwise = _segmentation(container, t)
        assert segmentation_scores(same_fragments[t][on_fragments], blockwise[on_fragments]).voi_sum == 0.0, t
        # measured 0.010 at 0.02, 0.004 at 0.05, <= 0.003 above (32 voxels of fragments context)
        assert segmentation_scores(in_memory[t][labelled], blockwise[labelled]).voi_sum <= 0.02, t


def test_stages_run_on_worker_processes_kept_between_them(tmp_path):
    """Local workers run in pooled processes that outlive a stage (no interpreter start and
    imports per stage); a pooled process that is gone is replaced, and the run still works."""
    def pooled_pids(where) -> set[int]:
        return {int(p.stem.removeprefix("pooled-")) for p in where.rglob("pooled-*.log")}

    for run in "abc":
        (tmp_path / run).mkdir()
    settings = RunSettings(workers=2, progress=False)
    first = run_stage(_record_stage(tmp_path / "a", tmp_path / "no-flag"), settings)
    assert first["processed"] == 16
    second = run_stage(_record_stage(tmp_path / "b", tmp_path / "no-flag"), settings)
    assert second["processed"] == 16
    a, b = pooled_pids(tmp_path / "a"), pooled_pids(tmp_path / "b")
    assert a and b and a & b, "the second stage ran on none of the first stage's processes"
    for pid in pooled_pids(tmp_path):
        os.kill(pid, signal.SIGKILL)
    third = run_stage(_record_stage(tmp_path / "c", tmp_path / "no-flag"), settings)
    assert third["processed"] == 16 and third["failed"] == 0
    assert sorted(_processed(tmp_path / "c")) == list(range(16))
