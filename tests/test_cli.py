"""The `lsdflow` command line: config show, errors, and the demo (reduced and real)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lsdflow.cli.main import main as cli
from lsdflow.core.config import load_config
from lsdflow.core.demo import run_demo

from .conftest import ROOT, TINY_NET


def test_config_show_prints_derived_shapes_in_voxels_and_nm(capsys):
    assert cli(["config", "show", "cremi"]) == 0
    out = capsys.readouterr().out
    assert "output (voxels | nm)   (72, 144, 144) | (2880, 576, 576)" in out
    assert "input  (voxels | nm)   (132, 268, 268) | (5280, 1072, 1072)" in out
    assert "anisotropic: True" in out
    assert "[training]" in out and '"transpose_axes": [1, 2]' in out


def test_config_show_json(capsys):
    assert cli(["config", "show", "gala", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["derived"]["output_shape_voxels"] == [32, 32, 32]
    assert payload["config"]["data"]["voxel_size"] == [10, 10, 10]


def test_a_bad_config_is_an_error_message_not_a_traceback(capsys):
    assert cli(["config", "show", "fib25", "--set", "model.input_shape=[190, 196, 196]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lsdflow: error: invalid config")
    assert "model.input_shape" in err and "nearest valid z sizes" in err


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "lsdflow"
    out = subprocess.run([str(exe), "config", "list"], capture_output=True, text=True, check=True)
    assert "cremi" in out.stdout and "gala" in out.stdout


def test_demo_reduced_retrains_a_tiny_network(tmp_path, capsys):
    args = ["demo", "--train", "--iterations", "2", "--quiet", "--workspace", str(tmp_path)]
    for override in TINY_NET:
        args += ["--set", override]
    args += ["--set", "prediction.input_shape=[100, 100, 100]"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "ROC AUC" in out and "picture:" in out
    assert "VOI split" in out and "<- best" in out
    # scored on the config's test region; the threshold is also chosen on the validation region
    assert "offset (0, 0, 1000) nm" in out and "threshold chosen on the validation region" in out
    assert (tmp_path / "demo" / "evaluation" / "evaluation.json").is_file()
    assert (tmp_path / "demo" / "affinities.png").stat().st_size > 10_000
    assert (tmp_path / "demo" / "model.pt").is_file()


@pytest.mark.slow
def test_shipped_pretrained_model_is_clearly_better_than_chance(tmp_path):
    checkpoint = ROOT / "data" / "pretrained" / "gala_mtlsd.pt"
    assert checkpoint.stat().st_size < 10 * 2**20  # a few MB, fine in git
    # one pass per tile (8x faster than the config's test-time augmentation; not what is tested here)
    config = load_config("gala", ["prediction.test_time_augmentation=false"], workspace=tmp_path)
    report = run_demo(config, progress=False)
    assert report["untrained"]["roc_auc"] == pytest.approx(0.5, abs=0.05)
    assert report["pretrained"]["roc_auc"] > 0.8
    assert report["pretrained"]["balanced_accuracy"] > 0.7
