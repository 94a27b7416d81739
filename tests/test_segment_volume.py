"""segment_volume (the segmentation stages, the volume as one block) on Zarr: outputs with
metadata, and bad affinities give clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lsdflow.core.config import load_config
from lsdflow.core.evaluate.metrics import segmentation_scores
from lsdflow.core.io.volumes import VolumeError, create_array, list_datasets, open_array
from lsdflow.core.segment.blockwise import segment_volume
from lsdflow.core.train.affinities import labels_to_affinities

GALA = load_config("gala")


@pytest.fixture
def gala_with_gt_affs(tmp_path, gala_test):
    container = shutil.copytree(gala_test, tmp_path / "g.zarr")
    labels = open_array(container, "volumes/labels/neuron_ids")
    affs = labels_to_affinities(labels[labels.roi], [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
    out = create_array(container, "volumes/gt_affs", labels.roi, labels.voxel_size, np.float32, num_channels=3)
    out[out.roi] = affs
    return container


def test_segment_volume_writes_fragments_and_segmentations(gala_with_gt_affs):
    result = segment_volume(GALA, gala_with_gt_affs, "volumes/gt_affs", thresholds=[0.3, 0.5])
    datasets = list_datasets(gala_with_gt_affs)
    assert "volumes/fragments" in datasets
    assert "volumes/segmentation/hist_quant_50/0.5" in datasets
    seg = open_array(gala_with_gt_affs, "volumes/segmentation/hist_quant_50/0.5")
    labels = open_array(gala_with_gt_affs, "volumes/labels/neuron_ids")
    assert seg.roi == labels.roi and seg.dtype == np.uint64
    assert segmentation_scores(labels[labels.roi], seg[seg.roi]).voi_sum <= 0.05
    assert not [d for d in datasets if "partial" in d]
    assert set(result["segmentations"]) == {0.3, 0.5}


def test_segment_volume_runs_the_blockwise_stages_with_one_block(gala_with_gt_affs):
    """What validation selects is what is deployed: the small-volume path's outputs are the
    segmentation stages' (their keys, their records of completion), and a rerun with the
    same inputs finds every stage up to date."""
    import zarr

    from lsdflow.core.blockwise.outputs import KEY_ATTR
    from lsdflow.core.segment.blockwise import BlockwiseSegmentation

    result = segment_volume(GALA, gala_with_gt_affs, "volumes/gt_affs", thresholds=[0.3, 0.5])
    job = BlockwiseSegmentation(GALA, gala_with_gt_affs, "volumes/gt_affs", one_block=True)
    assert job.fragments_stage.total_roi().shape == job.fragments_stage.block_size()
    assert zarr.open(str(gala_with_gt_affs / "volumes/fragments")).attrs[KEY_ATTR] == job.fragments_key
    assert job.relabel_done([0.3, 0.5]) is not None
    assert result["stages"]["fragments"]["blocks"] == 1
    again = segment_volume(GALA, gala_with_gt_affs, "volumes/gt_affs", thresholds=[0.3, 0.5])
    assert all(again["stages"][s].get("up_to_date") for s in ("fragments", "agglomerate", "relabel"))


@pytest.mark.parametrize("case, message", [
    ("missing", "dataset 'volumes/pred_affs' not found"),
    ("channels", "expected affinities"),
    ("nan", "NaN"),
])
def test_bad_affinities_give_a_clear_error_and_write_nothing(gala_with_gt_affs, case, message):
    container = gala_with_gt_affs
    labels = open_array(container, "volumes/labels/neuron_ids")
    if case == "channels":
        out = create_array(container, "volumes/pred_affs", labels.roi, labels.voxel_size, np.float32, num_channels=2)
        out[out.roi] = np.ones(out.shape, np.float32)
    elif case == "nan":
        out = create_array(container, "volumes/pred_affs", labels.roi, labels.voxel_size, np.float32, num_channels=3)
        data = np.ones(out.shape, np.float32)
        data[0, 3, 3, 3] = np.nan
        out[out.roi] = data
    before = list_datasets(container)
    with pytest.raises(VolumeError, match=message) as e:
        segment_volume(GALA, container, "volumes/pred_affs")
    assert str(container) in str(e.value)
    assert list_datasets(container) == before


def test_evaluate_volume_reports_every_threshold_and_the_best(gala_with_gt_affs, tmp_path):
    from lsdflow.core.evaluate.scores import evaluate_volume, format_scores

    segment_volume(GALA, gala_with_gt_affs, "volumes/gt_affs", thresholds=[0.3, 0.5, 0.7])
    report = evaluate_volume(gala_with_gt_affs, out_dir=tmp_path / "eval")
    assert [r["threshold"] for r in report["scores"]] == [0.3, 0.5, 0.7]
    assert report["best"]["voi_sum"] <= 0.05
    assert (tmp_path / "eval" / "evaluation.json").is_file()
    assert all(Path(p).stat().st_size > 5000 for p in report["pictures"])
    assert len(report["pictures"]) == 2
    assert "<- best" in format_scores(report)


def test_evaluate_refuses_a_segmentation_on_another_roi(gala_with_gt_affs, tmp_path):
    from funlib.geometry import Roi

    from lsdflow.core.evaluate.scores import evaluate_volume

    labels = open_array(gala_with_gt_affs, "volumes/labels/neuron_ids")
    seg = create_array(gala_with_gt_affs, "volumes/segmentation/hist_quant_50/0.5",
                       Roi((0, 0, 0), (400, 1000, 2000)), labels.voxel_size, np.uint64)
    with pytest.raises(VolumeError, match="do not match"):
        evaluate_volume(gala_with_gt_affs, out_dir=tmp_path / "eval")
    assert seg.roi != labels.roi and not (tmp_path / "eval").exists()  # refused before any report


def test_evaluate_refuses_labels_outside_the_raw_data(gala_with_gt_affs, tmp_path):
    """A label/raw ROI mismatch is a clear error, and no report is written."""
    from funlib.geometry import Roi

    from lsdflow.core.evaluate.scores import evaluate_volume
    from lsdflow.core.io.volumes import write_array

    segment_volume(GALA, gala_with_gt_affs, "volumes/gt_affs", thresholds=[0.5])
    raw = open_array(gala_with_gt_affs, "volumes/raw")
    smaller = Roi((0, 0, 0), (250, 1000, 2000))
    write_array(gala_with_gt_affs, "volumes/raw", smaller, raw.voxel_size, raw[smaller])
    with pytest.raises(VolumeError, match="is not inside volumes/raw"):
        evaluate_volume(gala_with_gt_affs, out_dir=tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_evaluate_scores_only_the_given_region(gala_with_gt_affs, tmp_path):
    """A validation/test region is scored on its own voxels (the segmentation covers more)."""
    from funlib.geometry import Roi

    from lsdflow.core.evaluate.scores import evaluate_volume

    segment_volume(GALA, gala_with_gt_affs, "volumes/gt_affs", thresholds=[0.5])
    seg = open_array(gala_with_gt_affs, "volumes/segmentation/hist_quant_50/0.5")
    # a segmentation that is wrong outside the region: one id for the right half
    data = seg[seg.roi]
    data[:, :, 100:] = 1
    from lsdflow.core.io.volumes import write_array

    write_array(gala_with_gt_affs, "volumes/segmentation/hist_quant_50/0.5", seg.roi, seg.voxel_size, data)
    labels = open_array(gala_with_gt_affs, "volumes/labels/neuron_ids")
    region = Roi((0, 0, 0), (500, 1000, 1000))
    report = evaluate_volume(gala_with_gt_affs, out_dir=tmp_path / "left", roi=region)
    expected = segmentation_scores(labels[region], data[:, :, :100])
    assert report["best"]["voi_sum"] == pytest.approx(expected.voi_sum) and expected.voi_sum <= 0.05
    assert report["roi"] == {"offset_nm": [0, 0, 0], "shape_nm": [500, 1000, 1000]}
    whole = evaluate_volume(gala_with_gt_affs, out_dir=tmp_path / "whole")
    assert whole["best"]["voi_sum"] > 1.0
    with pytest.raises(VolumeError, match="is not inside the labels"):
        evaluate_volume(gala_with_gt_affs, out_dir=tmp_path / "outside", roi=Roi((0, 0, 1500), (500, 1000, 1000)))
    assert not (tmp_path / "outside").exists()
