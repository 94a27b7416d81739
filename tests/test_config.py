"""Config validation (good and bad) and derived shapes of every shipped config."""

from __future__ import annotations

import pytest

from lsdflow.core.config import ConfigError, load_config, parse_override, shipped_configs
from lsdflow.core.model.networks import output_shape_from_network


def test_ships_configs_for_the_published_datasets():
    assert {"gala", "cremi", "snemi3d", "fib25", "hemibrain"} <= set(shipped_configs())


@pytest.mark.parametrize("name", shipped_configs())
def test_derived_output_shape_equals_the_network(name):
    config = load_config(name)
    assert config.model.output_shape == output_shape_from_network(config.model)
    d = config.derived()
    assert d["input_size_nm"] == tuple(i * v for i, v in zip(config.model.input_shape, config.data.voxel_size))
    assert all(2 * c + o == i for c, o, i in zip(d["context_voxels"], d["output_shape_voxels"], d["input_shape_voxels"]))


@pytest.mark.parametrize(
    "name, voxel_size, input_shape, output_shape",
    [
        ("cremi", (40, 4, 4), (132, 268, 268), (72, 144, 144)),
        ("fib25", (8, 8, 8), (196, 196, 196), (72, 72, 72)),
        ("hemibrain", (8, 8, 8), (196, 196, 196), (72, 72, 72)),
        ("snemi3d", (29, 6, 6), (132, 268, 268), (72, 144, 144)),
        ("gala", (10, 10, 10), (72, 72, 72), (32, 32, 32)),
    ],
)
def test_published_setups(name, voxel_size, input_shape, output_shape):
    config = load_config(name)
    assert config.data.voxel_size == voxel_size
    assert config.model.input_shape == input_shape
    assert config.model.output_shape == output_shape
    assert config.training.lsd_sigma_nm == 80
    assert config.training.lsd_downsample == 2
    assert config.model.affinity_neighborhood == [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
    if name != "gala":
        assert (config.model.num_fmaps, config.model.fmap_inc_factor) == (12, 5)


def test_anisotropic_configs_get_section_wise_augmentation():
    cremi = load_config("cremi")
    assert cremi.data.is_anisotropic
    assert cremi.model.downsample_factors[0] == (1, 2, 2)
    assert cremi.model.kernel_size_down[0] == [(1, 3, 3), (1, 3, 3)]
    aug = cremi.augment
    assert aug.transpose_axes == [1, 2]
    assert aug.jitter_sigma_nm[0] == 0
    assert aug.prob_slip > 0 and aug.max_misalign_nm > 0
    fib = load_config("fib25").augment
    assert fib.transpose_axes == [0, 1, 2] and fib.prob_slip == 0


def test_input_shape_that_does_not_fit_the_downsampling_names_field_value_and_nearest():
    with pytest.raises(ConfigError) as e:
        load_config("fib25", ["model.input_shape=[195, 196, 196]"])
    msg = str(e.value)
    assert "model.input_shape" in msg
    assert "195" in msg
    assert "nearest valid z sizes: [184, 196]" in msg


def test_anisotropic_input_shape_error():
    with pytest.raises(ConfigError) as e:
        load_config("cremi", ["model.input_shape=[132, 270, 268]"])
    msg = str(e.value)
    assert "y=270" in msg and "nearest valid y sizes" in msg


@pytest.mark.parametrize(
    "override, field",
    [
        ("data.voxel_size=[0, 4, 4]", "data.voxel_size"),
        ("data.voxel_size=[-40, 4, 4]", "data.voxel_size"),
        ("model.num_fmaps=0", "model.num_fmaps"),
        ("model.kind='unet'", "model.kind"),
        ("training.learning_rate=-1", "training.learning_rate"),
        ("training.typo=1", "training.typo"),
        ("model.kernel_size_down=[[[3,3,3]]]", "model"),
        ("model.input_shape=[10, 10, 10]", "model.input_shape"),
        # a file here used to fall back silently to prediction.checkpoint
        ("prediction.model='model.pt'", "prediction.model"),
    ],
)
def test_bad_values_are_rejected_with_the_field_name(override, field):
    with pytest.raises(ConfigError) as e:
        load_config("cremi", [override])
    assert field in str(e.value)
    assert "cremi.toml" in str(e.value)


def test_mito_model_needs_a_mito_loss_weight():
    with pytest.raises(ConfigError, match="loss_weights"):
        load_config("gala", ["model.kind='mtlsd_mito'", "training.loss_weights={lsds=1.0, affs=1.0}"])


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="shipped configs"):
        load_config("no-such-dataset")


def test_overrides_are_toml_values():
    assert parse_override("training.iterations=10") == ("training.iterations", 10)
    assert parse_override("model.input_shape=[1,2,3]") == ("model.input_shape", [1, 2, 3])
    assert parse_override("model.kind=lsd") == ("model.kind", "lsd")


def test_relative_paths_resolve_against_the_config_file(gala_train):
    config = load_config("gala")
    assert [v.path for v in config.data.train] == [gala_train.resolve()]


def test_fingerprint_changes_with_settings_not_with_workspace(tmp_path):
    a = load_config("gala")
    b = load_config("gala", workspace=tmp_path)
    c = load_config("gala", ["training.learning_rate=0.001"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


REGION = '{path="../data/gala/gala_test.zarr", roi_offset_nm=[0, 0, 0], roi_shape_nm=[500, 1000, 1000]}'


def test_a_volume_entry_can_name_a_region(gala_train, gala_test, tmp_path):
    config = load_config("gala", [f"data.validation=[{REGION}]"])
    (volume,) = config.data.validation
    assert volume.path == gala_test.resolve()
    assert tuple(volume.roi.offset) == (0, 0, 0) and tuple(volume.roi.shape) == (500, 1000, 1000)
    assert "shape (500, 1000, 1000) nm" in str(volume)
    # a whole volume is still written as its path, so fingerprints of existing configs hold
    assert load_config("gala").model_dump(mode="json")["data"]["train"] == [str(gala_train.resolve())]
    # the resolved config (as handed to a training subprocess) loads again with its region
    saved = tmp_path / "resolved.json"
    saved.write_text(config.model_dump_json())
    assert load_config(saved).data.validation == config.data.validation


@pytest.mark.parametrize("entry, message", [
    ('{path="x.zarr", roi_offset_nm=[0, 0, 0]}', "give both roi_offset_nm and roi_shape_nm"),
    ('{path="x.zarr", roi_offset_nm=[0, 0, 5], roi_shape_nm=[10, 10, 10]}', "not on the voxel grid"),
    ('{path="x.zarr", roi_offset_nm=[0, 0, 0], roi_shape_nm=[0, 10, 10]}', "must be positive"),
])
def test_bad_regions_are_config_errors(entry, message):
    with pytest.raises(ConfigError, match=message):
        load_config("gala", [f"data.validation=[{entry}]"])


@pytest.mark.slow
def test_an_installed_lsdflow_finds_its_shipped_configs(tmp_path):
    """Outside a source checkout (a wheel installed elsewhere), `gala` and the other
    shipped configs are found: they travel with the package as lsdflow.configs."""
    import os
    import subprocess
    import sys

    from .conftest import ROOT

    import shutil

    source = tmp_path / "source"  # built from a copy: the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "core", "registry", "tasks", "flows", "cli", "deployments", "configs"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, cwd=tmp_path)
    code = ("import lsdflow.core.config as c; print(c.CONFIG_DIR); print(c.shipped_configs()); "
            "print(c.load_config('cremi').data.voxel_size)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=True).stdout.splitlines()
    assert out[0].startswith(str(target)), out  # the installed copy, not this checkout
    assert "gala" in out[1] and "medulla" in out[1]
    assert out[2] == "(40, 4, 4)"
