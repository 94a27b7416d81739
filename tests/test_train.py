"""The gunpowder training pipeline on the real gala volumes: targets, loss, resume."""

from __future__ import annotations

import csv

import gunpowder as gp
import numpy as np
import pytest
import torch
from funlib.geometry import Coordinate

from lsdflow.core.config import ConfigError, load_config
from lsdflow.core.io.convert import convert
from lsdflow.core.io.volumes import VolumeError
from lsdflow.core.model.checkpoints import latest_checkpoint, list_checkpoints, load_model
from lsdflow.core.train.training import (
    TrainingKeys,
    build_training_pipeline,
    make_request,
    train,
    training_request,
)

from .conftest import TINY_NET


def request_one_batch(config, seed=1):
    keys = TrainingKeys.for_outputs(config.model.outputs)
    pipeline = build_training_pipeline(config, keys, precache=False)
    with gp.build(pipeline):
        batch = pipeline.request_batch(make_request(config, keys, seed))
    return keys, batch


def test_pipeline_builds_lsd_and_affinity_targets(tiny_gala_config):
    config = tiny_gala_config("training.batch_size=2")
    keys, batch = request_one_batch(config)
    out = config.model.output_shape
    assert batch[keys.raw].data.shape == (2, 1, *config.model.input_shape)
    assert batch[keys.targets["lsds"]].data.shape == (2, 10, *out)
    assert batch[keys.weights["lsds"]].data.shape == (2, 10, *out)
    assert batch[keys.targets["affs"]].data.shape == (2, 3, *out)
    assert batch[keys.weights["affs"]].data.shape == (2, 3, *out)
    raw = batch[keys.raw].data
    assert abs(float(raw.mean())) < 1.5 and 0.3 < float(raw.std()) < 3  # z-scored per volume
    lsds = batch[keys.targets["lsds"]].data
    assert 0 <= lsds.min() and lsds.max() <= 1
    affs = batch[keys.targets["affs"]].data
    assert set(np.unique(affs)) <= {0.0, 1.0}
    assert 0 < affs.mean() < 1  # boundaries and objects in every batch of dense neuropil
    # balanced weights: in each sample that has both, boundary and object voxels carry equal
    # total weight (a sample whose labelled part lies inside one object has no boundaries)
    w = batch[keys.weights["affs"]].data
    both = [i for i in range(len(w)) if 0 < affs[i][w[i] > 0].mean() < 1]
    assert both
    for i in both:
        assert w[i][affs[i] == 0].sum() == pytest.approx(w[i][affs[i] == 1].sum(), rel=0.05)


def test_unbalanced_affinity_weights_are_the_mask(tiny_gala_config):
    config = tiny_gala_config("training.balance_affinities=false")
    keys, batch = request_one_batch(config)
    weights = batch[keys.weights["affs"]].data
    assert weights.dtype == np.float32
    assert set(np.unique(weights)) <= {0.0, 1.0}


def test_training_batches_differ_through_the_precache(tiny_gala_config):
    """Every iteration must see a new random location and augmentation."""
    import dask

    config = tiny_gala_config()
    keys = TrainingKeys.for_outputs(config.model.outputs)
    pipeline = build_training_pipeline(config, keys, precache=True)
    with dask.config.set(scheduler="synchronous"), gp.build(pipeline):
        raws = [pipeline.request_batch(training_request(config, keys))[keys.raw].data for _ in range(4)]
    assert all(not np.array_equal(raws[0], other) for other in raws[1:])


def test_anisotropic_pipeline_on_real_pixels(tmp_path, gala_test):
    """CREMI's anisotropic setup (section-wise augmentation) on real EM at 40x4x4 nm."""
    data = convert(gala_test, tmp_path / "aniso.zarr", voxel_size=(40, 4, 4), progress=False)
    config = load_config(
        "cremi",
        [
            f"data.train=['{data}']",
            "model.num_fmaps=2",
            "model.fmap_inc_factor=2",
            "model.input_shape=[66, 136, 136]",
            "training.min_masked=0.1",
        ],
        workspace=tmp_path / "ws",
    )
    assert config.data.is_anisotropic
    keys, batch = request_one_batch(config)
    assert batch[keys.targets["lsds"]].data.shape == (1, 10, *config.model.output_shape)
    assert batch[keys.targets["affs"]].data.shape == (1, 3, *config.model.output_shape)


def test_a_volume_too_small_for_min_masked_is_refused_not_looped_on(tiny_gala_config):
    # gala has 50 sections: a 32-section output + 2 x 24 sections of LSD context cannot
    # be 90% labelled anywhere (gunpowder's RandomLocation would retry forever)
    config = tiny_gala_config("model.input_shape=[72, 72, 72]", "training.min_masked=0.9")
    with pytest.raises(ConfigError, match=r"training.min_masked = 0.9 cannot be met .*gala_train.zarr"):
        request_one_batch(config)


def test_mito_model_pipeline_needs_mito_labels(tiny_gala_config):
    config = tiny_gala_config("model.kind='mtlsd_mito'")
    with pytest.raises(VolumeError, match="volumes/labels/mito_ids"):
        request_one_batch(config)


def test_mito_model_trains_on_mito_labels(tmp_path, gala_train, tiny_gala_config):
    """Stand-in mitochondria: the smallest labelled objects of the real volume."""
    import zarr

    data = tmp_path / "with_mito.zarr"
    convert(gala_train, data, progress=False)
    labels = zarr.open(str(data / "volumes/labels/neuron_ids"))[:]
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    mito = np.where(np.isin(labels, ids[sizes < np.percentile(sizes, 30)]), labels, 0)
    from lsdflow.core.io.volumes import create_array, open_array

    lab = open_array(data, "volumes/labels/neuron_ids")
    out = create_array(data, "volumes/labels/mito_ids", lab.roi, lab.voxel_size, np.uint64)
    out[out.roi] = mito
    config = tiny_gala_config("model.kind='mtlsd_mito'", f"data.train=['{data}']")
    keys, batch = request_one_batch(config)
    assert batch[keys.targets["mito_affs"]].data.shape == (1, 3, *config.model.output_shape)
    result = train(config, iterations=2, progress=False)
    assert result.iteration == 2


def test_voxel_size_that_disagrees_with_the_data_is_rejected(tiny_gala_config):
    config = tiny_gala_config("data.voxel_size=[8, 8, 8]", "data.validation=[]", "data.test=[]", "model.input_shape=[52, 52, 52]")
    with pytest.raises(ConfigError) as e:
        train(config, iterations=1, progress=False)
    msg = str(e.value)
    assert "data.voxel_size = (8, 8, 8)" in msg and "(10, 10, 10)" in msg and "gala_train.zarr" in msg
    assert not (config.checkpoint_dir / "config.json").exists()


def loss_on_fixed_batches(config, checkpoint, batches, keys):
    from lsdflow.core.train.losses import MultiTaskWeightedMSELoss

    model, _ = load_model(checkpoint)
    loss_fn = MultiTaskWeightedMSELoss([config.training.loss_weights[n] for n in config.model.outputs])
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            outputs = model(torch.from_numpy(batch[keys.raw].data))
            args = []
            for name, out in zip(config.model.outputs, outputs):
                args += [out, torch.from_numpy(batch[keys.targets[name]].data),
                         torch.from_numpy(batch[keys.weights[name]].data)]
            total += loss_fn(*args).item()
    return total / len(batches)


@pytest.mark.slow
def test_loss_decreases_on_real_data(tiny_gala_config):
    """Loss on the same held-out real batches, before and after a short training."""
    config = tiny_gala_config("training.learning_rate=1e-3", "model.num_fmaps=6", "training.log_every=1")
    keys = TrainingKeys.for_outputs(config.model.outputs)
    pipeline = build_training_pipeline(config, keys, precache=False)
    with gp.build(pipeline):
        batches = [pipeline.request_batch(make_request(config, keys, seed)) for seed in range(6)]
    start = train(config, iterations=1, progress=False)
    before = loss_on_fixed_batches(config, start.checkpoint, batches, keys)
    result = train(config, iterations=101, progress=False)
    after = loss_on_fixed_batches(config, result.checkpoint, batches, keys)
    print(f"held-out loss before {before:.4f} after {after:.4f}")
    assert after < 0.9 * before, (before, after)
    with open(config.resolved_workspace / "training_log.csv") as f:
        assert len(list(csv.DictReader(f))) == 101


def test_training_resumes_from_the_latest_checkpoint(tiny_gala_config):
    config = tiny_gala_config("training.save_every=3")
    first = train(config, iterations=4, progress=False)
    assert [i for i, _ in list_checkpoints(config.checkpoint_dir)] == [3, 4]
    weights_at_4 = torch.load(first.checkpoint, weights_only=True)["model_state_dict"]

    second = train(config, iterations=6, progress=False)
    assert [i for i, _ in second.losses] == [5, 6]  # continued, not restarted
    assert latest_checkpoint(config.checkpoint_dir)[0] == 6
    weights_at_6 = torch.load(second.checkpoint, weights_only=True)["model_state_dict"]
    assert any(not torch.equal(weights_at_4[k], weights_at_6[k]) for k in weights_at_4)

    # reaching the target again does nothing
    assert train(config, iterations=6, progress=False).losses == []
    # a checkpoint loads back into the network it came from
    model, meta = load_model(second.checkpoint)
    assert meta["iteration"] == 6
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights_at_6[k])


def test_resuming_takes_the_configured_learning_rate(tiny_gala_config):
    # the optimizer state in a checkpoint carries its learning rate: lowering it in the
    # config and resuming (learning-rate decay) must take the new value
    first = train(tiny_gala_config("training.save_every=2", "training.learning_rate=1e-3"), iterations=2, progress=False)
    assert torch.load(first.checkpoint, weights_only=True)["optimizer_state_dict"]["param_groups"][0]["lr"] == 1e-3
    second = train(tiny_gala_config("training.save_every=2", "training.learning_rate=1e-4"), iterations=4, progress=False)
    assert [i for i, _ in second.losses] == [3, 4]
    assert torch.load(second.checkpoint, weights_only=True)["optimizer_state_dict"]["param_groups"][0]["lr"] == 1e-4


def test_resuming_with_a_different_network_is_refused(tiny_gala_config):
    train(tiny_gala_config("training.save_every=1"), iterations=1, progress=False)
    with pytest.raises(ConfigError, match="different network"):
        train(tiny_gala_config("model.num_fmaps=5"), iterations=2, progress=False)


def test_a_run_starts_from_a_model_files_weights(tiny_gala_config, tmp_path):
    """`--init-from`: the model's weights and a fresh optimizer become the first checkpoint,
    numbered with the model's iteration; training goes on from there."""
    from lsdflow.core.model.checkpoints import export_model

    donor_config = tiny_gala_config("training.save_every=2")
    donor = train(donor_config, iterations=2, progress=False)
    model_file = export_model(donor.checkpoint, donor_config, tmp_path / "donor.pt", 2)

    config = load_config("gala", [*TINY_NET, "training.save_every=100"], workspace=tmp_path / "finetune")
    result = train(config, iterations=4, progress=False, init_from=model_file)
    assert [i for i, _ in result.losses] == [3, 4]
    assert [i for i, _ in list_checkpoints(config.checkpoint_dir)] == [2, 4]
    start = torch.load(config.checkpoint_dir / "model_checkpoint_2", weights_only=True)
    assert start["optimizer_state_dict"]["state"] == {}  # a new optimizer
    donor_weights = torch.load(donor.checkpoint, weights_only=True)["model_state_dict"]
    assert all(torch.equal(start["model_state_dict"][k], v) for k, v in donor_weights.items())

    # a workspace with checkpoints resumes instead; the refusal says so
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(config, iterations=6, progress=False, init_from=model_file)
    # weights of another network are refused before anything is written
    other = load_config("gala", [*TINY_NET, "model.num_fmaps=5"], workspace=tmp_path / "other")
    with pytest.raises(ConfigError, match="do not fit the network"):
        train(other, iterations=4, progress=False, init_from=model_file)
    assert not other.checkpoint_dir.exists()
    # so is a bad training volume, and the corrected run then starts as asked
    bad = load_config("gala", [*TINY_NET, "data.train=[{path=\"%s\", roi_offset_nm=[0, 0, 0], roi_shape_nm=[9000, 9000, 9000]}]"
                               % config.data.train[0].path], workspace=tmp_path / "bad")
    with pytest.raises(VolumeError, match="not inside"):
        train(bad, iterations=4, progress=False, init_from=model_file)
    assert not list_checkpoints(bad.checkpoint_dir)
    fixed = load_config("gala", [*TINY_NET, "training.save_every=100"], workspace=tmp_path / "bad")
    assert [i for i, _ in train(fixed, iterations=3, progress=False, init_from=model_file).losses] == [3]


def test_a_training_region_keeps_the_held_out_labels_out(tmp_path, gala_train, tiny_gala_config):
    """`data.train` entries with a region train on that region's labels only: labels of
    the held-out part (marked here with one id) never reach a batch."""
    import shutil

    from lsdflow.core.io.volumes import open_array, write_array

    data = shutil.copytree(gala_train, tmp_path / "train.zarr")
    labels = open_array(data, "volumes/labels/neuron_ids")
    marked = labels[labels.roi]
    held_out = np.uint64(10**9)
    marked[:, :, 100:] = held_out
    write_array(data, "volumes/labels/neuron_ids", labels.roi, labels.voxel_size, marked)
    region = f"{{path='{data}', roi_offset_nm=[0, 0, 0], roi_shape_nm=[500, 1000, 1000]}}"

    def labels_seen(config) -> set:
        keys = TrainingKeys.for_outputs(config.model.outputs)
        pipeline = build_training_pipeline(config, keys, precache=False)
        seen = set()
        with gp.build(pipeline):
            for seed in range(8):
                request = make_request(config, keys, seed)
                request.add(keys.labels, Coordinate(config.model.output_shape) * Coordinate(config.data.voxel_size))
                seen |= set(np.unique(pipeline.request_batch(request)[keys.labels].data).tolist())
        return seen

    seen = labels_seen(tiny_gala_config(f"data.train=[{region}]"))
    assert int(held_out) not in seen and len(seen) > 2
    # without the region, the marked labels do turn up
    assert int(held_out) in labels_seen(tiny_gala_config(f"data.train=['{data}']"))

    outside = f"{{path='{data}', roi_offset_nm=[0, 0, 1500], roi_shape_nm=[500, 1000, 1000]}}"
    with pytest.raises(VolumeError, match="training region is not inside"):
        request_one_batch(tiny_gala_config(f"data.train=[{outside}]"))


def test_a_few_labelled_sections_are_enough_to_train_on(gala_train, tiny_gala_config):
    """A lab with five labelled sections fine-tunes on them: a training region thinner than
    one network output is accepted, random locations put those sections into the network
    output (not only into the context around it), and batches carry their labels only
    (everything else is masked out of the loss)."""
    from lsdflow.core.io.volumes import open_array

    region = f"{{path='{gala_train}', roi_offset_nm=[200, 0, 0], roi_shape_nm=[50, 1000, 2000]}}"
    config = tiny_gala_config(f"data.train=[{region}]", "training.min_masked=0.1")
    labels = open_array(gala_train, "volumes/labels/neuron_ids")
    in_sections = set(np.unique(labels[labels.roi][20:25]).tolist())
    keys = TrainingKeys.for_outputs(config.model.outputs)
    pipeline = build_training_pipeline(config, keys, precache=False)
    assert keys.sample_at_output
    output = Coordinate(config.model.output_shape) * Coordinate(config.data.voxel_size)
    seen, weighted = set(), []
    with gp.build(pipeline):
        for seed in range(6):
            request = make_request(config, keys, seed)
            request.add(keys.labels, output)
            batch = pipeline.request_batch(request)
            labelled = batch[keys.labels].data
            seen |= set(np.unique(labelled).tolist())
            assert labelled.any(), seed  # every batch has labelled voxels in its output
            weighted.append(float((batch[keys.weights["affs"]].data > 0).mean()))
    assert seen <= in_sections | {0}, seen - in_sections
    assert all(0 < w < 1 for w in weighted), weighted  # the labelled sections only

    # a min_masked that the output cannot meet is refused, not looped on
    with pytest.raises(ConfigError, match="of the network output"):
        build_training_pipeline(tiny_gala_config(f"data.train=[{region}]", "training.min_masked=0.5"),
                                TrainingKeys.for_outputs(config.model.outputs), precache=False)


def test_blur_augmentation_softens_the_raw_data_and_nothing_else(tiny_gala_config, gala_train):
    """Sized from what differs between acquisitions (docs/training.md): the same region with
    and without the node has the same mean and spread and less fine detail; the training
    pipeline takes it from the config."""
    from funlib.persistence import open_ds
    from scipy import ndimage

    from lsdflow.core.train.blur_augment import BlurAugment

    def fine_detail(raw):
        return float((raw - ndimage.gaussian_filter(raw, 1.0)).std())

    raw_key = gp.ArrayKey("RAW")
    source = gp.ArraySource(raw_key, open_ds(str(gala_train / "volumes/raw")), interpolatable=True)
    region = gp.Roi((100, 200, 400), (240, 400, 400))
    batches = []
    for blur in (False, True):
        pipeline = source + gp.Normalize(raw_key)
        if blur:
            pipeline += BlurAugment(raw_key, (8.0, 8.0), p=1.0)
        with gp.build(pipeline):
            request = gp.BatchRequest()
            request[raw_key] = gp.ArraySpec(roi=region)
            batches.append(pipeline.request_batch(request)[raw_key].data)
    plain, blurred = batches
    assert blurred.mean() == pytest.approx(plain.mean(), abs=1e-4) and blurred.std() == pytest.approx(plain.std(), rel=1e-3)
    assert fine_detail(blurred) < 0.7 * fine_detail(plain)

    keys, batch = request_one_batch(
        tiny_gala_config("training.augment.blur_sigma_nm=[4, 10]", "training.augment.blur_probability=1.0"))
    assert np.isfinite(batch[keys.raw].data).all() and 0.3 < float(batch[keys.raw].data.std()) < 3
