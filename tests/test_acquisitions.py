"""Landing-directory scanning: complete, new or changed acquisitions only."""

from __future__ import annotations

import time

import pytest

from lsdflow.core.io.acquisitions import check_inside_roots, mark_announced, new_acquisitions


def test_only_settled_new_or_changed_acquisitions_are_announced(tmp_path):
    landing = tmp_path / "landing"
    (landing / "a.zarr" / "volumes" / "raw").mkdir(parents=True)
    (landing / "a.zarr" / "volumes" / "raw" / "0.0.0").write_bytes(b"123")
    (landing / "notes.txt").write_text("not an acquisition")
    record = tmp_path / "seen.json"
    now = time.time()
    assert new_acquisitions(landing, record, settle_seconds=60, now=now) == []  # still being copied
    ready = new_acquisitions(landing, record, settle_seconds=60, now=now + 120)
    assert [a.path.name for a in ready] == ["a.zarr"]
    mark_announced(record, ready[0])
    assert new_acquisitions(landing, record, settle_seconds=60, now=now + 120) == []  # seen
    (landing / "a.zarr" / "volumes" / "raw" / "0.0.0").write_bytes(b"12345")  # content changed
    assert [a.path.name for a in new_acquisitions(landing, record, settle_seconds=0)] == ["a.zarr"]


def test_event_paths_must_lie_inside_the_data_roots(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    assert check_inside_roots(root / "v.zarr", [root]) == (root / "v.zarr").resolve()
    with pytest.raises(ValueError, match="outside the configured data roots"):
        check_inside_roots(root / ".." / "etc" / "v.zarr", [root])
