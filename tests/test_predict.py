"""In-memory prediction into Zarr: shapes, ROI, metadata, and bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import zarr

from lsdflow.cli.main import main as cli
from lsdflow.core.config import ConfigError, load_config
from lsdflow.core.io.convert import convert
from lsdflow.core.io.volumes import VolumeError, list_datasets, open_array
from lsdflow.core.model.checkpoints import export_model
from lsdflow.core.model.networks import build_model
from lsdflow.core.predict.blockwise import predict_volume


@pytest.fixture
def gala_copy(tmp_path, gala_test):
    return shutil.copytree(gala_test, tmp_path / "gala_test.zarr")


def test_predict_anisotropic_float32_with_offset(tmp_path, gala_test):
    data = convert(gala_test, tmp_path / "aniso.zarr", voxel_size=(40, 4, 4), offset=(400, 40, 80), progress=False)
    config = load_config(
        "cremi",
        ["model.num_fmaps=2", "model.fmap_inc_factor=2", "model.input_shape=[66, 136, 136]",
         "prediction.input_shape=[114, 232, 232]"],
        workspace=tmp_path / "ws",
    )
    torch.manual_seed(0)
    checkpoint = tmp_path / "model_checkpoint_0"
    torch.save({"model_state_dict": build_model(config.model).state_dict()}, checkpoint)
    model_file = export_model(checkpoint, config, tmp_path / "model.pt", 0)
    written = predict_volume(config, data, model_file=model_file, output_dtype="float32", progress=False)
    affs = open_array(data, "volumes/pred_affs")
    assert set(written) == {"lsds", "affs"}
    assert affs.dtype == np.float32 and affs.shape == (3, 50, 100, 200)
    assert tuple(affs.offset) == (400, 40, 80) and tuple(affs.voxel_size) == (40, 4, 4)
    values = affs[affs.roi]
    assert 0 <= values.min() and values.max() <= 1


def test_bad_input_writes_nothing(tmp_path, gala_copy):
    config = load_config("gala")
    before = list_datasets(gala_copy)
    with pytest.raises(VolumeError, match="volumes/raw"):
        predict_volume(config.model_copy(update={"data": config.data.model_copy(update={"raw_dataset": "volumes/nope"})}), gala_copy, progress=False)
    with pytest.raises(ConfigError, match="data.voxel_size"):
        predict_volume(load_config("gala", ["data.voxel_size=[8, 8, 8]", "data.validation=[]", "data.test=[]"]), gala_copy, progress=False)
    with pytest.raises(FileNotFoundError):
        predict_volume(config, gala_copy, model_file=tmp_path / "missing.pt", progress=False)
    assert list_datasets(gala_copy) == before


def test_a_volume_that_does_not_fit_in_memory_is_refused_with_the_blockwise_command(gala_copy, monkeypatch, capsys):
    """gala_test (1 M voxels) against a 0.1 GB allowance: refused before anything is read
    or written, with the command that handles it."""
    before = list_datasets(gala_copy)
    monkeypatch.setenv("LSDFLOW_MEMORY_LIMIT_GB", "0.1")
    assert cli(["predict", "gala", str(gala_copy), "--quiet", "--workspace", str(gala_copy.parent / "ws")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lsdflow: error: ") and f"{gala_copy}/volumes/raw" in error
    assert "0.3 GB" in error and "0.1 GB are available" in error  # 1 M voxels x 256 B with test-time augmentation
    assert f"lsdflow predict gala {gala_copy} --blockwise" in error
    assert list_datasets(gala_copy) == before
    monkeypatch.setenv("LSDFLOW_MEMORY_LIMIT_GB", "lots")
    assert cli(["predict", "gala", str(gala_copy), "--quiet", "--workspace", str(gala_copy.parent / "ws")]) == 2
    assert "LSDFLOW_MEMORY_LIMIT_GB='lots': expected a number of gigabytes" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_segment_evaluate_from_the_command_line(gala_copy, tmp_path, capsys):
    """The small-volume path with the shipped model writes well-described predictions and
    beats a bad segmentation clearly. One pass per tile (test-time augmentation, 8x slower,
    is tested in test_blockwise_predict and test_checkpoint_selection)."""
    assert cli(["predict", "gala", str(gala_copy), "--quiet", "--set", "prediction.test_time_augmentation=false",
                "--workspace", str(tmp_path / "ws")]) == 0
    assert "volumes/pred_affs" in capsys.readouterr().out
    raw = open_array(gala_copy, "volumes/raw")
    affs = open_array(gala_copy, "volumes/pred_affs")
    lsds = open_array(gala_copy, "volumes/pred_lsds")
    assert affs.shape == (3, 50, 100, 200) and lsds.shape == (10, 50, 100, 200)
    assert affs.dtype == np.uint8
    assert affs.roi == raw.roi and tuple(affs.voxel_size) == (10, 10, 10)
    attrs = zarr.open(str(gala_copy / "volumes/pred_affs")).attrs
    # the shipped model (data/pretrained/gala_mtlsd.pt): one checkpoint, no weight averaging
    assert attrs["model_iteration"] == 13750
    assert "model_averaged_iterations" not in attrs
    assert attrs["test_time_augmentation"] is False  # as asked
    assert attrs["model_file"].endswith("gala_mtlsd.pt")
    assert attrs["value_scale"] == 255
    assert not [d for d in list_datasets(gala_copy) if "partial" in d]

    assert cli(["segment", "gala", str(gala_copy), "--thresholds", "0.05", "0.1", "0.2"]) == 0
    assert cli(["evaluate", "gala", str(gala_copy), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "<- best" in out and "voi_vs_threshold.png" in out
    import json

    best = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["best"]
    assert best["voi_sum"] < 2.0 and best["arand"] < 0.5


def test_a_model_file_that_carries_its_validation_threshold_sets_the_default_threshold(tmp_path, gala_test, tiny_model):
    """The shipped medulla model carries the threshold chosen on medulla validation; a
    volume predicted with such a file is segmented at that threshold unless told otherwise."""
    from lsdflow.core.model.checkpoints import load_model, write_model_file
    from lsdflow.core.segment.threshold_selection import default_thresholds

    from .conftest import TINY

    _, shipped = load_model(load_config("medulla").prediction.checkpoint)
    assert shipped["best_threshold"] == 0.2 and len(shipped["intensity_reference"]) > 0
    state = torch.load(tiny_model, map_location="cpu", weights_only=False)["model_state_dict"]
    config = load_config("gala", [*TINY, "prediction.test_time_augmentation=false"])
    model_file = write_model_file(state, config, tmp_path / "with_threshold.pt", 0, best_threshold=0.3)
    volume = shutil.copytree(gala_test, tmp_path / "v.zarr")
    predict_volume(config, volume, model_file, progress=False)
    assert default_thresholds(volume, "volumes/pred_affs", [0.1, 0.5]) == [0.3]
