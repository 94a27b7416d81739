"""Choosing a run's checkpoint and segmentation settings on a validation region."""

from __future__ import annotations

import json

import pytest
import torch

from lsdflow.core.config import load_config
from lsdflow.core.evaluate.checkpoint_selection import (
    segmentation_grid,
    select_checkpoint,
)
from lsdflow.core.model.checkpoints import load_model, save_training_checkpoint
from lsdflow.core.model.networks import build_model

from .conftest import ROOT

SHIPPED = ROOT / "data" / "pretrained" / "gala_mtlsd.pt"
PLAIN = "prediction.test_time_augmentation=false"  # one pass: 8x faster; both are compared below
VALIDATION = ('data.validation=[{path="../data/gala/gala_test.zarr", '
              'roi_offset_nm=[0, 0, 0], roi_shape_nm=[500, 1000, 1000]}]')


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run's checkpoint directory: an untrained network at 100, the shipped
    weights at 200 (the same network)."""
    directory = tmp_path_factory.mktemp("run") / "checkpoints"
    directory.mkdir()
    trained, meta = load_model(SHIPPED)
    (directory / "config.json").write_text(load_config("gala").with_model(trained.config).model_dump_json())
    torch.manual_seed(0)
    untrained = build_model(trained.config)
    for iteration, model in ((100, untrained), (200, trained)):
        save_training_checkpoint(directory, iteration, model, torch.optim.Adam(model.parameters()))
    return directory


def test_the_best_checkpoint_and_setting_win_on_the_validation_region(run_dir, tmp_path):
    config = load_config("gala", [VALIDATION, PLAIN], workspace=tmp_path / "ws")
    grid = segmentation_grid(config, min_seed_distances=[5, 10])
    result = select_checkpoint(config, run_dir, grid=grid, out_dir=tmp_path / "sel", progress=False)
    assert [(r["iteration"], r["min_seed_distance"]) for r in result["rows"]] == [(100, 5), (100, 10), (200, 5), (200, 10)]
    best = result["best"]
    assert best["iteration"] == 200 and best == min(result["rows"], key=lambda r: r["voi_sum"])
    untrained = min(r["voi_sum"] for r in result["rows"] if r["iteration"] == 100)
    assert best["voi_sum"] < untrained - 0.5
    assert "shape (500, 1000, 1000) nm" in result["volume"]
    assert json.loads((tmp_path / "sel" / "selection.json").read_text())["best"]["iteration"] == 200
    assert (tmp_path / "sel" / "checkpoint_scores.png").stat().st_size > 10_000
    # `first` skips early checkpoints; predictions with and without test-time augmentation
    only_last = select_checkpoint(config, run_dir, first=150, out_dir=tmp_path / "sel2", progress=False,
                                  augmentations=(False, True))
    assert [(r["iteration"], r["test_time_augmentation"]) for r in only_last["rows"]] == [(200, False), (200, True)]
    assert only_last["rows"][0] == next(r for r in result["rows"] if (r["iteration"], r["min_seed_distance"]) == (200, 10))
    assert only_last["rows"][1]["voi_sum"] != only_last["rows"][0]["voi_sum"]


def test_selection_needs_checkpoints_and_a_validation_volume(run_dir, tmp_path):
    config = load_config("gala", ["data.validation=[]"], workspace=tmp_path / "ws")
    with pytest.raises(Exception, match="data.validation is empty"):
        select_checkpoint(config, run_dir, progress=False)
    config = load_config("gala", [VALIDATION], workspace=tmp_path / "ws")
    with pytest.raises(FileNotFoundError, match="no training checkpoints"):
        select_checkpoint(config, run_dir, first=1000, progress=False)


@pytest.mark.slow
def test_select_register_promote_from_the_command_line(run_dir, tmp_path, monkeypatch, capsys):
    """`lsdflow select-checkpoint --register` makes the winner the challenger with its
    validation scores; `promote` then makes it champion; the region is on record."""
    from lsdflow.cli.main import main
    from lsdflow.registry.registration import resolve_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / "ws"
    args = ["gala", "--set", VALIDATION, "--set", PLAIN, "--workspace", str(workspace)]
    assert main(["select-checkpoint", *args, "--checkpoints", str(run_dir), "--min-seed-distances", "5", "10",
                 "--register", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "<- best" in out and "as @challenger" in out
    assert main(["promote", *args]) == 0
    champion = resolve_model("models:/mtlsd-gala@champion", workspace)
    assert champion.tags["model_iteration"] == "200"
    assert "roi" not in champion.tags and "shape (500, 1000, 1000) nm" in champion.tags["validation_volume"]
    assert champion.tags["evaluation_settings"].startswith("test_time_augmentation False, hist_quant_50, min_seed_distance ")
