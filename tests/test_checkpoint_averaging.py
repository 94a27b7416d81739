"""Weight averaging of a run's consecutive checkpoints, and averaged candidates in the
checkpoint selection."""

from __future__ import annotations

import pytest
import torch
import zarr

from lsdflow.core.config import load_config
from lsdflow.core.evaluate.checkpoint_selection import candidate_name, format_selection, select_checkpoint
from lsdflow.core.model.checkpoint_averaging import average_state_dicts, averaging_windows, write_averaged_model
from lsdflow.core.model.checkpoints import describe_model, load_model, save_training_checkpoint
from lsdflow.core.model.networks import build_model

from .test_checkpoint_selection import PLAIN, VALIDATION, run_dir  # noqa: F401 - the shared fixture


def _weights(path) -> dict:
    return torch.load(path, weights_only=True)["model_state_dict"]


def test_the_average_is_the_mean_of_the_weights(run_dir):  # noqa: F811
    paths = [run_dir / "model_checkpoint_100", run_dir / "model_checkpoint_200"]
    averaged = average_state_dicts(paths)
    first, second = (_weights(p) for p in paths)
    assert averaged.keys() == first.keys()
    for key, value in averaged.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, (first[key] + second[key]) / 2)


def test_windows_hold_consecutive_checkpoints_of_the_run(run_dir):  # noqa: F811
    assert [[i for i, _ in w] for w in averaging_windows(run_dir, [100, 200], 2)] == [[100, 200]]
    assert averaging_windows(run_dir, [200], 3) == []  # would reach before the run's start
    assert [[i for i, _ in w] for w in averaging_windows(run_dir, [200], 1)] == [[200]]


def test_an_averaged_model_file_loads_with_its_lineage(run_dir, tmp_path):  # noqa: F811
    window = averaging_windows(run_dir, [200], 2)[0]
    out = write_averaged_model(window, load_config("gala"), tmp_path / "avg.pt")
    model, meta = load_model(out)
    assert meta["iteration"] == 200 and meta["averaged_iterations"] == [100, 200]
    assert describe_model(meta) == "average of iterations 100..200 (2)"
    assert describe_model(load_model(window[-1][1])[1]) == "iteration 200"
    expected = average_state_dicts([p for _, p in window])
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_checkpoints_of_different_networks_are_not_averaged(run_dir, tmp_path):  # noqa: F811
    trained, _ = load_model(run_dir / "model_checkpoint_200")
    other = build_model(trained.config.model_copy(update={"num_fmaps": 5}))
    path = save_training_checkpoint(tmp_path, 300, other, torch.optim.Adam(other.parameters()))
    (tmp_path / "config.json").write_text(
        load_config("gala").with_model(other.config).model_dump_json())
    with pytest.raises(ValueError, match="not the same network"):
        average_state_dicts([run_dir / "model_checkpoint_200", path])
    with pytest.raises(ValueError, match="no checkpoints"):
        average_state_dicts([])


def test_selection_scores_averaged_weights_as_candidates(run_dir, tmp_path):  # noqa: F811
    config = load_config("gala", [VALIDATION, PLAIN], workspace=tmp_path / "ws")
    result = select_checkpoint(config, run_dir, first=150, average=2, out_dir=tmp_path / "sel", progress=False)
    rows = result["rows"]
    assert [(r["iteration"], r["averaged_iterations"]) for r in rows] == [(200, None), (200, [100, 200])]
    averaged = rows[1]
    assert averaged["checkpoint"].endswith("model_average_100-200.pt")
    # half untrained weights: a different (and here worse) network than the trained one
    assert averaged["voi_sum"] != rows[0]["voi_sum"]
    assert result["best"] == min(rows, key=lambda r: r["voi_sum"])
    assert candidate_name(averaged) == "average of 100..200 (2 checkpoints)"
    assert "100..200" in format_selection(result)
    # the prediction made with the averaged weights (the last candidate) says so
    attrs = zarr.open(str(tmp_path / "sel" / "gala_test.zarr" / "volumes" / "pred_affs")).attrs
    assert attrs["model_averaged_iterations"] == [100, 200] and attrs["model_iteration"] == 200
