"""`lsdflow view`: the container's layers in neuroglancer, opened in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi

from lsdflow.core.io.volumes import VolumeError, open_array, write_array
from lsdflow.core.segment.threshold_selection import CHOICE_ATTRIBUTE
from lsdflow.core.view.neuroglancer_view import _local_volume, layer_specs, open_view, screenshot

NO_BROWSER = shutil.which("chromium") is None or shutil.which("chromedriver") is None
needs_browser = pytest.mark.skipif(NO_BROWSER, reason="Chromium and ChromeDriver are not installed "
                                                      "(apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def processed(tmp_path_factory, gala_test) -> Path:
    """A real gala crop with affinities, LSDs, fragments, two segmentations and labels;
    the affinities carry the model's best threshold 0.3."""
    raw = open_array(gala_test, "volumes/raw")
    labels = open_array(gala_test, "volumes/labels/neuron_ids")
    roi = Roi(raw.roi.offset + Coordinate(100, 200, 300), (200, 400, 400))
    container = tmp_path_factory.mktemp("view") / "acquisition.zarr"
    truth = labels.to_ndarray(roi).astype(np.uint64)
    write_array(container, "volumes/raw", roi, raw.voxel_size, raw.to_ndarray(roi))
    write_array(container, "volumes/labels/neuron_ids", roi, raw.voxel_size, truth)
    boundary = (np.diff(truth, axis=-1, prepend=0) != 0).astype(np.uint8) * 255
    write_array(container, "volumes/pred_affs", roi, raw.voxel_size, np.stack([255 - boundary] * 3),
                attrs={"best_threshold": 0.3})
    write_array(container, "volumes/pred_lsds", roi, raw.voxel_size, np.stack([boundary] * 10))
    write_array(container, "volumes/fragments", roi, raw.voxel_size, truth * 3)
    for threshold in ("0.1", "0.3"):
        write_array(container, f"volumes/segmentation/hist_quant_50/{threshold}", roi, raw.voxel_size, truth)
    return container


def test_layers_show_the_segmentation_in_use(processed):
    specs = layer_specs(processed)
    assert [s.name for s in specs] == ["raw", "affinities", "lsds (mean offset)", "fragments",
                                       "segmentation hist_quant_50/0.1", "segmentation hist_quant_50/0.3",
                                       "labels (ground truth)"]
    assert [s.name for s in specs if s.visible] == ["raw", "segmentation hist_quant_50/0.3"]  # the model's threshold
    group = zarr.open_group(str(processed / "volumes/segmentation/hist_quant_50"), mode="a")
    group.attrs[CHOICE_ATTRIBUTE] = {"threshold": 0.1, "criterion": "lsd_disagreement"}
    try:
        assert [s.name for s in layer_specs(processed) if s.visible] == ["raw", "segmentation hist_quant_50/0.1"]
    finally:
        del group.attrs[CHOICE_ATTRIBUTE]
    chosen = layer_specs(processed, segmentation="volumes/segmentation/hist_quant_50/0.1")
    assert [s.name for s in chosen if s.visible][-1] == "segmentation hist_quant_50/0.1"
    with pytest.raises(VolumeError, match="volumes/segmentation/none"):
        layer_specs(processed, segmentation="volumes/segmentation/none/1")
    with pytest.raises(VolumeError, match="no such Zarr container"):
        layer_specs(processed.parent / "missing.zarr")


def test_the_viewer_state_is_in_nm_at_the_arrays_offsets(processed):
    viewer = open_view(processed)
    state = viewer.state
    raw = open_array(processed, "volumes/raw")
    assert list(state.dimensions.names) == ["z", "y", "x"] and list(state.dimensions.units) == ["m"] * 3
    np.testing.assert_allclose(state.dimensions.scales, [v * 1e-9 for v in raw.voxel_size])
    assert state.layers["affinities"].source[0].url.startswith("python://")  # served by this process
    for name in ("raw", "affinities"):
        volume = _local_volume(processed, "volumes/raw" if name == "raw" else "volumes/pred_affs")
        offset = list(np.asarray(raw.roi.offset) // np.asarray(raw.voxel_size))
        assert list(volume.voxel_offset)[-3:] == offset and list(volume.dimensions.names)[-3:] == ["z", "y", "x"]
        np.testing.assert_allclose(volume.dimensions.scales[-3:], [v * 1e-9 for v in raw.voxel_size])
    assert list(_local_volume(processed, "volumes/pred_lsds").dimensions.names)[0] == "c^"  # a channel axis
    assert state.layers["fragments"].source[0].enable_default_subsources in (None, True)  # meshes on selection
    lazy = _local_volume(processed, "volumes/fragments", segmentation=True).data._data
    assert lazy._loaded is None  # nothing held in memory until a segment is meshed


def test_a_large_segmentation_is_served_lazily_without_meshes(processed, monkeypatch):
    import lsdflow.core.view.neuroglancer_view as view

    monkeypatch.setattr(view, "MESH_MAX_VOXELS", 1000)
    state = view.open_view(processed).state
    source = state.layers["segmentation hist_quant_50/0.3"].source[0]
    assert source.enable_default_subsources is False and list(source.subsources) == ["default"]


@needs_browser
@pytest.mark.slow
def test_the_page_loads_lists_the_layers_draws_data_and_selects_segments(processed, tmp_path):
    viewer = open_view(processed)
    reply, names = screenshot(viewer, tmp_path / "view.png", size=(800, 600))
    assert names == [s.name for s in layer_specs(processed)]
    pixels = reply.screenshot.image_pixels[..., :3].astype(float)
    assert (tmp_path / "view.png").stat().st_size > 10_000 and pixels.std() > 20  # not blank

    # selecting a segment in the state shows in the page: the client echoes it and draws it
    segment = int(np.unique(zarr.open(str(processed / "volumes/segmentation/hist_quant_50/0.3"))[:])[1])
    with viewer.txn() as state:
        state.layers["segmentation hist_quant_50/0.3"].segments.add(segment)
    selected, _ = screenshot(viewer, size=(800, 600))
    assert segment in selected.viewer_state.layers["segmentation hist_quant_50/0.3"].segments
    assert np.abs(selected.screenshot.image_pixels[..., :3].astype(float) - pixels).mean() > 0.5


@needs_browser
@pytest.mark.slow
def test_the_installed_command_writes_a_screenshot(processed, tmp_path):
    exe = Path(sys.executable).parent / "lsdflow"
    done = subprocess.run([str(exe), "view", str(processed), "--screenshot", str(tmp_path / "v.png")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "layers: raw, affinities" in done.stdout and (tmp_path / "v.png").stat().st_size > 10_000
    bad = subprocess.run([str(exe), "view", str(tmp_path / "missing.zarr")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("lsdflow: error:") and "missing.zarr" in bad.stderr
