"""The label-free quality estimate: two halves of the test-time augmentations, each
segmented, compared (core/segment/quality_estimate.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from lsdflow.core.config import load_config
from lsdflow.core.io.volumes import open_array
from lsdflow.core.model.checkpoints import input_normalization, load_model
from lsdflow.core.predict.augmentation import MIRRORINGS
from lsdflow.core.predict.blockwise import predict_volume
from lsdflow.core.predict.tiling import predict_array
from lsdflow.core.segment.quality_estimate import (
    HALVES,
    describe,
    estimate_for_predictions,
    mirrored_affinities,
    recorded,
    tta_disagreement,
)
from lsdflow.core.segment.threshold_selection import central_crop
from lsdflow.core.train.synthetic import synthetic_affinities, synthetic_labels

from .conftest import TINY


def test_the_two_halves_are_the_eight_mirrorings_split_in_two():
    assert len(HALVES[0]) == len(HALVES[1]) == 4
    assert set(HALVES[0]) | set(HALVES[1]) == set(MIRRORINGS) and not set(HALVES[0]) & set(HALVES[1])


def test_mirrored_passes_averaged_equal_test_time_augmentation(gala_test, tiny_model):
    config = load_config("gala", TINY)
    model, meta = load_model(tiny_model)
    raw_array = open_array(gala_test, "volumes/raw")
    crop = central_crop(raw_array.roi, raw_array.voxel_size, 40**3)
    raw = raw_array[crop] / 255.0
    normalization = input_normalization(raw_array, "zscore", tiny_model, meta)
    shapes = config.with_model(model.config).prediction_shapes
    augmented = predict_array(model, raw, *shapes, normalization, augment=True)[model.outputs.index("affs")]
    both = mirrored_affinities(model, raw, *shapes, normalization, HALVES[0] + HALVES[1])
    inner = (slice(None),) + (slice(4, -4),) * 3  # unmirrored faces are invalid by the augmentation margin
    assert np.abs(both[inner] - augmented[inner]).mean() < 0.02


def test_disagreement_is_zero_for_the_same_affinities_and_grows_with_noise():
    config = load_config("gala")
    labels = synthetic_labels((32, 48, 48), 12, seed=1)
    clean = synthetic_affinities(labels, noise=0.02, blur=1.0, seed=2).astype(np.float32)
    noisy = np.clip(clean + np.random.default_rng(3).normal(0, 0.35, clean.shape), 0, 1).astype(np.float32)
    assert tta_disagreement(config, clean, clean.copy(), 0.3) == 0.0
    assert tta_disagreement(config, clean, noisy, 0.3) > 0.1
    assert describe(0.1).startswith("stable") and "out of the model's depth" in describe(2.0)


def test_estimate_for_predictions_uses_their_model_and_is_recorded(tmp_path, gala_test, tiny_model):
    config = load_config("gala", [*TINY, "prediction.test_time_augmentation=false", "segmentation.quality_max_voxels=150000"])
    volume = shutil.copytree(gala_test, tmp_path / "v.zarr")
    predict_volume(config, volume, tiny_model, progress=False)
    estimate = estimate_for_predictions(config, volume, "volumes/pred_affs", 0.3)
    assert estimate["model_file"] == str(tiny_model.resolve()) and estimate["threshold"] == 0.3
    assert estimate["tta_disagreement"] >= 0 and estimate["verdict"] == describe(estimate["tta_disagreement"])
    assert np.prod(np.array(estimate["crop_nm"][1]) // 10) <= 150000
    assert recorded(volume, "hist_quant_50") == estimate

    # a crop too small for a meaningful estimate says so instead of guessing
    small = load_config("gala", [*TINY, "segmentation.quality_max_voxels=1000"])
    assert estimate_for_predictions(small, volume, "volumes/pred_affs", 0.3)["tta_disagreement"] is None

    # predictions whose model file is gone cannot be estimated: a clear error
    zarr.open(str(volume / "volumes/pred_affs"), mode="a").attrs["model_file"] = str(tmp_path / "gone.pt")
    with pytest.raises(ValueError, match="gone.pt"):
        estimate_for_predictions(config, volume, "volumes/pred_affs", 0.3)
