"""One acquisition, one announcement (defect 5): lsdflow's outputs written into a Zarr
acquisition (or beside it) never announce it again; a change of its inputs does; the
watcher's record lives in the workspace, not in the landing directory."""

from __future__ import annotations

import shutil

import numpy as np
import zarr

from lsdflow.core.acquisitions import default_record, describe, mark_announced, new_acquisitions
from lsdflow.core.volumes import open_array, write_array


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
