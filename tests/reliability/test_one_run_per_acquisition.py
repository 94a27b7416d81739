"""One acquisition, one announcement (defect 5): lsdflow's outputs written into a Zarr
acquisition (or beside it) never announce it again; a change of its inputs does; the
watcher's record lives in the workspace, not in the landing directory."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from lsdflow.core.io.acquisitions import default_record, describe, mark_announced, new_acquisitions
from lsdflow.core.io.volumes import open_array, write_array


def test_outputs_written_into_an_acquisition_do_not_announce_it_again(tmp_path, gala_test):
    landing = tmp_path / "landing"
    landing.mkdir()
    acquisition = shutil.copytree(gala_test, landing / "new.zarr")
    record = default_record(landing, tmp_path / "workspace")
    assert not record.is_relative_to(landing)
    [ready] = new_acquisitions(landing, record, settle_seconds=0)
    mark_announced(record, ready)

    raw = open_array(acquisition, "volumes/raw")
    write_array(acquisition, "volumes/pred_affs", raw.roi, raw.voxel_size, np.zeros((3, *raw.shape), np.uint8))
    write_array(acquisition, "volumes/segmentation/hist_quant_50/0.1", raw.roi, raw.voxel_size,
                np.zeros(raw.shape, np.uint64))
    (acquisition / ".lsdflow" / "logs").mkdir(parents=True)
    (landing / "new.graph.db").write_bytes(b"graph")
    assert describe(acquisition).fingerprint == ready.fingerprint
    assert new_acquisitions(landing, record, settle_seconds=0) == []

    zarr.open(str(acquisition / "volumes/raw"), mode="r+")[0, 0, :10] = 7  # the microscope's data changed
    [changed] = new_acquisitions(landing, record, settle_seconds=0)
    assert changed.path == acquisition.resolve() and changed.fingerprint != ready.fingerprint
    assert sorted(p.name for p in landing.iterdir()) == ["new.graph.db", "new.zarr"]  # no record in the landing


def _announcements(landing, expected: int, timeout: float = 60) -> dict[str, int]:
    """Path -> how many `lsdflow.acquisition.created` events the Prefect server holds for
    it (events reach the server asynchronously: waits for `expected`, then a little more)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    from lsdflow.flows.watch_acquisitions import EVENT

    deadline, settled = time.monotonic() + timeout, None
    while True:
        counts: dict[str, int] = {}
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(event=EventNameFilter(name=[EVENT])), limit=50)
            while True:
                for event in page.events:
                    path = event.payload.get("path", "")
                    if path.startswith(str(landing.resolve())):
                        counts[path] = counts.get(path, 0) + 1
                if not page.next_page:
                    break
                page = client.read_events_page(page.next_page)
        if sum(counts.values()) >= expected:
            settled = settled or time.monotonic()
            if time.monotonic() - settled > 3:  # nothing more arrives
                return counts
        elif time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


@pytest.mark.slow
def test_a_burst_of_100_acquisitions_is_announced_exactly_once(prefect_api, tmp_path):
    """100 volumes dropped at once, four watcher runs at the same time (a slow scan
    overlapping the next scheduled ones): one event per acquisition, none lost, none twice."""
    import json
    import os
    import subprocess
    import sys
    import textwrap
    import time

    import h5py
    from prefect.settings import PREFECT_API_URL

    from lsdflow.flows.watch_acquisitions import watch_acquisitions

    landing = tmp_path / "landing"
    landing.mkdir()
    for i in range(100):
        with h5py.File(landing / f"acquisition_{i:03d}.h5", "w") as f:
            f["volumes/raw"] = np.full((4, 8, 8), i, np.uint8)
    record = tmp_path / "workspace" / "announced.json"
    go = tmp_path / "go"
    scan = textwrap.dedent(f"""
        import json, sys, time
        from pathlib import Path
        from lsdflow.flows.watch_acquisitions import watch_acquisitions
        while not Path({str(go)!r}).exists():
            time.sleep(0.01)
        print(json.dumps(watch_acquisitions({str(landing)!r}, {str(record)!r}, 0.0)))
    """)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    scans = [subprocess.Popen([sys.executable, "-c", scan], env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(4)]
    time.sleep(5)  # all four started and waiting
    go.touch()
    outputs = [s.communicate(timeout=300) for s in scans]
    assert [s.returncode for s in scans] == [0] * 4, [err[-2000:] for _, err in outputs]
    announced = [path for out, _ in outputs for path in json.loads(out.strip().splitlines()[-1])]
    assert len(announced) == 100 and len(set(announced)) == 100
    assert watch_acquisitions(str(landing), str(record), 0.0) == []  # the next scan: nothing new
    counts = _announcements(landing, 100)
    assert len(counts) == 100 and set(counts.values()) == {1}, sorted(counts.items())[:5]
    assert sorted(p.name for p in landing.iterdir()) == [f"acquisition_{i:03d}.h5" for i in range(100)]
