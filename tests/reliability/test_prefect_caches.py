"""Prefect caches are true to content and identity (defects 1-3 through the platform):
an input rewritten in place, outputs deleted, a changed N5 acquisition — each reruns
what it must, and never hands back a stale result."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from lsdflow.core.io.volumes import open_array

from ..test_flows import _task_states
from .conftest import BLOCKS, TINY

pytestmark = pytest.mark.slow


def test_segment_flow_reruns_what_changed_or_vanished(prefect_api, gala_copy, tmp_path):
    from lsdflow.core.blockwise.runner import RunSettings
    from lsdflow.core.config import load_config
    from lsdflow.core.segment.blockwise import segment_blockwise
    from lsdflow.flows.segment import segment

    volume = gala_copy()
    kwargs = dict(config_name="gala", volume=str(volume), thresholds=[0.5], overrides=BLOCKS, return_state=True)
    assert segment(**kwargs).is_completed()
    assert set(_task_states(segment(**kwargs)).values()) == {"Cached"}

    affs = zarr.open(str(volume / "volumes/pred_affs"), mode="r+")
    affs[:, :, :, 100] = 0  # rewritten in place: same metadata, same names
    changed = segment(**kwargs)
    assert set(_task_states(changed).values()) == {"Completed"}
    fresh = gala_copy("fresh.zarr", source=volume, gt_affs=False)
    shutil.rmtree(fresh / "volumes/segmentation")
    segment_blockwise(load_config("gala", BLOCKS), fresh, graph_url=f"sqlite:///{tmp_path / 'fresh.db'}",
                      thresholds=[0.5], settings=RunSettings(workers=2, progress=False))
    ours = open_array(volume, "volumes/segmentation/hist_quant_50/0.5")
    theirs = open_array(fresh, "volumes/segmentation/hist_quant_50/0.5")
    assert np.array_equal(ours[ours.roi], theirs[theirs.roi])

    shutil.rmtree(volume / "volumes/segmentation")  # outputs deleted behind the cache's back
    gone = segment(**kwargs)
    states = _task_states(gone)
    assert states["fragments"] == "Cached" and states["relabel"] == "Completed"
    again = open_array(volume, "volumes/segmentation/hist_quant_50/0.5")
    assert np.array_equal(again[again.roi], theirs[theirs.roi])


def _write_n5(path, raw, labels):
    store = zarr.N5FSStore(str(path))
    root = zarr.open_group(store, mode="a")
    for name, data in (("volumes/raw", raw), ("volumes/labels/neuron_ids", labels)):
        if name in root:
            root[name][:] = data
        else:
            root.create_dataset(name, data=data, chunks=(32, 64, 64))
        root[name].attrs["resolution"] = [10, 10, 10]  # x, y, z, as N5 writers store it
        root[name].attrs["offset"] = [0, 0, 0]


def test_a_changed_acquisition_recomputes_everything_downstream(prefect_api, tmp_path, gala_test, tiny_model):
    from lsdflow.flows.process_acquisition import process_acquisition

    landing = tmp_path / "landing"
    landing.mkdir()
    raw = open_array(gala_test, "volumes/raw")
    labels = open_array(gala_test, "volumes/labels/neuron_ids")
    raw, labels = raw[raw.roi], labels[labels.roi]
    n5 = landing / "acquisition.n5"
    _write_n5(n5, raw, labels)
    kwargs = dict(path=str(n5), config_name="gala", model=str(tiny_model), overrides=[*TINY, *BLOCKS],
                  thresholds=[0.3], output=str(tmp_path / "out" / "acquisition.zarr"),
                  workspace=str(tmp_path / "ws"), data_roots=[str(landing)])
    first = process_acquisition(**kwargs, return_state=True)
    assert first.is_completed(), first
    assert set(_task_states(process_acquisition(**kwargs, return_state=True)).values()) == {"Cached"}
    before = first.result()["best"]

    _write_n5(n5, 255 - raw, np.ones_like(labels))  # new microscope data, new labels
    second = process_acquisition(**kwargs, return_state=True)
    assert second.is_completed(), second
    states = _task_states(second)
    assert states["convert"] == "Completed" and states["predict"] == "Completed"
    assert states["evaluate"] == "Completed"
    out = tmp_path / "out" / "acquisition.zarr"
    converted = open_array(out, "volumes/raw")
    assert np.array_equal(converted[converted.roi], 255 - raw)
    after = second.result()["best"]
    assert after["voi_merge"] == pytest.approx(0.0) and after != before  # one label: nothing can be merged wrongly


def _write_hdf5(path, container) -> None:
    """`container`'s raw and labels as an HDF5 acquisition in the CREMI layout."""
    import h5py

    with h5py.File(path, "w") as f:
        for name in ("volumes/raw", "volumes/labels/neuron_ids"):
            array = open_array(container, name)
            f[name] = array[array.roi]
            f[name].attrs["resolution"] = tuple(array.voxel_size)
            f[name].attrs["offset"] = tuple(array.roi.offset)
