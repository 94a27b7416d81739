"""Bad input: a clear `lsdflow: error:` naming the file, dataset or field and what was
expected, before any output is touched; never retried (defects 6 and 9)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from lsdflow.core.blockwise.runner import RunSettings
from lsdflow.core.config import load_config
from lsdflow.core.io.volumes import VolumeError, list_datasets, open_array, write_array
from lsdflow.core.segment.blockwise import segment_blockwise

from .conftest import BLOCKS, TINY, run_killed


def lsdflow(*argv, cwd=None, permissions_apply: bool = False) -> subprocess.CompletedProcess:
    """`lsdflow ARGV` in a subprocess. `permissions_apply`: when run as root, without the
    capabilities that let root ignore file permissions (so read-only means read-only)."""
    prefix = []
    if permissions_apply and os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv (util-linux): permissions cannot be tested")
        prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]
    return subprocess.run([*prefix, sys.executable, "-m", "lsdflow.cli", *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def _error(run: subprocess.CompletedProcess) -> str:
    """rc 2 and a last line `lsdflow: error: ...` (or argparse's usage error), not a
    traceback. (daisy's own log lines about failed blocks may come before it.)"""
    assert run.returncode == 2, (run.returncode, run.stderr[-3000:])
    assert "lsdflow: error:" in run.stderr or "usage:" in run.stderr, run.stderr[-3000:]
    return run.stderr


def _snapshot(container):
    """Every stored file with its size and mtime: proves nothing was touched."""
    return sorted((str(p.relative_to(container)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in container.rglob("*") if p.is_file())


@pytest.mark.parametrize("thresholds", [["-1"], ["2"], ["0.5", "nan"]])
def test_thresholds_outside_0_1_are_refused_before_any_output(gala_copy, thresholds):
    container = gala_copy()
    before = _snapshot(container)
    err = _error(lsdflow("segment", "gala", container, "--thresholds", *thresholds))
    assert "outside [0, 1]" in err
    assert _snapshot(container) == before


def test_thresholds_in_the_config_are_checked_too(gala_copy):
    container = gala_copy()
    err = _error(lsdflow("segment", "gala", container, "--blockwise", "--set", "segmentation.thresholds=[0.5, 3]"))
    assert "segmentation.thresholds" in err and "less than or equal to 1" in err
    err = _error(lsdflow("segment", "gala", container, "--set", "segmentation.thresholds=[]"))
    assert "segmentation.thresholds" in err


def test_zero_workers_is_refused(gala_copy):
    run = lsdflow("segment", "gala", gala_copy(), "--blockwise", "--workers", "0")
    assert run.returncode == 2 and "expected a positive whole number, got '0'" in run.stderr


def test_unknown_merge_function_fails_before_fragments_are_computed(gala_copy):
    container = gala_copy()
    before = _snapshot(container)
    err = _error(lsdflow("segment", "gala", container, "--set", 'segmentation.merge_function="nope"'))
    assert "unknown merge function 'nope'" in err
    assert _snapshot(container) == before


@pytest.mark.parametrize("blockwise", [False, True])
def test_an_all_zero_raw_volume_is_refused(gala_copy, tiny_model, blockwise):
    """An empty (or failed) acquisition: no predictions, no segmentation."""
    container = gala_copy(gt_affs=False)
    raw = open_array(container, "volumes/raw")
    write_array(container, "volumes/raw", raw.roi, raw.voxel_size, np.zeros(raw.shape, np.uint8))
    args = ["predict", "gala", container, "--model", tiny_model, *[a for s in [*TINY, *BLOCKS] for a in ("--set", s)]]
    err = _error(lsdflow(*args, *(["--blockwise", "--quiet"] if blockwise else ["--quiet"])))
    assert "volumes/raw" in err and "every voxel has intensity 0" in err
    assert not any(d.startswith("volumes/pred_") for d in list_datasets(container))


def _float_raw_with(container, value):
    raw = open_array(container, "volumes/raw")
    data = raw[raw.roi].astype(np.float32) / 255
    data[10, 20, 30] = value
    write_array(container, "volumes/raw", raw.roi, raw.voxel_size, data)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("blockwise", [False, True])
def test_nan_or_inf_in_raw_is_refused(gala_copy, tiny_model, value, blockwise):
    container = gala_copy(gt_affs=False)
    _float_raw_with(container, value)
    args = ["predict", "gala", container, "--model", tiny_model, *[a for s in [*TINY, *BLOCKS] for a in ("--set", s)]]
    err = _error(lsdflow(*args, *(["--blockwise", "--quiet"] if blockwise else ["--quiet"])))
    assert "volumes/raw" in err and "NaN or infinite" in err
    assert not any(d.startswith("volumes/pred_") for d in list_datasets(container))


@pytest.mark.parametrize("case", ["truncated", "garbage", "pickled code", "empty", "wrong network"])
def test_bad_model_files_give_a_clear_error_naming_the_file(gala_copy, tiny_model, tmp_path, case):
    import torch

    bad = tmp_path / "bad.pt"
    if case == "truncated":
        bad.write_bytes(tiny_model.read_bytes()[: tiny_model.stat().st_size // 2])
    elif case == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif case == "pickled code":
        torch.save({"model_state_dict": {}, "hook": subprocess.Popen}, bad)
    elif case == "empty":
        bad.write_bytes(b"")
    else:
        payload = torch.load(tiny_model, weights_only=True)
        payload["model_state_dict"] = {k: v[..., :1] for k, v in payload["model_state_dict"].items()}
        torch.save(payload, bad)
    container = gala_copy(gt_affs=False)
    err = _error(lsdflow("predict", "gala", container, "--model", bad, "--quiet"))
    assert str(bad) in err
    assert "weights_only=False" not in err
    assert not any(d.startswith("volumes/pred_") for d in list_datasets(container))


def test_a_read_only_output_gives_a_clear_error_and_keeps_earlier_outputs(gala_copy, tmp_path):
    container = gala_copy()
    assert lsdflow("segment", "gala", container, "--thresholds", "0.5").returncode == 0
    before = _snapshot(container)
    for p in [container, *container.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        err = _error(lsdflow("segment", "gala", container, "--thresholds", "0.3", cwd=tmp_path,
                             permissions_apply=True))
        assert "read-only" in err and str(container) in err
        assert _snapshot(container) == before
    finally:
        for p in [container, *container.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def _contents(container) -> dict[str, str]:
    """Every dataset's voxels (hashed): what a reader of the container would see."""
    import hashlib

    result = {}
    for dataset in list_datasets(container):
        array = zarr.open(str(container / dataset), mode="r")
        result[dataset] = hashlib.sha256(np.ascontiguousarray(array[:]).tobytes()).hexdigest()
    return result


FULL_DISK = """
import errno
import zarr.storage
_real = zarr.storage.DirectoryStore.__setitem__
def full(self, key, value):
    if "segmentation" in self.path and ".partial-" in self.path:
        raise OSError(errno.ENOSPC, "No space left on device", self.path + "/" + key)
    return _real(self, key, value)
zarr.storage.DirectoryStore.__setitem__ = full
"""


@pytest.mark.parametrize("blockwise", [False, True], ids=["in-memory", "blockwise"])
def test_a_full_disk_gives_a_clear_error_and_keeps_earlier_outputs(gala_copy, tmp_path, blockwise):
    """ENOSPC while writing a segmentation (injected into zarr's store, in every process of
    the run): `lsdflow: error:` naming the file, and the earlier segmentation stays whole."""
    container = gala_copy()
    argv = ["segment", "gala", str(container), "--thresholds", "0.5", "--quiet"]
    if blockwise:
        argv += ["--blockwise", "--workers", "1", *[a for s in BLOCKS for a in ("--set", s)]]
    assert run_killed("", argv, tmp_path).returncode == 0
    before = _contents(container)
    err = _error(run_killed(FULL_DISK, argv[:4] + ["0.5", "0.3"] + argv[5:], tmp_path))
    assert "No space left on device" in err and str(container) in err
    assert _contents(container) == before


def _h5(path, raw, **datasets):
    with h5py.File(path, "w") as f:
        f.create_dataset("volumes/raw", data=raw, chunks=True, compression="gzip")
        f["volumes/raw"].attrs["resolution"] = [10, 10, 10]
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
            f[name].attrs["resolution"] = [10, 10, 10]
    return path


def test_corrupt_hdf5_chunk_is_a_clear_error_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(0)
    path = _h5(tmp_path / "corrupt.h5", rng.integers(0, 255, (32, 64, 64), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2048] = os.urandom(2048)
    path.write_bytes(bytes(data))
    err = _error(lsdflow("convert", path, tmp_path / "out.zarr", "--quiet"))
    assert str(path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.h5"]


@pytest.mark.parametrize("case, message", [
    ("zero-length", "empty dataset"),
    ("2d", "expected 3 dimensions"),
    ("float labels", "must be an integer label volume"),
    ("nan raw", "NaN or infinite"),
    ("labels outside raw", "outside raw's ROI"),
    ("truncated file", "not a readable HDF5 file"),
    ("all-zero raw", "every voxel has intensity 0"),
    ("negative labels", "negative label ids"),
])
def test_bad_hdf5_inputs_are_refused(tmp_path, case, message):
    raw = np.zeros((8, 16, 16), np.uint8)
    if case == "zero-length":
        path = _h5(tmp_path / "in.h5", np.zeros((0, 16, 16), np.uint8))
    elif case == "2d":
        path = _h5(tmp_path / "in.h5", np.zeros((16, 16), np.uint8))
    elif case == "float labels":
        path = _h5(tmp_path / "in.h5", raw, **{"volumes/labels/neuron_ids": np.zeros((8, 16, 16), np.float32)})
    elif case == "nan raw":
        values = np.zeros((8, 16, 16), np.float32)
        values[1, 2, 3] = np.nan
        path = _h5(tmp_path / "in.h5", values)
    elif case == "all-zero raw":
        path = _h5(tmp_path / "in.h5", raw)
    elif case == "negative labels":
        labels = np.zeros((8, 16, 16), np.int64)
        labels[2, 3, 4] = -7
        path = _h5(tmp_path / "in.h5", np.arange(raw.size, dtype=np.uint8).reshape(raw.shape),
                   **{"volumes/labels/neuron_ids": labels})
    elif case == "labels outside raw":
        path = _h5(tmp_path / "in.h5", raw, **{"volumes/labels/neuron_ids": np.zeros((9, 16, 16), np.uint64)})
    else:
        path = _h5(tmp_path / "in.h5", raw)
        path.write_bytes(path.read_bytes()[:100])
    err = _error(lsdflow("convert", path, tmp_path / "out.zarr", "--quiet"))
    assert message in err and str(path) in err
    assert not (tmp_path / "out.zarr").exists()


def test_corrupt_zarr_chunk_is_a_clear_error(gala_copy):
    container = gala_copy(gt_affs=False)
    chunk = next(p for p in (container / "volumes/raw").rglob("*") if p.is_file() and not p.name.startswith("."))
    chunk.write_bytes(b"not a compressed chunk")
    err = _error(lsdflow("convert", container, container.parent / "copy.zarr", "--quiet"))
    assert "volumes/raw" in err and "cannot read voxels" in err


@pytest.mark.parametrize("case", ["page of another size", "second series"])
def test_tiff_pages_are_never_dropped_silently(tmp_path, case):
    path = tmp_path / "stack.tif"
    sections = np.random.default_rng(0).integers(0, 255, (6, 32, 32), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        if case == "page of another size":
            for index, section in enumerate(sections):
                tif.write(section if index != 2 else section[:16], contiguous=False)
        else:
            tif.write(sections)
            tif.write(sections[:2])  # same page size, a second series
    err = _error(lsdflow("convert", path, tmp_path / "out.zarr", "--voxel-size", 10, 10, 10, "--quiet"))
    assert str(path) in err
    assert ("page 2 has shape (16, 32)" in err) if case == "page of another size" else ("2 image series" in err)
    assert not (tmp_path / "out.zarr").exists()


def test_bad_input_inside_a_block_is_reported_once_and_not_retried(gala_copy, tmp_path):
    """NaN affinities in one block: the stage fails with VolumeError, which neither the
    CLI (`lsdflow: error:`, rc 2) nor Prefect (not transient) retries."""
    from lsdflow.tasks.retry import is_transient

    container = gala_copy()
    affs = open_array(container, "volumes/pred_affs")
    values = affs[affs.roi].astype(np.float32) / 255
    values[0, 40, 80, 150] = np.nan  # one block of eight
    write_array(container, "volumes/pred_affs", affs.roi, affs.voxel_size, values)
    config = load_config("gala", BLOCKS)
    with pytest.raises(VolumeError, match="NaN or infinite affinities") as e:
        segment_blockwise(config, container, graph_url=f"sqlite:///{tmp_path / 'g.db'}", thresholds=[0.5],
                          settings=RunSettings(workers=2, progress=False))
    assert not is_transient(e.value)
    assert str(container) in str(e.value)
    assert "volumes/fragments" not in list_datasets(container)


@pytest.mark.parametrize("override, message", [
    ('model.kind="unet3000"', "model.kind"),
    ("data.voxel_size=[]", "data.voxel_size"),
    ('data.train=[""]', "empty path"),
    ('name=""', "name"),
    ("blockwise.workers=0", "blockwise.workers"),
])
def test_empty_or_unknown_config_values_are_refused(override, message):
    err = _error(lsdflow("config", "show", "gala", "--set", override))
    assert message in err


def test_a_volume_of_another_voxel_size_is_refused(gala_copy, tiny_model):
    container = gala_copy(gt_affs=False)
    raw = open_array(container, "volumes/raw")
    from funlib.geometry import Coordinate, Roi

    write_array(container, "volumes/raw", Roi((0, 0, 0), Coordinate(raw.shape) * 8), (8, 8, 8), raw[raw.roi])
    err = _error(lsdflow("predict", "gala", container, "--model", tiny_model, "--quiet"))
    assert "volumes/raw" in err and "voxel size" in err


def test_an_unreachable_graph_host_fails_within_seconds(gala_copy):
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.monotonic()
    err = _error(lsdflow("segment", "gala", gala_copy(), "--blockwise", "--graph", f"mongodb://127.0.0.1:{port}/x",
                         "--quiet"))
    assert "cannot reach MongoDB" in err
    assert time.monotonic() - began < 30


def test_every_torch_load_in_lsdflow_is_weights_only():
    """Checkpoints and model files are loaded as tensors and plain data, never as code."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    calls = []
    for path in [*root.glob("core/**/*.py"), *root.glob("tasks/**/*.py"), *root.glob("flows/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                calls.append((str(path), bool(weights_only) and ast.unparse(weights_only[0].value) == "True"))
    assert calls and all(ok for _, ok in calls), calls


def test_a_truncated_checkpoint_is_refused_and_the_registry_is_unchanged(tmp_path, tiny_model):
    workspace = tmp_path / "ws"
    good = lsdflow("register", "gala", tiny_model, "--workspace", workspace)
    assert good.returncode == 0, good.stderr
    registry = sorted(p.name for p in workspace.rglob("*"))
    db = (workspace / "mlflow.db").read_bytes()
    truncated = tmp_path / "model_checkpoint_100"
    truncated.write_bytes(tiny_model.read_bytes()[:5000])
    err = _error(lsdflow("register", "gala", truncated, "--workspace", workspace))
    assert str(truncated) in err and "not a readable lsdflow model file" in err
    assert sorted(p.name for p in workspace.rglob("*")) == registry
    assert (workspace / "mlflow.db").read_bytes() == db
