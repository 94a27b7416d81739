"""`lsdflow convert`: HDF5 (CREMI layout), TIFF, N5/Zarr into Zarr; bad input leaves nothing."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from lsdflow.cli.main import main as cli
from lsdflow.core.io import convert as convert_module
from lsdflow.core.io.convert import convert
from lsdflow.core.io.volumes import VolumeError, list_datasets, open_array


@pytest.fixture(scope="module")
def gala_arrays(gala_test):
    raw = open_array(gala_test, "volumes/raw")
    labels = open_array(gala_test, "volumes/labels/neuron_ids")
    return raw[raw.roi], labels[labels.roi]


def write_cremi_h5(path: Path, raw, labels=None, resolution=(10, 10, 10), offset=(0, 0, 0), labels_offset=None):
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("volumes/raw", data=raw, compression="gzip")
        ds.attrs["resolution"] = resolution
        ds.attrs["offset"] = offset
        if labels is not None:
            ds = f.create_dataset("volumes/labels/neuron_ids", data=labels, compression="gzip")
            ds.attrs["resolution"] = resolution
            ds.attrs["offset"] = labels_offset if labels_offset is not None else offset
    return path


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_hdf5_round_trip_keeps_data_and_metadata(tmp_path, gala_arrays):
    raw, labels = gala_arrays
    # labels on a sub-ROI of raw, at an offset, as in CREMI's padded volumes
    src = write_cremi_h5(
        tmp_path / "sample.h5", raw, labels[5:45, 10:90, 20:180],
        resolution=(10, 10, 10), offset=(1000, 2000, 3000), labels_offset=(1050, 2100, 3200),
    )
    out = convert(src, tmp_path / "sample.zarr", chunk_shape=(16, 32, 32), progress=False)
    assert list_datasets(out) == [
        "volumes/labels/labels_mask",
        "volumes/labels/neuron_ids",
        "volumes/raw",
    ]
    r = open_array(out, "volumes/raw")
    assert tuple(r.voxel_size) == (10, 10, 10)
    assert tuple(r.offset) == (1000, 2000, 3000)
    assert r.dtype == np.uint8
    np.testing.assert_array_equal(r[r.roi], raw)
    lab = open_array(out, "volumes/labels/neuron_ids")
    assert tuple(lab.offset) == (1050, 2100, 3200)
    assert lab.dtype == np.uint64
    np.testing.assert_array_equal(lab[lab.roi], labels[5:45, 10:90, 20:180])
    mask = open_array(out, "volumes/labels/labels_mask")
    assert mask.roi == lab.roi
    assert mask[mask.roi].min() == 1  # dense labels: valid everywhere they are defined
    assert zarr.open(str(out / "volumes/raw")).chunks == (16, 32, 32)
    assert zarr.open(str(out / "volumes/raw")).attrs["units"] == ["nm", "nm", "nm"]
    assert leftovers(tmp_path) == []


def test_hdf5_mito_ids_and_an_existing_mask_are_kept(tmp_path, gala_arrays):
    raw, labels = gala_arrays
    src = write_cremi_h5(tmp_path / "m.h5", raw, labels)
    mito = np.where(labels % 7 == 0, labels, 0).astype(np.uint32)
    mask = np.zeros(labels.shape, dtype=np.uint8)
    mask[:, :, :150] = 1
    with h5py.File(src, "a") as f:
        for name, data in (("volumes/labels/mito_ids", mito), ("volumes/labels/labels_mask", mask)):
            ds = f.create_dataset(name, data=data)
            ds.attrs["resolution"] = (10, 10, 10)
            ds.attrs["offset"] = (0, 0, 0)
    out = convert(src, tmp_path / "m.zarr", progress=False)
    m = open_array(out, "volumes/labels/mito_ids")
    assert m.dtype == np.uint64
    np.testing.assert_array_equal(m[:], mito)
    np.testing.assert_array_equal(open_array(out, "volumes/labels/labels_mask")[:], mask)


def test_conversion_streams_in_blocks(tmp_path, gala_arrays, monkeypatch):
    raw, labels = gala_arrays
    src = write_cremi_h5(tmp_path / "s.h5", raw, labels)
    reads = []
    original = convert_module._copy

    def counting_copy(a, target, block_shape, progress):
        reads.append((a.role, block_shape))
        return original(a, target, block_shape, progress)

    monkeypatch.setattr(convert_module, "BLOCK_BYTES", 64 * 1024)
    monkeypatch.setattr(convert_module, "_copy", counting_copy)
    out = convert(src, tmp_path / "s.zarr", chunk_shape=(16, 16, 16), progress=False)
    raw_block = dict(reads)["raw"]
    assert np.prod(raw_block) < raw.size / 8  # never the whole volume at once
    np.testing.assert_array_equal(open_array(out, "volumes/raw")[:], raw)
    np.testing.assert_array_equal(open_array(out, "volumes/labels/neuron_ids")[:], labels)


def test_tiff_stack_and_tiff_directory(tmp_path, gala_arrays):
    raw, labels = gala_arrays
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    sections = tmp_path / "labels"
    sections.mkdir()
    for z, plane in enumerate(labels.astype(np.uint32)):
        tifffile.imwrite(sections / f"section_{z:04d}.tif", plane)
    out = convert(
        tmp_path / "raw.tif", tmp_path / "t.zarr", labels=sections,
        voxel_size=(10, 10, 10), offset=(0, 0, 100), progress=False,
    )
    np.testing.assert_array_equal(open_array(out, "volumes/raw")[:], raw)
    lab = open_array(out, "volumes/labels/neuron_ids")
    np.testing.assert_array_equal(lab[:], labels)
    assert tuple(lab.offset) == (0, 0, 100)


def test_n5_with_xyz_resolution_attributes(tmp_path, gala_arrays):
    raw, labels = gala_arrays
    root = zarr.open(zarr.N5FSStore(str(tmp_path / "v.n5")), mode="w")
    ds = root.create_dataset("volumes/raw", data=raw, chunks=(16, 32, 32))
    ds.attrs["resolution"] = [4, 4, 40]  # x, y, z as N5 writers store it
    ds.attrs["offset"] = [0, 0, 400]
    out = convert(tmp_path / "v.n5", tmp_path / "v.zarr", progress=False)
    r = open_array(out, "volumes/raw")
    assert tuple(r.voxel_size) == (40, 4, 4)
    assert tuple(r.offset) == (400, 0, 0)
    np.testing.assert_array_equal(r[:], raw)


def test_zarr_source_with_resolution_attributes(tmp_path, gala_arrays):
    raw, labels = gala_arrays
    root = zarr.open(str(tmp_path / "in.zarr"), mode="w")
    for name, data in (("volumes/raw", raw), ("volumes/labels/neuron_ids", labels)):
        ds = root.create_dataset(name, data=data)
        ds.attrs["resolution"] = [10, 10, 10]
    out = convert(tmp_path / "in.zarr", tmp_path / "out.zarr", progress=False)
    np.testing.assert_array_equal(open_array(out, "volumes/labels/neuron_ids")[:], labels)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_raw", "raw dataset 'volumes/raw' not found"),
        ("two_d", "expected 3 dimensions"),
        ("float_labels", "must be an integer label volume"),
        ("zero_voxel", "voxel size must be positive"),
        ("labels_outside", "lies outside raw's ROI"),
        ("negative_labels", "negative label ids"),
        ("tiff_without_voxel_size", "pass --voxel-size"),
    ],
)
def test_bad_input_gives_a_clear_error_and_no_output(tmp_path, gala_arrays, case, message):
    raw, labels = gala_arrays
    src = tmp_path / "bad.h5"
    kwargs = {}
    if case == "missing_raw":
        with h5py.File(src, "w") as f:
            f["volumes/labels/neuron_ids"] = labels
    elif case == "two_d":
        write_cremi_h5(src, raw[0])
    elif case == "float_labels":
        write_cremi_h5(src, raw, labels.astype(np.float32))
    elif case == "zero_voxel":
        write_cremi_h5(src, raw, labels, resolution=(0, 10, 10))
    elif case == "labels_outside":
        write_cremi_h5(src, raw, labels, labels_offset=(100, 0, 0))
    elif case == "negative_labels":
        bad = labels.astype(np.int64)
        bad[-1, -1, -1] = -5
        write_cremi_h5(src, raw, bad)
    elif case == "tiff_without_voxel_size":
        src = tmp_path / "raw.tif"
        tifffile.imwrite(src, raw)
    with pytest.raises(VolumeError) as e:
        convert(src, tmp_path / "out.zarr", progress=False, **kwargs)
    assert message in str(e.value)
    assert str(src) in str(e.value) or case == "tiff_without_voxel_size"
    assert not (tmp_path / "out.zarr").exists()
    assert leftovers(tmp_path) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path, gala_arrays):
    raw, labels = gala_arrays
    src = write_cremi_h5(tmp_path / "a.h5", raw, labels)
    out = convert(src, tmp_path / "a.zarr", progress=False)
    with pytest.raises(VolumeError, match="already exists"):
        convert(src, out, progress=False)
    # a failing overwrite leaves the old output untouched
    bad = write_cremi_h5(tmp_path / "bad.h5", raw, labels.astype(np.float32))
    with pytest.raises(VolumeError):
        convert(bad, out, overwrite=True, progress=False)
    np.testing.assert_array_equal(open_array(out, "volumes/labels/neuron_ids")[:], labels)
    # a good overwrite replaces it
    src2 = write_cremi_h5(tmp_path / "b.h5", raw[:10], labels[:10])
    convert(src2, out, overwrite=True, progress=False)
    assert open_array(out, "volumes/raw").shape == (10, 100, 200)
    assert leftovers(tmp_path) == []


def test_cli_convert_reports_errors_without_traceback(tmp_path, gala_arrays, capsys):
    raw, labels = gala_arrays
    src = write_cremi_h5(tmp_path / "c.h5", raw, labels)
    assert cli(["convert", str(src), str(tmp_path / "c.zarr"), "--quiet"]) == 0
    assert "volumes/raw" in capsys.readouterr().out
    assert cli(["convert", str(src), str(tmp_path / "c.zarr"), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def _walk(container: Path, dataset: str):
    """Open `dataset` by walking the zarr hierarchy group by group, as napari and
    `zarr.open(...).tree()` do (a folder without `.zgroup` ends the walk)."""
    node = zarr.open(str(container), mode="r")
    for part in dataset.split("/"):
        node = node[part]
    return node


def test_every_container_lsdflow_writes_is_a_zarr_hierarchy(tmp_path, gala_arrays):
    from funlib.geometry import Roi

    from lsdflow.core.io.volumes import write_array

    raw, labels = gala_arrays
    out = convert(write_cremi_h5(tmp_path / "in.h5", raw, labels), tmp_path / "c.zarr", progress=False)
    assert _walk(out, "volumes/labels/neuron_ids").shape == labels.shape
    write_array(out, "volumes/segmentation/hist_quant_50/0.1", Roi((0, 0, 0), (40, 40, 40)), (10, 10, 10),
                np.ones((4, 4, 4), np.uint64))
    assert _walk(out, "volumes/segmentation/hist_quant_50/0.1")[:].sum() == 64
    assert "neuron_ids" in str(zarr.open(str(out), mode="r").tree())


def test_repair_adds_the_missing_groups_of_an_old_container_and_touches_no_data(tmp_path, gala_test, capsys):
    import shutil

    from lsdflow.core.io.volumes import dataset_fingerprint

    old = tmp_path / "old.zarr"
    shutil.copytree(gala_test, old)
    for group_file in old.rglob(".zgroup"):
        if group_file.parent != old:
            group_file.unlink()  # as lsdflow wrote containers before
    with pytest.raises(KeyError):
        _walk(old, "volumes/raw")
    before = {d: dataset_fingerprint(old, d) for d in list_datasets(old)}
    assert cli(["convert", "--repair", str(old)]) == 0
    assert "added 2 missing group(s)" in capsys.readouterr().out
    assert _walk(old, "volumes/labels/neuron_ids").shape == (50, 100, 200)
    assert {d: dataset_fingerprint(old, d) for d in list_datasets(old)} == before
    assert cli(["convert", "--repair", str(old)]) == 0 and "added 0" in capsys.readouterr().out

    # a folder that is not a container is refused, and nothing is written in it
    plain = tmp_path / "plain"
    shutil.copytree(gala_test, plain / "inside.zarr")
    assert cli(["convert", "--repair", str(plain)]) == 2
    assert "not a Zarr container" in capsys.readouterr().err
    assert not (plain / ".zgroup").exists()
