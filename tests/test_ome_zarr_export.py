"""`lsdflow export`: a container as OME-Zarr 0.4, read back by ome-zarr's own reader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi

from lsdflow.core.blockwise.runner import RunSettings
from lsdflow.core.io.ome_zarr_export import downsample_mean, downsample_mode, export_ome_zarr, pyramid
from lsdflow.core.io.volumes import VolumeError, open_array, write_array

SEGMENTATION = "volumes/segmentation/hist_quant_50/0.15"


def test_pyramid_halves_the_finest_axes_until_about_isotropic():
    iso = pyramid((100, 100, 100), (10, 10, 10))
    assert iso.voxel_sizes == [(10, 10, 10), (20, 20, 20), (40, 40, 40)]
    assert iso.shapes == [(100, 100, 100), (50, 50, 50), (25, 25, 25)]
    cremi = pyramid((125, 1250, 1250), (40, 4, 4))
    assert cremi.voxel_sizes[:5] == [(40, 4, 4), (40, 8, 8), (40, 16, 16), (40, 32, 32), (80, 64, 64)]
    assert cremi.factors[4] == (2, 2, 2) and cremi.shapes[3] == (125, 157, 157)
    assert len(pyramid((100, 100, 100), (10, 10, 10), levels=2).shapes) == 2


def test_labels_are_reduced_by_their_most_frequent_id_and_raw_by_the_mean():
    labels = np.zeros((2, 2, 3), np.uint64)
    labels[:, :, :2] = [[[7, 7], [7, 3]], [[3, 9], [7, 3]]]  # 7 four times, 3 three times
    labels[:, :, 2] = 5  # a half window at the far face, padded by repetition
    assert downsample_mode(labels, (2, 2, 2)).tolist() == [[[7, 5]]]
    raw = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    assert downsample_mean(raw, (2, 2, 2)).tolist() == [[[4]]]  # 3.5 rounds to even
    channels = np.stack([raw, raw * 2])
    assert downsample_mean(channels, (2, 2, 2)).shape == (2, 1, 1, 1)


@pytest.fixture
def processed(tmp_path, gala_test) -> Path:
    """A real gala crop with an odd shape, a segmentation (its labels) and affinities."""
    raw = open_array(gala_test, "volumes/raw")
    labels = open_array(gala_test, "volumes/labels/neuron_ids")
    roi = Roi(raw.roi.offset + Coordinate(100, 200, 300), (210, 380, 400))
    container = tmp_path / "acquisition.zarr"
    write_array(container, "volumes/raw", roi, raw.voxel_size, raw.to_ndarray(roi))
    write_array(container, SEGMENTATION, roi, raw.voxel_size, labels.to_ndarray(roi).astype(np.uint64))
    affs = np.random.default_rng(0).integers(0, 255, (3, *(roi.shape / raw.voxel_size)), dtype=np.uint8)
    write_array(container, "volumes/pred_affs", roi, raw.voxel_size, affs)
    write_array(container, "volumes/pred_lsds", roi, raw.voxel_size, np.concatenate([affs] * 3 + [affs[:1]]))
    return container


def test_export_is_read_back_by_the_ome_zarr_reader_with_nm_transforms_and_pyramids(processed, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out = tmp_path / "acquisition.ome.zarr"
    summary = export_ome_zarr(processed, out, predictions=True, chunk=16, settings=RunSettings(workers=2, progress=False))
    assert summary["shapes"] == [(21, 38, 40), (11, 19, 20)]
    raw = open_array(processed, "volumes/raw")
    raw = raw.to_ndarray(raw.roi)
    labels = open_array(processed, SEGMENTATION)
    labels = labels.to_ndarray(labels.roi)

    nodes = list(Reader(parse_url(str(out)))())
    image, label = nodes[0], next(n for n in nodes if n.zarr.path.endswith("segmentation_hist_quant_50_0.15"))
    assert [a["unit"] for a in image.metadata["axes"]] == ["nanometer"] * 3
    transforms = image.metadata["coordinateTransformations"]
    offset = np.array(open_array(processed, "volumes/raw").roi.offset, float)
    assert transforms[0] == [{"type": "scale", "scale": [10.0] * 3},
                             {"type": "translation", "translation": offset.tolist()}]
    assert transforms[1][1]["translation"] == (offset + 5).tolist()  # coarse voxel centres
    np.testing.assert_array_equal(np.asarray(image.data[0]), raw)
    np.testing.assert_array_equal(np.asarray(image.data[1]), downsample_mean(raw, (2, 2, 2)))
    assert "image-label" in label.metadata or label.zarr.root_attrs.get("image-label")
    np.testing.assert_array_equal(np.asarray(label.data[0]), labels)
    coarse = np.asarray(label.data[1])
    np.testing.assert_array_equal(coarse, downsample_mode(labels, (2, 2, 2)))
    assert set(np.unique(coarse)) <= set(np.unique(labels))  # no new ids

    affinities = list(Reader(parse_url(str(out / "predictions" / "affinities")))())[0]
    assert [a["name"] for a in affinities.metadata["axes"]] == ["c", "z", "y", "x"]
    assert affinities.data[1].shape == (3, 11, 19, 20)
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["lsdflow"]["datasets"]["predictions/lsds"] == "volumes/pred_lsds"
    assert root["0"]._dimension_separator == "/"  # NGFF 0.4


def test_bad_requests_fail_before_any_output_and_an_export_is_never_half_replaced(processed, tmp_path):
    out = tmp_path / "out.ome.zarr"
    with pytest.raises(VolumeError, match="volumes/fragments"):
        export_ome_zarr(processed, out, fragments=True, settings=RunSettings(workers=1, progress=False))
    assert not out.exists()
    with pytest.raises(VolumeError, match="outside the source container"):
        export_ome_zarr(processed, processed / "inside.ome.zarr", settings=RunSettings(workers=1, progress=False))
    export_ome_zarr(processed, out, levels=1, settings=RunSettings(workers=1, progress=False))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(VolumeError, match="--overwrite"):
        export_ome_zarr(processed, out, settings=RunSettings(workers=1, progress=False))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_the_installed_command_exports_and_reports_errors(processed, tmp_path):
    exe = Path(sys.executable).parent / "lsdflow"
    out = tmp_path / "cli.ome.zarr"
    done = subprocess.run([str(exe), "export", str(processed), str(out), "--quiet", "--workers", "1", "--levels", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "labels/segmentation_hist_quant_50_0.15" in done.stdout and (out / "labels" / ".zattrs").is_file()
    bad = subprocess.run([str(exe), "export", str(processed), str(tmp_path / "x.ome.zarr"), "--segmentation",
                          "volumes/segmentation/none/1"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("lsdflow: error:")
    assert "volumes/segmentation/none/1" in bad.stderr and not (tmp_path / "x.ome.zarr").exists()
