"""Label-free threshold criteria: on predictions that match a segmentation, that
segmentation scores best; merging or splitting its objects scores worse; the choice picks
the threshold whose segmentation explains the predictions best."""

from __future__ import annotations

import numpy as np
import pytest

from lsdflow.core.segment.threshold_selection import (
    affinity_disagreement,
    affinity_uncertainty,
    choose,
    criteria,
    label_free_quality,
    lsd_disagreement,
    score_thresholds,
)
from lsdflow.core.train.affinities import labels_to_affinities
from lsdflow.core.train.synthetic import synthetic_affinities, synthetic_labels

NEIGHBORHOOD = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]


@pytest.fixture(scope="module")
def truth():
    """Objects touching each other, as a watershed segmentation is (no background)."""
    from scipy.ndimage import distance_transform_edt

    labels = synthetic_labels((24, 32, 32), n_objects=12, seed=3).astype(np.uint64)
    nearest = distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    return labels[tuple(nearest)]


def _merged(labels):
    merged = labels.copy()
    ids = np.unique(labels[labels != 0])
    merged[np.isin(merged, ids[: len(ids) // 2])] = ids[0]  # half the objects become one
    return merged


def _split(labels):
    split = labels.copy()
    split[:, :, 16:] += labels.max() + 1  # every object crossing x = 16 cut in two
    return split


def test_affinity_disagreement_is_lowest_for_the_segmentation_the_affinities_show(truth):
    affs = synthetic_affinities(truth, noise=0.05, seed=1)
    exact = affinity_disagreement(labels_to_affinities(truth, NEIGHBORHOOD), truth, NEIGHBORHOOD)
    assert exact == pytest.approx(0.0)
    ours = affinity_disagreement(affs, truth, NEIGHBORHOOD)
    assert ours < affinity_disagreement(affs, _merged(truth), NEIGHBORHOOD)
    assert ours < affinity_disagreement(affs, _split(truth), NEIGHBORHOOD)
    # uint8 predictions as stored by lsdflow give the same value as floats
    as_stored = (np.clip(affs, 0, 1) * 255).round().astype(np.uint8)
    assert affinity_disagreement(as_stored, truth, NEIGHBORHOOD) == pytest.approx(
        affinity_disagreement(as_stored / 255.0, truth, NEIGHBORHOOD), abs=1e-6)


def test_lsd_disagreement_is_lowest_for_the_segmentation_the_lsds_describe(truth):
    from lsd.train.local_shape_descriptor import get_local_shape_descriptors

    lsds = get_local_shape_descriptors(truth, sigma=(40.0,) * 3, voxel_size=(10, 10, 10), downsample=2)
    ours = lsd_disagreement(lsds, truth, 40.0, (10, 10, 10))
    assert ours == pytest.approx(0.0, abs=1e-6)
    assert lsd_disagreement(lsds, _merged(truth), 40.0, (10, 10, 10)) > 1e-3
    assert lsd_disagreement(lsds, _split(truth), 40.0, (10, 10, 10)) > 1e-3


def test_each_criterion_chooses_the_threshold_whose_segmentation_is_true(truth):
    from lsd.train.local_shape_descriptor import get_local_shape_descriptors

    predictions = {"affs": synthetic_affinities(truth, noise=0.05, seed=2),
                   "lsds": get_local_shape_descriptors(truth, sigma=(40.0,) * 3, voxel_size=(10, 10, 10),
                                                       downsample=2)}
    candidates = {0.1: _split(truth), 0.3: truth, 0.5: _merged(truth)}
    available = criteria(NEIGHBORHOOD, 40.0, (10, 10, 10))
    rows = score_thresholds(candidates, predictions, available)
    assert [r["threshold"] for r in rows] == [0.1, 0.3, 0.5]
    for name in available:
        assert choose(rows, name) == 0.3, (name, rows)
    # a model without LSDs: only the affinity criterion is scored
    rows = score_thresholds(candidates, {"affs": predictions["affs"], "lsds": None}, available)
    assert set(rows[0]) == {"threshold", "affinity_disagreement"}
    with pytest.raises(ValueError, match="lsd_disagreement"):
        choose(rows, "lsd_disagreement")


def test_the_quality_estimate_grows_when_predictions_are_uncertain(truth):
    confident = labels_to_affinities(truth, NEIGHBORHOOD)
    assert affinity_uncertainty(confident) == pytest.approx(0.0)
    assert affinity_uncertainty(np.full((3, 4, 4, 4), 0.5, np.float32)) == pytest.approx(1.0)
    available = criteria(NEIGHBORHOOD, 40.0, (10, 10, 10))
    candidates = {0.3: truth, 0.5: _merged(truth)}
    good = label_free_quality(confident, score_thresholds(candidates, {"affs": confident}, available),
                              "affinity_disagreement")
    noisy_affs = synthetic_affinities(truth, noise=0.4, seed=4)
    bad = label_free_quality(noisy_affs, score_thresholds(candidates, {"affs": noisy_affs}, available),
                             "affinity_disagreement")
    assert good["threshold"] == 0.3
    assert bad["affinity_uncertainty"] > good["affinity_uncertainty"]
    assert bad["disagreement"] > good["disagreement"]


def test_a_container_is_scored_on_a_central_crop_and_the_choice_is_explained(tmp_path, truth):
    """On predictions of known objects, the segmentation that is those objects is chosen
    over one that splits and one that merges them."""
    from funlib.geometry import Coordinate, Roi
    from lsd.train.local_shape_descriptor import get_local_shape_descriptors

    from lsdflow.core.evaluate.metrics import segmentation_scores
    from lsdflow.core.io.volumes import open_array, write_array
    from lsdflow.core.segment.threshold_selection import central_crop, choose_in_container

    container = tmp_path / "vol.zarr"
    roi, voxel_size = Roi((100, 0, 50), Coordinate(truth.shape) * 10), Coordinate(10, 10, 10)
    rng = np.random.default_rng(5)
    affs = labels_to_affinities(truth, NEIGHBORHOOD) * 0.8 + 0.1 + rng.normal(0, 0.05, (3, *truth.shape))
    write_array(container, "volumes/pred_affs", roi, voxel_size, (np.clip(affs, 0, 1) * 255).astype(np.uint8))
    lsds = get_local_shape_descriptors(truth, sigma=(40.0,) * 3, voxel_size=(10, 10, 10), downsample=2)
    write_array(container, "volumes/pred_lsds", roi, voxel_size, (lsds * 255).astype(np.uint8))
    thresholds = [0.05, 0.5, 0.95]
    for threshold, segmentation in zip(thresholds, (_split(truth), truth, _merged(truth))):
        write_array(container, f"volumes/segmentation/hist_quant_50/{threshold:g}", roi, voxel_size, segmentation)

    max_voxels = 20**3
    choice = choose_in_container(container, thresholds, "lsd_disagreement", NEIGHBORHOOD, 40.0, 2,
                                 max_voxels=max_voxels)
    crop = central_crop(roi, voxel_size, max_voxels)
    assert np.prod(np.array(crop.shape) // 10) <= max_voxels and roi.contains(crop)
    assert choice["crop_nm"] == [list(crop.offset), list(crop.shape)]
    assert [r["threshold"] for r in choice["rows"]] == thresholds
    assert set(choice["rows"][0]) == {"threshold", "affinity_disagreement", "lsd_disagreement"}
    voi = {t: segmentation_scores(truth, open_array(container, f"volumes/segmentation/hist_quant_50/{t:g}")[roi]).voi_sum
           for t in thresholds}
    assert choice["threshold"] == 0.5 and voi[0.5] == pytest.approx(0.0), (choice, voi)
    assert choice["criterion"] == "lsd_disagreement"
    with pytest.raises(ValueError, match="unknown threshold criterion"):
        choose_in_container(container, thresholds, "size", NEIGHBORHOOD, 40.0, 2)


def test_segment_chooses_and_records_a_threshold_without_labels(tmp_path, truth, capsys):
    """`lsdflow segment` with a label-free criterion: every configured threshold is
    segmented, one is chosen, the choice is printed and kept in the container."""
    from funlib.geometry import Coordinate, Roi

    from lsdflow.cli.main import main
    from lsdflow.core.io.volumes import write_array
    from lsdflow.core.segment.threshold_selection import recorded_choice

    container = tmp_path / "vol.zarr"
    rng = np.random.default_rng(6)
    affs = labels_to_affinities(truth, NEIGHBORHOOD) * 0.8 + 0.1 + rng.normal(0, 0.05, (3, *truth.shape))
    write_array(container, "volumes/pred_affs", Roi((0, 0, 0), Coordinate(truth.shape) * 10), Coordinate(10, 10, 10),
                (np.clip(affs, 0, 1) * 255).astype(np.uint8))
    argv = ["segment", "gala", str(container), "--set", "segmentation.threshold_criterion=affinity_disagreement",
            "--set", "segmentation.thresholds=[0.1, 0.5, 0.9]", "--set", "segmentation.min_seed_distance=3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    choice = recorded_choice(container, "hist_quant_50")
    assert choice["criterion"] == "affinity_disagreement"  # no LSDs predicted: only this one is possible
    assert [r["threshold"] for r in choice["rows"]] == [0.1, 0.5, 0.9]
    assert f"threshold {choice['threshold']:g} chosen by affinity_disagreement" in out
    # the default stays the validation threshold: nothing chosen, nothing recorded
    other = tmp_path / "other.zarr"
    import shutil

    shutil.copytree(container / "volumes" / "pred_affs", other / "volumes" / "pred_affs")
    assert main(["segment", "gala", str(other), "--thresholds", "0.1", "0.5"]) == 0
    assert recorded_choice(other, "hist_quant_50") is None
