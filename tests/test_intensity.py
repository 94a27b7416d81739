"""Input normalization: z-score, and histogram matching to the model's training data
(core/io/intensity.py), on real gala data with a simulated change of microscope settings."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from funlib.geometry import Roi

from lsdflow.cli.main import main as lsdflow
from lsdflow.core.blockwise.runner import RunSettings
from lsdflow.core.config import load_config
from lsdflow.core.io.intensity import (
    OUT_OF_DEPTH_SHIFT,
    REFERENCE_LEVELS,
    Normalization,
    describe_shift,
    intensity_shift,
    intensity_stats,
    normalization_for,
    training_reference,
)
from lsdflow.core.io.volumes import open_array, write_array
from lsdflow.core.model.checkpoints import load_model, write_model_file
from lsdflow.core.predict.attributes import recorded_input_shift
from lsdflow.core.predict.blockwise import (
    predict_blockwise,
    predict_volume,
    prediction_key,
)

from .conftest import TINY


def _shifted(raw: np.ndarray) -> np.ndarray:
    """Another detector: a gamma curve, lower contrast and an offset, as uint8."""
    scaled = raw.astype(np.float64) / 255.0
    return np.clip(255.0 * (0.25 + 0.5 * scaled**2.2), 0, 255).round().astype(np.uint8)


@pytest.fixture
def shifted_gala(tmp_path, gala_test):
    raw = open_array(gala_test, "volumes/raw")
    write_array(tmp_path / "shifted.zarr", "volumes/raw", raw.roi, raw.voxel_size, _shifted(raw[raw.roi]))
    return open_array(tmp_path / "shifted.zarr", "volumes/raw")


def test_matching_undoes_a_change_of_the_intensity_curve_that_z_scoring_does_not(gala_test, shifted_gala):
    raw = open_array(gala_test, "volumes/raw")
    reference = training_reference([(raw, None)])
    assert len(reference) == REFERENCE_LEVELS and np.all(np.diff(reference) >= 0)
    seen_in_training = Normalization(*intensity_stats(raw))(raw[raw.roi] / 255.0)

    shifted = shifted_gala[shifted_gala.roi] / 255.0
    matched = normalization_for(shifted_gala, "match_training", reference)
    zscored = normalization_for(shifted_gala, "zscore")
    assert matched.kind == "match_training" and zscored.kind == "zscore"
    matched_error = np.abs(matched(shifted) - seen_in_training).mean()
    zscored_error = np.abs(zscored(shifted) - seen_in_training).mean()
    # the mapping is monotone, so it can only undo what the curve did (up to uint8 rounding)
    assert matched_error < 0.05 < zscored_error, (matched_error, zscored_error)
    # the volume the reference comes from is (almost) left as it was
    itself = normalization_for(raw, "match_training", reference)(raw[raw.roi] / 255.0)
    assert np.abs(itself - seen_in_training).mean() < 0.02


def test_matching_without_a_reference_or_with_an_unknown_kind_is_refused(gala_test):
    raw = open_array(gala_test, "volumes/raw")
    with pytest.raises(ValueError, match="intensity_reference"):
        normalization_for(raw, "match_training", None)
    with pytest.raises(ValueError, match="unknown normalization"):
        normalization_for(raw, "histogram")


def test_model_files_carry_their_training_intensities_and_prediction_uses_them(tmp_path, gala_test, tiny_model,
                                                                              shifted_gala):
    """A model file written where its training data is carries the distribution; the
    shipped model does too. Predicting with `match_training`: blockwise equals in memory,
    the outputs say how they were normalized, the key tells the two normalizations apart."""
    _, meta = load_model(tiny_model)
    assert len(meta["intensity_reference"]) == REFERENCE_LEVELS
    _, shipped = load_model(load_config("gala").prediction.checkpoint)
    assert len(shipped["intensity_reference"]) == REFERENCE_LEVELS

    plain = [*TINY, "prediction.test_time_augmentation=false"]
    config = load_config("gala", [*plain, "prediction.normalization=\"match_training\""])
    zscore = load_config("gala", plain)
    crop = Roi((0, 0, 0), (360, 360, 720))
    for name in ("blocks.zarr", "memory.zarr"):
        write_array(tmp_path / name, "volumes/raw", crop, shifted_gala.voxel_size, shifted_gala[crop])
    predict_blockwise(config, tmp_path / "blocks.zarr", tiny_model, settings=RunSettings(workers=2, progress=False))
    predict_volume(config, tmp_path / "memory.zarr", tiny_model, progress=False)
    ours, theirs = (open_array(tmp_path / n, "volumes/pred_affs") for n in ("blocks.zarr", "memory.zarr"))
    assert np.abs(ours[ours.roi].astype(int) - theirs[theirs.roi].astype(int)).max() <= 1
    assert zarr.open(str(tmp_path / "memory.zarr" / "volumes/pred_affs")).attrs["normalization"] == "match_training"
    # both paths record how far the input lies from the model's training intensities
    assert recorded_input_shift(tmp_path / "blocks.zarr") == recorded_input_shift(tmp_path / "memory.zarr") > 0
    assert prediction_key(config, tmp_path / "blocks.zarr", tiny_model) != prediction_key(
        zscore, tmp_path / "blocks.zarr", tiny_model)


def test_input_shift_flags_another_acquisition_and_not_the_models_own(gala_test):
    """Label-free: the gala model's training volume, its held-out volume, and the medulla
    acquisition (where it is worse than a raw watershed) against its training intensities."""
    from pathlib import Path

    _, meta = load_model(load_config("gala").prediction.checkpoint)
    reference = meta["intensity_reference"]
    data = Path(gala_test).parents[1]
    own = intensity_shift(open_array(data / "gala" / "gala_train.zarr", "volumes/raw"), reference)
    held_out = intensity_shift(open_array(gala_test, "volumes/raw"), reference)
    medulla = intensity_shift(open_array(data / "medulla" / "medulla_dev.zarr", "volumes/raw"), reference)
    assert own < 0.005 < held_out < OUT_OF_DEPTH_SHIFT < medulla
    assert "likely out of its depth" in describe_shift(medulla) and "like the model's" in describe_shift(held_out)
    assert "unknown" in describe_shift(None)


def test_a_model_without_its_training_intensities_is_refused_before_anything_is_written(tmp_path, gala_test,
                                                                                        capsys):
    from lsdflow.core.model.networks import build_model

    # written where its training data is not: the file cannot carry the distribution
    config = load_config("gala", [*TINY, f'data.train=["{tmp_path / "elsewhere.zarr"}"]'])
    model = write_model_file(build_model(config.model).state_dict(), config, tmp_path / "portable.pt", 0)
    assert load_model(model)[1]["intensity_reference"] is None
    volume = shutil.copytree(gala_test, tmp_path / "acquisition.zarr")
    before = sorted(str(p.relative_to(volume)) for p in volume.rglob("*"))
    assert lsdflow(["predict", "gala", str(volume), "--model", str(model), "--quiet",
                    *[a for s in TINY for a in ("--set", s)], "--set", 'prediction.normalization="match_training"']) == 2
    err = capsys.readouterr().err
    assert "lsdflow: error:" in err and "portable.pt" in err and "intensity_reference" in err, err
    assert sorted(str(p.relative_to(volume)) for p in volume.rglob("*")) == before
