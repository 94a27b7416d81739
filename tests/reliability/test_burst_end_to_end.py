"""A burst of acquisitions on the served platform (a real `prefect server`, every deployment
served), end to end: every acquisition dropped into the landing directory at once, HDF5
and Zarr, is announced by the watcher, triggers one `process-acquisition` run through the
automation (none lost, none twice) and has its segmentation.

The suite drops LSDFLOW_TEST_BURST acquisitions (default 4: every run executes the whole
pipeline, ~30 s each on 2 CPU cores); `make test-burst` drops 100."""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import pytest
import zarr
from funlib.geometry import Roi

from lsdflow.core.config import load_config
from lsdflow.core.io.acquisitions import output_dir
from lsdflow.core.io.volumes import open_array, write_array

from ..served_platform import api_call, served_platform

pytestmark = pytest.mark.slow

BURST = int(os.environ.get("LSDFLOW_TEST_BURST", "4"))
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def test_a_burst_of_acquisitions_is_processed_exactly_once_end_to_end(tmp_path, gala_test):
    """N acquisitions at once (4 in `make test`, 100 in `make test-burst`): N triggered runs,
    one per acquisition, all created by the automation and completed; N segmentations."""
    landing = tmp_path / "landing"
    landing.mkdir()
    workspace = tmp_path / "workspace"
    # the shipped gala model (an untrained one predicts no boundaries, so no fragments): the
    # segmentation is made at the threshold the model file carries, chosen on validation data
    config = load_config("gala", ["prediction.test_time_augmentation=false", "blockwise.workers=1"], workspace=workspace)
    config_file = tmp_path / "burst.json"
    config_file.write_text(config.model_dump_json())
    raw = open_array(gala_test, "volumes/raw")
    raw = raw[raw.roi]
    # two acquisitions at a time (2 CPU cores); Prefect's own polling and slot waiting
    # (shorter waits make 100 queued runs churn the server)
    environment = {"LSDFLOW_PROCESS_CONCURRENCY": "2"}
    with served_platform(tmp_path, landing, config_file, environment) as platform:
        # different small acquisitions (crops of real gala data) dropped at once: one Zarr
        # (processed in place), the others HDF5 (converted into the workspace)
        for i in range(BURST):
            z, y = i % 30, (i * 7) % 52
            crop = raw[z:z + 20, y:y + 48, 40:88]
            if i == 0:
                write_array(landing / "acquisition_000.zarr", "volumes/raw", Roi((0, 0, 0), (200, 480, 480)),
                            (10, 10, 10), crop)
                continue
            with h5py.File(landing / f"acquisition_{i:03d}.h5", "w") as f:
                f["volumes/raw"] = crop
        scans = [platform.watch(landing) for _ in range(2)]  # the second scan announces nothing
        assert [s.returncode for s in scans] == [0, 0], [s.stderr[-2000:] for s in scans]
        paths = sorted(str(p.resolve()) for p in landing.iterdir())
        assert all(p in scans[0].stdout for p in paths) and not any(p in scans[1].stdout for p in paths)

        deadline = time.monotonic() + 120 + 90 * BURST
        while True:
            runs = platform.deployment_runs("process-acquisition")
            finished = [r for r in runs if r["state"]["type"] in TERMINAL]
            if len(finished) >= BURST:
                break
            assert platform.served.poll() is None, platform.serve_log(3000)
            assert time.monotonic() < deadline, f"{len(finished)} of {BURST} runs finished, {len(runs)} started"
            time.sleep(5)
        time.sleep(10)  # no late duplicate run appears
        runs = platform.deployment_runs("process-acquisition")
        automations = {a["name"]: a["description"] for a in api_call(platform.api, "automations/filter", {})}

    # one run per acquisition, each triggered by its event, all completed
    assert sorted(r["parameters"]["path"] for r in runs) == paths, [r["parameters"] for r in runs]
    assert {r["state"]["type"] for r in runs} == {"COMPLETED"}, [
        (r["parameters"]["path"], r["state"]["type"], r["state"].get("message")) for r in runs]
    assert all(r["created_by"] and r["created_by"]["type"] == "AUTOMATION" for r in runs), runs[0]["created_by"]
    # the automation is named and described on the Automations page, the runs after their acquisition
    assert "new acquisition: process it" in automations and automations["new acquisition: process it"], automations
    assert sorted(r["name"].split(" · ")[0] for r in runs) == sorted(Path(p).name for p in paths)
    # and every acquisition has its segmentation: in the Zarr acquisition itself, the
    # others converted into the workspace; nothing else written into the landing directory
    for path in paths:
        container = Path(path) if path.endswith(".zarr") else output_dir(workspace, path) / f"{Path(path).stem}.zarr"
        threshold = zarr.open(str(container / "volumes/pred_affs"), mode="r").attrs["best_threshold"]
        segmentation = open_array(container, f"volumes/segmentation/hist_quant_50/{threshold:g}")
        assert segmentation.roi == open_array(container, "volumes/raw").roi
        assert segmentation[segmentation.roi].max() > 0
    assert len(list((workspace / "acquisitions").iterdir())) == BURST
    assert sorted(str(p.resolve()) for p in landing.iterdir()) == paths
