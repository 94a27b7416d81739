"""Change and identity: a result is reused only for the same content of the same
container. Defects 1-3 of the reliability issue, each reproduced first."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr

from lsdflow.core.blockwise.runner import RunSettings
from lsdflow.core.config import load_config
from lsdflow.core.io.volumes import dataset_fingerprint, open_array
from lsdflow.core.predict.blockwise import predict_blockwise
from lsdflow.core.segment.blockwise import segment_blockwise

from .conftest import BLOCKS, TINY

QUIET = RunSettings(workers=2, progress=False)


def _invert_in_place(container, dataset="volumes/raw"):
    array = zarr.open(str(container / dataset), mode="r+")
    array[:] = 255 - array[:]


def test_fingerprint_sees_chunks_at_any_nesting(gala_copy):
    container = gala_copy(gt_affs=False)
    meta = zarr.open(str(container / "volumes/raw")).attrs.asdict()
    assert zarr.open(str(container / "volumes/raw"))._dimension_separator == "/"  # nested chunk keys
    before = dataset_fingerprint(container, "volumes/raw")
    _invert_in_place(container)
    assert zarr.open(str(container / "volumes/raw")).attrs.asdict() == meta
    assert dataset_fingerprint(container, "volumes/raw") != before


def test_raw_rewritten_in_place_recomputes_the_blockwise_prediction(gala_copy, tiny_model):
    container = gala_copy(gt_affs=False)
    config = load_config("gala", [*TINY, *BLOCKS])
    predict_blockwise(config, container, model_file=tiny_model, settings=QUIET)
    _invert_in_place(container)
    again = predict_blockwise(config, container, model_file=tiny_model, settings=QUIET)
    assert not again["stage"].get("up_to_date")
    # equal to a fresh prediction of the rewritten raw data
    fresh = gala_copy("fresh.zarr", source=container, gt_affs=False)
    for name in ("pred_affs", "pred_lsds"):
        shutil.rmtree(fresh / "volumes" / name)
    predict_blockwise(config, fresh, model_file=tiny_model, settings=QUIET)
    a, b = open_array(container, "volumes/pred_affs"), open_array(fresh, "volumes/pred_affs")
    assert np.array_equal(a[a.roi], b[b.roi])


def test_affinities_rewritten_in_place_recompute_every_segmentation_stage(gala_copy, tmp_path):
    container = gala_copy()
    config = load_config("gala", BLOCKS)
    graph = f"sqlite:///{tmp_path / 'graph.db'}"
    segment_blockwise(config, container, graph_url=graph, thresholds=[0.5], settings=QUIET)
    first = open_array(container, "volumes/segmentation/hist_quant_50/0.5")
    first = first[first.roi]
    affs = zarr.open(str(container / "volumes/pred_affs"), mode="r+")
    affs[:, :, :, 100] = 0  # a new boundary through the middle of the volume
    second = segment_blockwise(config, container, graph_url=graph, thresholds=[0.5], settings=QUIET)
    assert not any(stage.get("up_to_date") for stage in second["stages"].values())
    seg = open_array(container, "volumes/segmentation/hist_quant_50/0.5")
    seg = seg[seg.roi]
    assert not np.array_equal(seg, first)
    # equal to a fresh run on the new affinities, in a new container with its own graph
    fresh = gala_copy("fresh.zarr", source=container, gt_affs=False)
    for name in ("fragments", "segmentation"):
        shutil.rmtree(fresh / "volumes" / name)
    segment_blockwise(config, fresh, graph_url=f"sqlite:///{tmp_path / 'fresh.db'}", thresholds=[0.5],
                      settings=QUIET)
    expected = open_array(fresh, "volumes/segmentation/hist_quant_50/0.5")
    assert np.array_equal(seg, expected[expected.roi])


@pytest.mark.slow
def test_two_containers_with_equal_names_and_one_graph_server_at_once_are_both_correct(
        gala_copy, mongodb_url, tmp_path, gala_train):
    """The documented multi-node setup: one MongoDB, volumes with the same basename."""
    one = gala_copy("a/vol.zarr")
    two = gala_copy("b/vol.zarr", source=gala_train)
    alone = gala_copy("c/vol.zarr", source=gala_train)
    config = load_config("gala", BLOCKS)
    segment_blockwise(config, alone, graph_url=f"sqlite:///{tmp_path / 'alone.db'}", thresholds=[0.1],
                      settings=QUIET)
    lsdflow = [sys.executable, "-m", "lsdflow.cli"]
    runs = [subprocess.Popen([*lsdflow, "segment", "gala", str(c), "--blockwise", "--graph", mongodb_url,
                              "--thresholds", "0.1", "--workers", "1", "--quiet",
                              *[a for s in BLOCKS for a in ("--set", s)]],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in (one, two)]
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
    for container, reference in ((two, alone), (one, None)):
        seg = open_array(container, "volumes/segmentation/hist_quant_50/0.1")
        labels = open_array(container, "volumes/labels/neuron_ids")
        seg, labels = seg[seg.roi], labels[labels.roi]
        if reference is not None:
            expected = open_array(reference, "volumes/segmentation/hist_quant_50/0.1")
            assert np.array_equal(seg, expected[expected.roi])
        # ground-truth affinities: each segment lies in one neuron
        from lsdflow.core.evaluate.metrics import segmentation_scores

        assert segmentation_scores(labels, seg).voi_merge < 0.05


def test_the_same_inputs_in_another_container_are_computed_there(gala_copy, tmp_path):
    """Equal metadata, equal file names, one graph URL: the second is not 'up to date'."""
    one = gala_copy("a/vol.zarr")
    two = gala_copy("b/vol.zarr")
    config = load_config("gala", BLOCKS)
    graph = f"sqlite:///{tmp_path / 'graph.db'}"
    segment_blockwise(config, one, graph_url=graph, thresholds=[0.5], settings=QUIET)
    result = segment_blockwise(config, two, graph_url=graph, thresholds=[0.5], settings=QUIET)
    assert not any(stage.get("up_to_date") for stage in result["stages"].values())
    assert (two / "volumes/segmentation/hist_quant_50/0.5").is_dir()
    a = open_array(one, "volumes/segmentation/hist_quant_50/0.5")
    b = open_array(two, "volumes/segmentation/hist_quant_50/0.5")
    assert np.array_equal(a[a.roi], b[b.roi])
