"""Data roots fail closed (defect 8): event payloads outside the roots, with `..` or
through a symlink are refused; no roots, an empty or relative root are refused; a
`:`-separated variable is split."""

from __future__ import annotations

import os

import pytest

from lsdflow.core.config import ConfigError
from lsdflow.core.io.acquisitions import check_inside_roots, data_roots


def test_roots_are_split_and_checked(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert data_roots([f"{a}{os.pathsep}{b}"]) == [a.resolve(), b.resolve()]  # one rendered template value
    assert data_roots(None, {"LSDFLOW_DATA_ROOTS": f"{a}{os.pathsep}{b}"}) == [a.resolve(), b.resolve()]
    for bad, message in [([""], "empty entry"), (None, "empty entry"), ([f"{a}{os.pathsep}"], "empty entry"),
                         (["relative/dir"], "absolute"), ([str(tmp_path / "missing")], "no such directory")]:
        with pytest.raises(ConfigError, match=message):
            data_roots(bad, {})


@pytest.mark.parametrize("path", ["/etc/passwd", "{root}/../outside.zarr", "{root}/link/secret.zarr"])
def test_paths_outside_the_roots_are_refused(tmp_path, path):
    root = tmp_path / "landing"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="outside the configured data roots"):
        check_inside_roots(path.format(root=root), [root])


def test_no_roots_refuses_every_path(tmp_path):
    with pytest.raises(ConfigError, match="no data roots"):
        check_inside_roots(tmp_path / "v.zarr", [])


def test_process_acquisition_without_roots_refuses_before_any_work(tmp_path, monkeypatch):
    from lsdflow.flows.process_acquisition import process_acquisition

    monkeypatch.delenv("LSDFLOW_DATA_ROOTS", raising=False)
    with pytest.raises(ConfigError, match="empty entry"):
        process_acquisition.fn(path="/etc/shadow.zarr")
    monkeypatch.setenv("LSDFLOW_DATA_ROOTS", str(tmp_path))
    with pytest.raises(ConfigError, match="outside the configured data roots"):
        process_acquisition.fn(path="/etc/shadow.zarr")
