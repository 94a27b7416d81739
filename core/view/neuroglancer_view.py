"""`lsdflow view`: a container in neuroglancer, served from this process.

The `neuroglancer` package serves its bundled client and the container's arrays (read
chunk by chunk from the Zarr arrays as the browser asks, so volumes of any size open at
once). Layers: raw; affinities and LSDs as RGB (three channels each: the z, y, x
affinities; the LSDs' mean offsets); fragments; every segmentation, with the one in use
shown; ground-truth labels where the container has them. Coordinates in nm, at each
array's voxel size and offset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ..io.container_contents import require, segmentation_in_use, segmentations
from ..io.layout import FRAGMENTS, PRED_AFFS, PRED_LSDS, RAW
from ..io.layout import NEURON_IDS as LABELS
from ..io.volumes import open_array

# the first three channels as red, green, blue, each stretched by the layer's control
RGB_SHADER = """#uicontrol invlerp normalized
void main() {
  emitRGB(vec3(normalized(getDataValue(0)), normalized(getDataValue(1)), normalized(getDataValue(2))));
}
"""


@dataclass(frozen=True)
class LayerSpec:
    name: str
    dataset: str
    kind: str  # "image", "rgb" or "segmentation"
    visible: bool = True


def layer_specs(container: str | os.PathLike, segmentation: str | None = None) -> list[LayerSpec]:
    """The layers a view of `container` shows, in order (raw must exist; the rest where present)."""
    container = Path(container)
    require(container, [RAW])
    present = {d for d in (PRED_AFFS, PRED_LSDS, FRAGMENTS, LABELS) if (container / d / ".zarray").is_file()}
    found = segmentations(container)
    if segmentation is not None:
        require(container, [segmentation])
    shown = segmentation or segmentation_in_use(container) or (found[0] if found else None)
    specs = [LayerSpec("raw", RAW, "image")]
    specs += [LayerSpec("affinities", PRED_AFFS, "rgb", visible=False)] if PRED_AFFS in present else []
    specs += [LayerSpec("lsds (mean offset)", PRED_LSDS, "rgb", visible=False)] if PRED_LSDS in present else []
    specs += [LayerSpec("fragments", FRAGMENTS, "segmentation", visible=shown is None)] if FRAGMENTS in present else []
    for dataset in found + ([segmentation] if segmentation and segmentation not in found else []):
        name = "segmentation " + "/".join(dataset.split("/")[2:])
        specs.append(LayerSpec(name, dataset, "segmentation", visible=dataset == shown))
    specs += [LayerSpec("labels (ground truth)", LABELS, "segmentation", visible=False)] if LABELS in present else []
    return specs


# neuroglancer's LocalVolume makes a segment's mesh from the whole array in memory: above
# this size a segmentation is shown in slices only (no 3-d meshes)
MESH_MAX_VOXELS = 256**3


class MeshableArray:
    """A Zarr array neuroglancer reads chunk by chunk, loaded whole only when a segment's
    mesh is first asked for (LocalVolume's mesher takes `data.transpose()` of the whole
    array), so a view of many segmentations costs memory only for those meshed."""

    def __init__(self, array):
        self._array = array
        self._loaded: np.ndarray | None = None
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, index):
        return (self._loaded if self._loaded is not None else self._array)[index]

    def transpose(self, *axes):
        if self._loaded is None:
            self._loaded = self._array[...]
        return self._loaded.transpose(*axes)


def _local_volume(container: Path, dataset: str, segmentation: bool = False):
    import neuroglancer

    array = open_array(container, dataset)
    data = zarr.open(str(container / dataset), mode="r")
    if segmentation and data.size <= MESH_MAX_VOXELS:
        data = MeshableArray(data)
    voxel_size = [float(v) for v in array.voxel_size]
    offset = [int(o) for o in np.asarray(array.roi.offset) // np.asarray(array.voxel_size)]
    channels = len(data.shape) == 4
    dimensions = neuroglancer.CoordinateSpace(
        names=(["c^"] if channels else []) + ["z", "y", "x"],
        units=([""] if channels else []) + ["nm"] * 3,
        scales=([1.0] if channels else []) + voxel_size,
    )
    return neuroglancer.LocalVolume(data=data, dimensions=dimensions, voxel_offset=([0] if channels else []) + offset)


def open_view(container: str | os.PathLike, segmentation: str | None = None, bind_address: str = "127.0.0.1",
              port: int = 0):
    """Start neuroglancer's server (if not started) and a viewer with the container's layers;
    returns the viewer (`viewer.get_viewer_url()` is the page)."""
    import neuroglancer

    container = Path(container)
    specs = layer_specs(container, segmentation)
    neuroglancer.set_server_bind_address(bind_address, bind_port=port)
    viewer = neuroglancer.Viewer()
    raw = open_array(container, RAW)
    with viewer.txn() as state:
        state.dimensions = neuroglancer.CoordinateSpace(names=["z", "y", "x"], units="nm",
                                                        scales=[float(v) for v in raw.voxel_size])
        state.position = [float(c) / float(v) for c, v in zip(raw.roi.center, raw.voxel_size)]
        state.layout = "4panel"
        # the whole y-x section across a panel of ~400 pixels, the volume about a third of the 3-d view
        extent = max(raw.roi.shape / raw.voxel_size)
        state.cross_section_scale = max(extent / 400, 0.01)
        state.projection_scale = float(extent) * 1.2
        for spec in specs:
            source = _local_volume(container, spec.dataset, segmentation=spec.kind == "segmentation")
            if spec.kind == "segmentation":
                if not isinstance(source.data._data, MeshableArray):  # too large for meshes
                    source = neuroglancer.LayerDataSource(url=source, enable_default_subsources=False,
                                                          subsources={"default": True})
                layer = neuroglancer.SegmentationLayer(source=source)
            elif spec.kind == "rgb":
                layer = neuroglancer.ImageLayer(source=source, shader=RGB_SHADER)
            else:
                layer = neuroglancer.ImageLayer(source=source)
            state.layers.append(name=spec.name, layer=layer, visible=spec.visible)
        state.selected_layer.layer = next((s.name for s in specs if s.kind == "segmentation" and s.visible), "raw")
    return viewer


def browser() -> tuple[str, str]:
    """Chromium and its driver, or FileNotFoundError saying how to install them."""
    import shutil

    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        raise FileNotFoundError("a screenshot needs Chromium and ChromeDriver on the PATH "
                                "(Debian: apt-get install chromium chromium-driver)")
    return binary, driver


def screenshot(viewer, path: str | os.PathLike | None = None, size=(1200, 900), timeout_s: float = 120.0):
    """Open `viewer` in headless Chromium, wait until its layers are listed and its data
    drawn, and save a PNG; returns (screenshot reply, layer names listed on the page)."""
    import time

    import neuroglancer.webdriver
    from selenium.webdriver.common.by import By

    binary, _ = browser()
    with neuroglancer.webdriver.Webdriver(viewer, headless=True, browser="chrome", browser_binary_path=binary,
                                          docker=True, window_size=(size[0], size[1] + 100)) as page:
        deadline, names = time.monotonic() + timeout_s, []
        while not names and time.monotonic() < deadline:
            names = [e.text for e in page.driver.find_elements(By.CSS_SELECTOR, ".neuroglancer-layer-item-label")]
            time.sleep(0.2)
        # waits until every visible chunk is drawn
        reply = viewer.screenshot(size=list(size))
    if path is not None:
        Path(path).write_bytes(reply.screenshot.image)
    return reply, names
