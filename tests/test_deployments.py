"""A real `prefect server`, every deployment served, a volume dropped into the landing
directory, the watcher run: the event triggers process-acquisition, which segments it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from .conftest import free_port


def _wait_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(url) from None
            time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def _api(api: str, path: str, body: dict | None = None):
    """A call to the Prefect REST API. Over plain HTTP, so that no Prefect client state
    bound to this short-lived server stays in the test process."""
    import json

    request = urllib.request.Request(
        f"{api}/{path}", data=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_event_from_the_watcher_triggers_process_acquisition(tmp_path, gala_test):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    landing = tmp_path / "landing"
    landing.mkdir()
    # the served flows use the gala config with one prediction pass per tile (the shipped
    # config's test-time augmentation makes blockwise prediction 8x slower; it is tested
    # on its own in test_blockwise_predict)
    from lsdflow.core.config import load_config

    one_pass = tmp_path / "gala-one-pass.json"
    one_pass.write_text(load_config("gala", ["prediction.test_time_augmentation=false"]).model_dump_json())
    env = {
        **os.environ,
        "LSDFLOW_CONFIG": str(one_pass),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": api,
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "prefect" / "storage"),
        "LSDFLOW_LANDING": str(landing),
        "LSDFLOW_WATCH_MINUTES": "60",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={k: v for k, v in env.items() if k != "PREFECT_API_URL"}, cwd=tmp_path, start_new_session=True,
        stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT,
    )
    served = None
    try:
        _wait_http(f"{api}/health", server, 180)
        served = subprocess.Popen(
            [sys.executable, "-m", "lsdflow.deployments.serve"], env=env, cwd=tmp_path, start_new_session=True,
            stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while not _api(api, "deployments/filter", {"deployments": {"name": {"any_": ["process-acquisition"]}}}):
            assert served.poll() is None, (logs / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "deployments were not served"
            time.sleep(1)
        time.sleep(5)  # let the trigger's automation reach the event pipeline

        shutil.copytree(gala_test, landing / "new_volume.zarr")
        watch = [sys.executable, "-m", "lsdflow.flows.cli", "run", "watch-acquisitions", str(landing), "--settle-seconds", "0"]
        first = subprocess.run(watch, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        path = str((landing / "new_volume.zarr").resolve())
        assert path in first.stdout
        again = subprocess.run(watch, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and path not in again.stdout  # never announced twice

        deadline = time.monotonic() + 420
        while True:
            runs = [r for r in _api(api, "flow_runs/filter", {"sort": "EXPECTED_START_TIME_DESC", "limit": 50})
                    if r.get("deployment_id") and (r.get("parameters") or {}).get("path") == path]
            if runs and runs[0]["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert served.poll() is None, (logs / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no finished triggered run; runs: {runs}"
            time.sleep(2)
        assert runs[0]["state"]["type"] == "COMPLETED", (logs / "serve.log").read_text()[-5000:]
        segmentation = landing / "new_volume.zarr" / "volumes" / "segmentation" / "hist_quant_50"
        assert sorted(p.name for p in segmentation.iterdir() if not p.name.startswith("."))
    finally:
        if served is not None:
            _stop(served)
        _stop(server)


def test_prefect_yaml_entrypoints_load():
    """Every deployment of deployments/prefect.yaml points at a flow that loads."""
    from pathlib import Path

    import yaml
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in spec["deployments"]}
    assert pools == {"gpu", "cpu"}
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert flow.name == deployment["name"] or deployment["name"] in ("train", "evaluate", "promote")
