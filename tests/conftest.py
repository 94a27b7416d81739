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


# an untrained network of the shipped architecture, fast enough to predict whole volumes
TINY = ["model.num_fmaps=4", "model.fmap_inc_factor=2", "model.input_shape=[52, 52, 52]",
        "prediction.input_shape=[76, 76, 76]"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained tiny MTLSD as a model file: its outputs still depend on the input."""
    import torch

    from lsdflow.core.config import load_config
    from lsdflow.core.model.checkpoints import write_model_file
    from lsdflow.core.model.networks import build_model

    config = load_config("gala", TINY)
    torch.manual_seed(0)
    return write_model_file(build_model(config.model).state_dict(), config,
                            tmp_path_factory.mktemp("model") / "tiny.pt", 0)


@pytest.fixture
def tiny_gala_config(tmp_path):
    def make(*overrides: str):
        return load_config("gala", [*TINY_NET, *overrides], workspace=tmp_path / "ws")

    return make


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mongodb_server(port: int, db: str, workdir: str):
    """`nx-27017` (a MongoDB wire-protocol server) on a loopback port, storing in `db`
    (a SQLite file, or "memory"); returns the process once it answers a ping."""
    import shutil
    import subprocess
    import sys
    import time

    import pymongo

    executable = shutil.which("nx-27017") or str(Path(sys.executable).parent / "nx-27017")
    process = subprocess.Popen(
        [executable, "--db", db, "--host", "127.0.0.1", "-p", str(port),
         "--log-file", f"{workdir}/nx.log", "--pid-file", f"{workdir}/nx.pid"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with pymongo.MongoClient(f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=500) as client:
                client.admin.command("ping")
            return process
        except pymongo.errors.PyMongoError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"nx-27017 did not start on port {port} (log: {workdir}/nx.log)") from None
            time.sleep(0.2)


def stop_process(process) -> None:
    import subprocess

    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def mongodb_url():
    """A real MongoDB wire-protocol server over TCP: `LSDFLOW_TEST_MONGODB_URL` when set,
    else `nx-27017` started on a free loopback port for the session."""
    import os
    import shutil
    import tempfile

    url = os.environ.get("LSDFLOW_TEST_MONGODB_URL")
    if url:
        yield url
        return
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="nx27017-")
    process = start_mongodb_server(port, "memory", workdir)
    yield f"mongodb://127.0.0.1:{port}/lsdflow_test"
    stop_process(process)
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
