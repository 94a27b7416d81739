"""Blockwise prediction with the shipped model on real gala data."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from lsdflow.cli.main import main
from lsdflow.core.blockwise.runner import RunSettings
from lsdflow.core.config import load_config
from lsdflow.core.io.volumes import list_datasets, open_array, write_array
from lsdflow.core.predict.blockwise import (
    predict_blockwise,
    predict_volume,
    prediction_key,
)

QUIET = RunSettings(workers=2, progress=False)
# one pass per tile (the shipped config averages 8 mirrorings; tested on its own below)
PLAIN = ["prediction.test_time_augmentation=false"]


@pytest.fixture
def volume(tmp_path, gala_test):
    container = tmp_path / "gala.zarr"
    shutil.copytree(gala_test, container)
    return container


def test_blockwise_prediction_equals_the_in_memory_path(volume, tmp_path):
    config = load_config("gala", PLAIN)  # 72^3-voxel blocks: 6 blocks on gala_test
    assert main(["predict", "gala", str(volume), "--blockwise", "--workers", "2", "--quiet", "--set", PLAIN[0],
                 "--workspace", str(tmp_path / "ws")]) == 0  # no registry there: the config's model file
    reference = tmp_path / "reference.zarr"
    shutil.copytree(volume, reference, ignore=shutil.ignore_patterns("pred_*", ".lsdflow"))
    predict_volume(config, reference, progress=False)
    for name in ("pred_affs", "pred_lsds"):
        ours = open_array(volume, f"volumes/{name}")
        theirs = open_array(reference, f"volumes/{name}")
        assert ours.roi == theirs.roi and ours.voxel_size == theirs.voxel_size
        assert np.abs(ours[ours.roi].astype(int) - theirs[theirs.roi].astype(int)).max() <= 1
    attrs = zarr.open(str(volume / "volumes/pred_affs")).attrs
    from lsdflow.core.model.checkpoints import load_model

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
    config = load_config("gala", [*PLAIN, 'blockwise.mask_dataset="volumes/masks/tissue"'])
    result = predict_blockwise(config, volume, settings=QUIET)
    stage = result["stage"]
    assert stage["blocks"] == 6 and stage["skipped"] == 4 and stage["processed"] == 2
    affs = open_array(volume, "volumes/pred_affs")
    data = affs[affs.roi]
    assert data[:, :, :, 72:].max() == 0 and data[:, :, :, :72].max() > 0


def test_a_missing_model_writes_nothing(volume, tmp_path):
    config = load_config("gala", PLAIN)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        predict_blockwise(config, volume, model_file=tmp_path / "no-such-model.pt", settings=QUIET)
    assert not (volume / "volumes/pred_affs").exists()
    assert not list((volume / "volumes").glob(".pred_*"))


@pytest.mark.slow
def test_blockwise_test_time_augmentation_equals_the_in_memory_path(tmp_path, gala_test, tiny_model):
    """Mirrored affinities need voxels beyond each block: blocks read them (a margin of
    whole downsampling steps), so block faces get the same 8-pass average as the in-memory
    path. Two blocks of a crop of gala_test; an untrained network of the shipped
    architecture (the margin depends on the architecture, not the weights)."""
    from funlib.geometry import Roi

    from .conftest import TINY

    config = load_config("gala", [*TINY, "prediction.test_time_augmentation=true"])  # 36^3-voxel blocks
    raw = open_array(gala_test, "volumes/raw")
    crop = Roi((0, 0, 0), (360, 360, 720))
    for name in ("blocks.zarr", "memory.zarr"):
        write_array(tmp_path / name, "volumes/raw", crop, raw.voxel_size, raw[crop])
    summary = predict_blockwise(config, tmp_path / "blocks.zarr", tiny_model, settings=QUIET)["stage"]
    assert summary["blocks"] == 2, summary
    predict_volume(config, tmp_path / "memory.zarr", tiny_model, progress=False)
    for name in ("pred_affs", "pred_lsds"):
        ours, theirs = open_array(tmp_path / "blocks.zarr", f"volumes/{name}"), open_array(tmp_path / "memory.zarr", f"volumes/{name}")
        assert np.abs(ours[ours.roi].astype(int) - theirs[theirs.roi].astype(int)).max() <= 1, name
    assert zarr.open(str(tmp_path / "blocks.zarr" / "volumes/pred_affs")).attrs["test_time_augmentation"] is True
    plain = load_config("gala", [*TINY, *PLAIN])
    assert prediction_key(config, tmp_path / "blocks.zarr", tiny_model) != prediction_key(
        plain, tmp_path / "blocks.zarr", tiny_model)


def test_the_small_volume_path_is_the_predict_stage_with_one_block(volume, tmp_path):
    """`predict_volume` runs the deployed stage (its key, its record of completion): a rerun
    with the same inputs has nothing to do; `--output` writes into another container."""
    from lsdflow.core.blockwise.grid import grid_blocks
    from lsdflow.core.blockwise.outputs import KEY_ATTR
    from lsdflow.core.predict.blockwise import PredictStage

    config = load_config("gala", PLAIN)
    out = tmp_path / "out.zarr"
    predict_volume(config, volume, output=out, progress=False)
    stage = PredictStage.for_volume(config, volume, output=out, one_block=True)
    assert len(grid_blocks(stage.total_roi(), stage.block_size())) == 1  # the whole volume, one block
    affs = out / "volumes/pred_affs"
    assert zarr.open(str(affs)).attrs[KEY_ATTR] == stage.key()
    assert not (volume / "volumes/pred_affs").exists()  # the raw data's container untouched
    before = affs.stat().st_mtime_ns, sorted(p.name for p in affs.iterdir())
    predict_volume(config, volume, output=out, progress=False)
    assert (affs.stat().st_mtime_ns, sorted(p.name for p in affs.iterdir())) == before
