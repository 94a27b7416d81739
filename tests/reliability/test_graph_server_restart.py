"""Faults: the MongoDB-protocol server stopped in the middle of a stage and started again.
The blocks that failed meanwhile are retried, the stage completes, and the graph holds
exactly the nodes and edges of an uninterrupted run: none doubled, none missing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from ..conftest import free_port, start_mongodb_server, stop_process
from .conftest import BLOCKS, run_killed
from .test_crash_safety import _graph

pytestmark = pytest.mark.slow

# every worker pauses after its first block of the stage until the test has stopped the
# server; a write attempted while it is stopped leaves a mark, so that the test restarts the
# server only once a worker has met the outage
PAUSE_AFTER_FIRST_BLOCK = """
import time
from pathlib import Path
import lsdflow.core.segment.blockwise as m
import lsdflow.core.io.graphstore as g
_started, _stopped, _attempted = Path({started!r}), Path({stopped!r}), Path({attempted!r})
_real = m.{cls}.process
def process(self, block):
    _real(self, block)
    _started.touch()
    deadline = time.monotonic() + 120
    while not _stopped.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
m.{cls}.process = process
_real_write = g.MongoGraphStore.{write}
def write(self, *args, **kwargs):
    if _stopped.exists():
        _attempted.touch()
    return _real_write(self, *args, **kwargs)
g.MongoGraphStore.{write} = write
"""
STAGES = {"fragments": ("FragmentsStage", "write_nodes"), "agglomerate": ("AgglomerateStage", "write_statistics")}


def _segment(container: Path, graph: str) -> list[str]:
    return ["segment", "gala", str(container), "--blockwise", "--graph", graph, "--thresholds", "0.3", "0.5",
            "--workers", "2", "--quiet", *[a for s in BLOCKS for a in ("--set", s)]]


def _wait_for(path: Path, process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_graph_server_stopped_mid_stage_and_restarted_gives_the_uninterrupted_graph(stage, gala_copy, tmp_path):
    import subprocess
    import sys
    import textwrap

    from lsdflow.core.io.volumes import open_array

    reference = gala_copy("reference.zarr")
    reference_graph = f"sqlite:///{tmp_path / 'reference.db'}"
    assert run_killed("", _segment(reference, reference_graph), tmp_path).returncode == 0

    container = gala_copy("vol.zarr")
    port, db, workdir = free_port(), str(tmp_path / "server.db"), str(tmp_path)
    url = f"mongodb://127.0.0.1:{port}/lsdflow_restart"
    started, stopped, attempted = tmp_path / "started", tmp_path / "stopped", tmp_path / "attempted"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(PAUSE_AFTER_FIRST_BLOCK).format(
        started=str(started), stopped=str(stopped), attempted=str(attempted), cls=STAGES[stage][0],
        write=STAGES[stage][1]))
    server = start_mongodb_server(port, db, workdir)
    try:
        import os

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))}
        script = f"import sys\nfrom lsdflow.cli.main import main\nsys.exit(main({_segment(container, url)!r}))\n"
        run = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _wait_for(started, run)
        server.send_signal(signal.SIGKILL)  # the harshest stop: no shutdown of any kind
        server.wait()
        stopped.touch()
        _wait_for(attempted, run)
        time.sleep(5)  # longer than the store's 4 s server selection: that write fails
        server = start_mongodb_server(port, db, workdir)
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]
        # the outage was met (and survived) by a worker, not slept through
        assert "AutoReconnect" in err or "ServerSelectionTimeout" in err
        for ours, theirs in zip(_graph(url, container), _graph(reference_graph, reference)):
            assert len(ours) == len(theirs)
            assert np.array_equal(ours, theirs)
        for threshold in ("0.3", "0.5"):
            ours = open_array(container, f"volumes/segmentation/hist_quant_50/{threshold}")
            theirs = open_array(reference, f"volumes/segmentation/hist_quant_50/{threshold}")
            assert np.array_equal(ours[ours.roi], theirs[theirs.roi])
    finally:
        stop_process(server)
