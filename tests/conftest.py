"""Shared fixtures: the shipped real EM volumes (gala, 10 nm FIB-SEM) and small configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsdflow.core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
GALA = ROOT / "data" / "gala"


@pytest.fixture(scope="session")
def gala_train() -> Path:
    return GALA / "gala_train.zarr"


@pytest.fixture(scope="session")
def gala_test() -> Path:
    return GALA / "gala_test.zarr"


# a network small enough for a few iterations per second on 2 CPU cores
TINY_NET = [
    "model.num_fmaps=4",
    "model.fmap_inc_factor=2",
    "model.input_shape=[52, 52, 52]",
    "training.precache_workers=1",
    "training.precache_size=2",
    "prediction.test_time_augmentation=false",
]


@pytest.fixture
def tiny_gala_config(tmp_path):
    def make(*overrides: str):
        return load_config("gala", [*TINY_NET, *overrides], workspace=tmp_path / "ws")

    return make


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mongodb_url():
    """A real MongoDB wire-protocol server over TCP: `LSDFLOW_TEST_MONGODB_URL` when set,
    else `nx-27017` started on a free loopback port for the session."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    import time

    import pymongo

    url = os.environ.get("LSDFLOW_TEST_MONGODB_URL")
    if url:
        yield url
        return
    executable = shutil.which("nx-27017") or str(Path(sys.executable).parent / "nx-27017")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="nx27017-")
    process = subprocess.Popen(
        [executable, "--db", "memory", "--host", "127.0.0.1", "-p", str(port),
         "--log-file", f"{workdir}/nx.log", "--pid-file", f"{workdir}/nx.pid"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"mongodb://127.0.0.1:{port}/lsdflow_test"
    deadline = time.monotonic() + 60
    while True:
        try:
            pymongo.MongoClient(url, serverSelectionTimeoutMS=500).admin.command("ping")
            break
        except pymongo.errors.PyMongoError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"nx-27017 did not start on port {port} (log: {workdir}/nx.log)") from None
            time.sleep(0.2)
    yield url
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=["sqlite", "mongodb"])
def graph_url(request, tmp_path):
    """Each graph-store test runs against SQLite and against the MongoDB server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'graph.db'}"
    return request.getfixturevalue("mongodb_url")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real (temporary) Prefect API for the session, its home and result storage in a
    temp dir."""
    import os

    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(home / "storage")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
