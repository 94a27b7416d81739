"""Blockwise prediction with the shipped model on real gala data."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from lsdflow.core.blockwise import RunSettings
from lsdflow.core.blockwise_predict import predict_blockwise
from lsdflow.core.cli import main
from lsdflow.core.config import load_config
from lsdflow.core.predict import predict_volume
from lsdflow.core.volumes import list_datasets, open_array, write_array

QUIET = RunSettings(workers=2, progress=False)


@pytest.fixture
def volume(tmp_path, gala_test):
    container = tmp_path / "gala.zarr"
    shutil.copytree(gala_test, container)
    return container


def test_blockwise_prediction_equals_the_in_memory_path(volume, tmp_path):
    config = load_config("gala")  # 72^3-voxel blocks: 6 blocks on gala_test
    assert main(["predict", "gala", str(volume), "--blockwise", "--workers", "2", "--quiet"]) == 0
    reference = tmp_path / "reference.zarr"
    shutil.copytree(volume, reference, ignore=shutil.ignore_patterns("pred_*", ".lsdflow"))
    predict_volume(config, reference, progress=False)
    for name in ("pred_affs", "pred_lsds"):
        ours = open_array(volume, f"volumes/{name}")
        theirs = open_array(reference, f"volumes/{name}")
        assert ours.roi == theirs.roi and ours.voxel_size == theirs.voxel_size
        assert np.abs(ours[ours.roi].astype(int) - theirs[theirs.roi].astype(int)).max() <= 1
    attrs = zarr.open(str(volume / "volumes/pred_affs")).attrs
    from lsdflow.core.checkpoints import load_model

    assert attrs["model_iteration"] == load_model(config.prediction.checkpoint)[1]["iteration"]
    assert attrs["model_file"].endswith("gala_mtlsd.pt")
    assert not [d for d in list_datasets(volume) if "partial" in d]
    again = predict_blockwise(config, volume, settings=QUIET)
    assert again["stage"].get("up_to_date")


def test_blocks_outside_the_mask_are_skipped(volume):
    raw = open_array(volume, "volumes/raw")
    mask = np.zeros(raw.shape, np.uint8)
    mask[:, :, :72] = 1  # only the first column of blocks holds tissue
    write_array(volume, "volumes/masks/tissue", raw.roi, raw.voxel_size, mask)
    config = load_config("gala", ['blockwise.mask_dataset="volumes/masks/tissue"'])
    result = predict_blockwise(config, volume, settings=QUIET)
    stage = result["stage"]
    assert stage["blocks"] == 6 and stage["skipped"] == 4 and stage["processed"] == 2
    affs = open_array(volume, "volumes/pred_affs")
    data = affs[affs.roi]
    assert data[:, :, :, 72:].max() == 0 and data[:, :, :, :72].max() > 0


def test_a_missing_model_writes_nothing(volume, tmp_path):
    config = load_config("gala")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        predict_blockwise(config, volume, model_file=tmp_path / "no-such-model.pt", settings=QUIET)
    assert not (volume / "volumes/pred_affs").exists()
    assert not list((volume / "volumes").glob(".pred_*"))
