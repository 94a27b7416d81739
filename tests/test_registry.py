"""MLflow tracking, registry, promotion and prediction by alias — real MLflow on SQLite."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import zarr

from lsdflow.cli.main import main
from lsdflow.core.config import load_config
from lsdflow.core.model.checkpoints import load_model
from lsdflow.registry.registration import load_registered_model, resolve_model
from lsdflow.registry.tracking import RegistryError

from .conftest import ROOT, TINY_NET

SHIPPED = ROOT / "data" / "pretrained" / "gala_mtlsd.pt"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "ws"


def _cli(workspace, *args) -> int:
    return main([*args, "--workspace", str(workspace)])


@pytest.mark.slow
def test_train_register_evaluate_promote_predict_by_alias(workspace, gala_test, tmp_path, capsys):
    from mlflow import MlflowClient

    overrides = [a for o in TINY_NET for a in ("--set", o)]
    plain = ("--set", "prediction.test_time_augmentation=false")  # one pass per tile: 8x faster
    # v1: the shipped model, registered on demand, evaluated, promoted (no champion yet)
    assert _cli(workspace, "register", "gala", str(SHIPPED)) == 0
    assert _cli(workspace, "evaluate-model", "gala", "@challenger", "--volume", str(gala_test), *plain, "--quiet") == 0
    assert _cli(workspace, "promote", "gala") == 0
    assert "v1 promoted: no champion yet" in capsys.readouterr().out
    # what the MLflow UI shows: the registration run carries the file's training facts; the
    # evaluation run one metric per threshold and the best, linked to the version both ways

    client = MlflowClient()
    v1 = client.get_model_version("mtlsd-gala", "1")
    registration = client.get_run(v1.run_id)
    assert registration.data.params["model_file.iteration"] == "13750"
    assert registration.data.params["model.num_fmaps"] and "13750" in registration.data.tags["mlflow.note.content"]
    evaluation = client.get_run(v1.tags["evaluation_run"])
    assert evaluation.data.tags["model_version"] == "1" and evaluation.data.tags["model_name"] == "mtlsd-gala"
    best = float(v1.tags["best_threshold"])
    assert evaluation.data.metrics[f"voi_sum_at_{best:g}"] == evaluation.data.metrics["best_voi_sum"]
    assert evaluation.info.end_time - evaluation.info.start_time > 1000  # the evaluation's duration, ms
    assert v1.description.startswith("Validation: VOI sum ")

    # v2: a tiny network trained for a few iterations: tracked, registered as challenger
    assert _cli(workspace, "train", "gala", *overrides, "--iterations", "4", "--quiet") == 0
    out = capsys.readouterr().out
    assert "registered models:/mtlsd-gala/2 as @challenger" in out
    challenger = resolve_model("models:/mtlsd-gala@challenger", workspace)
    assert challenger.version == "2"
    client = MlflowClient()
    run = client.get_run(challenger.run_id)
    assert run.data.params["model.num_fmaps"] == "4" and run.data.tags["dataset"] == "gala"
    assert "git_commit" in run.data.tags and run.data.tags["config_hash"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert any(a.endswith("model_checkpoint_4") for a in artifacts)
    assert challenger.tags["dataset"] == "gala" and challenger.tags["training_run"] == run.info.run_id

    # it loses on validation data: the promotion is refused and recorded
    assert _cli(workspace, "evaluate-model", "gala", "@challenger", "--volume", str(gala_test), *plain, "--quiet") == 0
    assert _cli(workspace, "promote", "gala", "--margin", "0.01") == 0
    assert "v2 not promoted" in capsys.readouterr().out
    assert resolve_model("models:/mtlsd-gala@champion", workspace).version == "1"
    log = [json.loads(line) for line in (workspace / "promotions.jsonl").read_text().splitlines()]
    assert [d["promoted"] for d in log] == [True, False]
    history = json.loads(resolve_model("models:/mtlsd-gala/2", workspace).tags["promotion_history"])
    assert history[-1]["promoted"] is False

    # prediction by alias records lineage; segmenting then uses the model's best threshold
    volume = tmp_path / "vol.zarr"
    shutil.copytree(gala_test, volume)
    assert _cli(workspace, "predict", "gala", str(volume), "--model", "models:/mtlsd-gala@champion", *plain, "--quiet") == 0
    attrs = zarr.open(str(volume / "volumes/pred_affs")).attrs.asdict()
    champion = resolve_model("models:/mtlsd-gala@champion", workspace)
    assert attrs["model_name"] == "mtlsd-gala" and attrs["model_version"] == "1"
    assert attrs["model_run_id"] == champion.run_id and attrs["model_config_hash"] == champion.tags["config_hash"]
    best = float(champion.tags["best_threshold"])
    assert attrs["best_threshold"] == best
    assert _cli(workspace, "segment", "gala", str(volume)) == 0
    assert (volume / f"volumes/segmentation/hist_quant_50/{best:g}").exists()

    # the default model reference comes from the config (prediction.model = ...@champion)
    other = tmp_path / "other.zarr"
    shutil.copytree(gala_test, other)
    assert _cli(workspace, "predict", "gala", str(other), *plain, "--quiet") == 0
    assert zarr.open(str(other / "volumes/pred_affs")).attrs["model_version"] == "1"


@pytest.mark.slow
def test_the_installed_demo_registers_the_champion_with_its_validation_scores(workspace, capsys):
    from mlflow import MlflowClient

    assert _cli(workspace, "demo", "--set", "prediction.test_time_augmentation=false", "--quiet") == 0
    out = capsys.readouterr().out
    assert "registered the shipped model as models:/mtlsd-gala/1 @champion" in out
    assert "threshold chosen on the validation region" in out
    champion = MlflowClient().get_model_version_by_alias("mtlsd-gala", "champion")
    assert champion.description.startswith("Validation (lsdflow demo") and "VOI sum" in champion.description
    registration = MlflowClient().get_run(champion.run_id)
    assert registration.data.metrics["validation_voi_sum"] > 0
    assert registration.data.params["model_file.best_threshold"] == "0.15"


def test_loading_by_alias_restores_identical_weights(workspace):
    from lsdflow.registry.registration import register_model

    config = load_config("gala", workspace=workspace)
    register_model(SHIPPED, config, workspace, alias="champion")
    model, meta, registered = load_registered_model("models:/mtlsd-gala@champion", workspace)
    original, _ = load_model(SHIPPED)
    assert isinstance(model, torch.nn.Module) and meta["iteration"] == load_model(SHIPPED)[1]["iteration"]
    for (name, a), (_, b) in zip(model.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), name
    assert registered.tags["config_hash"] and registered.tags["source_file"].endswith("gala_mtlsd.pt")


def test_each_workspace_keeps_its_own_store_and_artifacts(tmp_path, monkeypatch):
    """Artifacts go to <workspace>/mlartifacts, not ./mlruns of the current directory, and
    MLflow's exported MLFLOW_TRACKING_URI does not send a second workspace to the first store."""
    import os

    from mlflow import MlflowClient

    from lsdflow.registry.registration import register_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    for workspace in (first, second):
        registered = register_model(SHIPPED, load_config("gala", workspace=workspace), workspace)
        assert registered.uri == "models:/mtlsd-gala/1"  # a new store each time
        source = MlflowClient().get_model_version("mtlsd-gala", "1").source
        assert source.startswith((workspace / "mlartifacts").as_uri()), source
        assert "MLFLOW_TRACKING_URI" not in os.environ
    assert (first / "mlflow.db").is_file() and (second / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists()


def test_a_moved_workspace_still_resolves_its_models(workspace, tmp_path):
    from lsdflow.registry.registration import register_model

    register_model(SHIPPED, load_config("gala", workspace=workspace), workspace, alias="champion")
    moved = tmp_path / "moved" / "ws"
    moved.parent.mkdir()
    shutil.move(str(workspace), str(moved))
    shutil.rmtree(moved / "models")  # no cached copy: the artifact itself is found
    registered = resolve_model("models:/mtlsd-gala@champion", moved)
    assert registered.file.is_relative_to(moved) and load_model(registered.file)[1]["iteration"] == 13750
    # every artifact location now names the moved workspace (the MLflow UI finds them too),
    # and a copy writes into itself, not into the original
    from lsdflow.registry.tracking import client_for

    client = client_for(moved)
    assert client.get_experiment_by_name("lsdflow-gala").artifact_location == (moved / "mlartifacts").resolve().as_uri()
    assert client.get_model_version("mtlsd-gala", "1").source.startswith((moved / "mlartifacts").resolve().as_uri())
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    before = sorted((moved / "mlartifacts").rglob("*"))
    register_model(SHIPPED, load_config("gala", workspace=copy), copy)
    assert client_for(copy).get_model_version("mtlsd-gala", "2").source.startswith((copy / "mlartifacts").resolve().as_uri())
    assert sorted((moved / "mlartifacts").rglob("*")) == before  # the original is untouched


def test_the_demo_champion_follows_the_shipped_model_but_not_over_a_promoted_one(workspace, tmp_path):
    from lsdflow.registry.registration import register_model, shipped_champion

    config = load_config("gala", workspace=workspace)
    first, message = shipped_champion(config, workspace)
    assert first.version == "1" and "registered the shipped model as models:/mtlsd-gala/1" in message
    assert shipped_champion(config, workspace)[0].version == "1"  # the same file: nothing new
    assert shipped_champion(config, workspace)[1] is None

    # a new lsdflow ships another model: it becomes the demo's champion
    newer = tmp_path / "newer.pt"
    payload = torch.load(SHIPPED, weights_only=True)
    torch.save({**payload, "iteration": payload["iteration"] + 250}, newer)
    newer_config = load_config("gala", [f"prediction.checkpoint='{newer}'"], workspace=workspace)
    second, message = shipped_champion(newer_config, workspace)
    assert second.version == "2" and "(was models:/mtlsd-gala/1, an older shipped model)" in message

    # a champion the user registered or promoted is kept
    register_model(SHIPPED, config, workspace, alias="champion", tags={"note": "promoted by hand"})
    kept, message = shipped_champion(config, workspace)
    assert kept.version == "3" and message is None


def test_missing_models_and_aliases_are_clear_errors(workspace, capsys, tmp_path):
    from lsdflow.registry.registration import register_model

    config = load_config("gala", workspace=workspace)
    with pytest.raises(RegistryError, match="no registered model 'nope'"):
        resolve_model("models:/nope@champion", workspace)
    register_model(SHIPPED, config, workspace)  # challenger only
    with pytest.raises(RegistryError, match="has no alias 'champion'"):
        resolve_model("models:/mtlsd-gala@champion", workspace)
    with pytest.raises(RegistryError, match="expected models:/"):
        resolve_model("mtlsd-gala@champion", workspace)
    with pytest.raises(RegistryError, match="has not been evaluated"):
        from lsdflow.registry.promotion import promote

        promote("mtlsd-gala", workspace)
    assert _cli(workspace, "predict", "gala", str(tmp_path / "x.zarr"), "--model", "models:/mtlsd-gala@nope") == 2
    assert "has no alias 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_any_training_checkpoint_can_be_registered(workspace, tiny_gala_config):
    """A gunpowder checkpoint (weights + optimizer, config beside it) is registered as a
    portable model file."""
    from lsdflow.core.train.training import train
    from lsdflow.registry.registration import register_model

    config = tiny_gala_config()
    result = train(config, iterations=2, progress=False)
    registered = register_model(result.checkpoint, config, workspace)
    model, meta, _ = load_registered_model(registered.uri, workspace)
    original, _ = load_model(result.checkpoint)
    assert meta["format"] and meta["iteration"] == 2
    for a, b in zip(model.state_dict().values(), original.state_dict().values()):
        assert torch.equal(a, b)
