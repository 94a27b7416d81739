"""A real `prefect server`, every deployment served, a volume dropped into the landing
directory, the watcher run: the event triggers process-acquisition, which segments it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.mark.slow
def test_event_from_the_watcher_triggers_process_acquisition(tmp_path, gala_test):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    landing = tmp_path / "landing"
    landing.mkdir()
    env = {
        **os.environ,
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
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while not client.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["process-acquisition"]))
            ):
                assert served.poll() is None, (logs / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "deployments were not served"
                time.sleep(1)
            time.sleep(5)  # let the trigger's automation reach the event pipeline

            shutil.copytree(gala_test, landing / "new_volume.zarr")
            from lsdflow.flows.watch_acquisitions import watch_acquisitions

            announced = watch_acquisitions(landing=str(landing), settle_seconds=0)
            assert announced == [str((landing / "new_volume.zarr").resolve())]
            assert watch_acquisitions(landing=str(landing), settle_seconds=0) == []  # never twice

            deadline = time.monotonic() + 420
            while True:
                runs = [r for r in client.read_flow_runs() if r.name and r.deployment_id
                        and r.parameters.get("path") == announced[0]]
                if runs and runs[0].state and runs[0].state.is_final():
                    break
                assert served.poll() is None, (logs / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"no completed triggered run; runs: {runs}"
                time.sleep(2)
            assert runs[0].state.is_completed(), (logs / "serve.log").read_text()[-5000:]
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
