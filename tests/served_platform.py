"""A real `prefect server` with every lsdflow deployment served (`lsdflow.deployments.serve`),
as a user runs the platform on one machine; helpers to read its state over the REST API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .conftest import free_port


def wait_http(url: str, process: subprocess.Popen, timeout: float) -> None:
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


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def api_call(api: str, path: str, body: dict | None = None):
    """A call to the Prefect REST API. Over plain HTTP, so that no Prefect client state
    bound to this short-lived server stays in the test process."""
    request = urllib.request.Request(
        f"{api}/{path}", data=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@dataclass
class Platform:
    api: str
    env: dict
    logs: Path
    served: subprocess.Popen

    def serve_log(self, chars: int = 5000) -> str:
        return (self.logs / "serve.log").read_text()[-chars:]

    def watch(self, landing: Path) -> subprocess.CompletedProcess:
        """One scan of the watcher, as its schedule runs it."""
        argv = [sys.executable, "-m", "lsdflow.cli", "run", "watch-acquisitions", str(landing),
                "--settle-seconds", "0"]
        return subprocess.run(argv, env=self.env, cwd=self.logs.parent, capture_output=True, text=True, timeout=600)

    def deployment_runs(self, name: str) -> list[dict]:
        """Every flow run of the deployment `name`, oldest first."""
        deployment = api_call(self.api, "deployments/filter", {"deployments": {"name": {"any_": [name]}}})[0]
        runs, offset = [], 0
        while True:
            page = api_call(self.api, "flow_runs/filter", {
                "flow_runs": {"deployment_id": {"any_": [deployment["id"]]}},
                "sort": "EXPECTED_START_TIME_ASC", "limit": 200, "offset": offset})
            runs += page
            offset += len(page)
            if len(page) < 200:
                return runs


@contextlib.contextmanager
def served_platform(tmp_path: Path, landing: Path, config_file: Path,
                    environment: dict | None = None) -> Iterator[Platform]:
    """`prefect server start` on a free port, then every deployment served with the dataset
    config `config_file` (a JSON config), the landing directory `landing` and `environment`."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "LSDFLOW_CONFIG": str(config_file),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": api,
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "prefect" / "storage"),
        "LSDFLOW_LANDING": str(landing),
        "LSDFLOW_WATCH_MINUTES": "600",  # scans are run by the test
        **(environment or {}),
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
        wait_http(f"{api}/health", server, 180)
        served = subprocess.Popen(
            [sys.executable, "-m", "lsdflow.deployments.serve"], env=env, cwd=tmp_path, start_new_session=True,
            stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while not api_call(api, "deployments/filter", {"deployments": {"name": {"any_": ["process-acquisition"]}}}):
            assert served.poll() is None, (logs / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "deployments were not served"
            time.sleep(1)
        time.sleep(5)  # let the trigger's automation reach the event pipeline
        yield Platform(api, env, logs, served)
    finally:
        if served is not None:
            stop(served)
        stop(server)
