"""Training with gunpowder: augmentations, LSD and affinity targets built on the fly.

The pipeline follows the published MTLSD training: per volume a source, intensity
normalization, padding and a random location; then elastic and simple augmentation,
intensity augmentation, boundary growing, LSDs, affinities, label balancing, stacking
into a batch, a pre-cache of batches made in worker processes, and gunpowder's torch
Train node (weighted MSE, Adam, checkpoints, resume from the newest checkpoint).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dask
import gunpowder as gp
import gunpowder.torch
import numpy as np
import torch
from funlib.geometry import Coordinate
from lsd.train.gp import AddLocalShapeDescriptor

from ..config import ConfigError, LsdflowConfig, ModelConfig, VolumeRef, check_voxel_size
from ..io.intensity import intensity_stats, normalization_factor
from ..io.volumes import VolumeError, open_array
from ..model.checkpoints import latest_checkpoint, load_model, save_training_checkpoint
from ..model.devices import default_device
from ..model.networks import build_model
from .blur_augment import BlurAugment
from .losses import MultiTaskWeightedMSELoss

logger = logging.getLogger(__name__)


@dataclass
class TrainingKeys:
    """The gunpowder array keys of one training pipeline."""

    raw: gp.ArrayKey = field(default_factory=lambda: gp.ArrayKey("RAW"))
    labels: gp.ArrayKey = field(default_factory=lambda: gp.ArrayKey("LABELS"))
    labels_mask: gp.ArrayKey = field(default_factory=lambda: gp.ArrayKey("LABELS_MASK"))
    mito: gp.ArrayKey = field(default_factory=lambda: gp.ArrayKey("MITO_LABELS"))
    # the labels mask over the network output only: where a training region is thinner than
    # a labels request (a few labelled sections), random locations are chosen by it, so that
    # labelled voxels fall in the output and not only in the context around it
    sample_mask: gp.ArrayKey = field(default_factory=lambda: gp.ArrayKey("SAMPLE_MASK"))
    sample_at_output: bool = False
    targets: dict[str, gp.ArrayKey] = field(default_factory=dict)
    weights: dict[str, gp.ArrayKey] = field(default_factory=dict)
    predictions: dict[str, gp.ArrayKey] = field(default_factory=dict)

    @classmethod
    def for_outputs(cls, outputs: tuple[str, ...]) -> TrainingKeys:
        keys = cls()
        for name in outputs:
            upper = name.upper()
            keys.targets[name] = gp.ArrayKey(f"GT_{upper}")
            keys.weights[name] = gp.ArrayKey(f"{upper}_WEIGHTS")
            keys.predictions[name] = gp.ArrayKey(f"PRED_{upper}")
        return keys


def _check_training_volume(config: LsdflowConfig, container: Path, needs_mito: bool) -> dict:
    """Open a training volume's arrays and check them before any training starts."""
    d = config.data
    raw = open_array(container, d.raw_dataset)
    labels = open_array(container, d.labels_dataset)
    check_voxel_size(config, tuple(raw.voxel_size), f"{container}/{d.raw_dataset}")
    check_voxel_size(config, tuple(labels.voxel_size), f"{container}/{d.labels_dataset}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise VolumeError(f"{container}/{d.labels_dataset}: labels must be integers, found {labels.dtype}")
    if not raw.roi.contains(labels.roi):
        raise VolumeError(
            f"{container}: labels ROI {labels.roi} is not inside the raw ROI {raw.roi}"
        )
    arrays = {"raw": raw, "labels": labels}
    try:
        arrays["labels_mask"] = open_array(container, d.labels_mask_dataset)
    except VolumeError:
        arrays["labels_mask"] = None  # derived below: dense labels are valid everywhere
    if needs_mito:
        arrays["mito"] = open_array(container, d.mito_dataset)
    return arrays


class _DenseMask(gp.BatchProvider):
    """Provides a labels mask of ones over a ROI, for volumes that ship without one.

    gunpowder has no constant-array source; writing the mask into the user's volume
    would touch their data, so it is made on the fly."""

    def __init__(self, key: gp.ArrayKey, roi, voxel_size):
        self.key = key
        self.spec = gp.ArraySpec(roi=roi, voxel_size=voxel_size, interpolatable=False, dtype=np.uint8)

    def setup(self):
        self.provides(self.key, self.spec)

    def provide(self, request):
        spec = self.spec.copy()
        spec.roi = request[self.key].roi
        shape = spec.roi.shape / spec.voxel_size
        batch = gp.Batch()
        batch[self.key] = gp.Array(np.ones(shape, dtype=np.uint8), spec)
        return batch


def _check_masked_fraction(config: LsdflowConfig, container: Path, labels_roi, label_request) -> bool:
    """RandomLocation retries forever when no location has enough labelled voxels:
    refuse volumes that are too small for the request instead of hanging. A labelled region
    thinner than a labels request (a few labelled sections) is trained on too: then
    min_masked applies to the network output (returns True), else to the whole request."""
    extent = labels_roi.shape
    thin = any(e < r for e, r in zip(extent, label_request))
    request = Coordinate(config.model.output_shape) * Coordinate(config.data.voxel_size) if thin else label_request
    if config.augment.elastic:
        # rotations within sections grow the y/x extent of the upstream request by up to √2
        request = Coordinate(request[0], *(int(r * 1.42) for r in request[1:]))
    # the best case, at the centre of the volume: RandomLocation samples shifts uniformly
    # and retries, so a fraction that only the centre reaches makes training crawl
    achievable = float(np.prod([min(1.0, e / r) for e, r in zip(extent, request)]))
    if achievable < 1.5 * config.training.min_masked:
        what = "the network output" if thin else "a labels request"
        raise ConfigError(
            f"training.min_masked = {config.training.min_masked} cannot be met in {container}: "
            f"at most {achievable:.2f} of {what} ({tuple(request)} nm: output"
            f"{'' if thin else ', LSD context'}, rotation) can lie inside its labelled extent {tuple(extent)} nm, too "
            f"close to the minimum for random locations to find it quickly; set "
            f"training.min_masked <= {achievable / 1.5:.2f} or use a larger volume"
        )
    return thin


def _volume_source(
    config: LsdflowConfig, volume: VolumeRef, keys: TrainingKeys, label_padding, label_request
):
    container = Path(volume.path)
    arrays = _check_training_volume(config, container, needs_mito="mito_affs" in config.model.outputs)
    labelled = arrays["labels"].roi
    if volume.roi is not None:
        # only this region's labels are trained on (the rest may be held out for
        # validation); raw data around it stays available as context
        if not labelled.contains(volume.roi):
            raise VolumeError(f"{volume}: the training region is not inside {config.data.labels_dataset} (ROI {labelled})")
        labelled = volume.roi
    thin = _check_masked_fraction(config, container, labelled, label_request)
    if thin:  # padded far enough for every request to fit around the labelled sections
        label_padding = Coordinate(max(p, r) for p, r in zip(label_padding, label_request))
    raw = arrays["raw"]
    mean, std = intensity_stats(raw)
    factor = normalization_factor(raw.dtype)
    sources = {
        keys.raw: gp.ArraySource(keys.raw, raw, interpolatable=True),
        keys.labels: gp.ArraySource(keys.labels, arrays["labels"], interpolatable=False),
        **{
            key: (
                gp.ArraySource(key, arrays["labels_mask"], interpolatable=False)
                if arrays["labels_mask"] is not None
                else _DenseMask(key, arrays["labels"].roi, arrays["labels"].voxel_size)
            )
            for key in (keys.labels_mask, keys.sample_mask)
        },
    }
    if "mito" in arrays:
        sources[keys.mito] = gp.ArraySource(keys.mito, arrays["mito"], interpolatable=False)
    if volume.roi is not None:
        for key in sources:
            if key != keys.raw:
                sources[key] = sources[key] + gp.Crop(key, roi=volume.roi)
    pipeline = tuple(sources.values()) + gp.MergeProvider()
    pipeline += gp.Normalize(keys.raw, factor=factor)
    # z-score per volume: acquisitions differ in contrast across microscopes
    pipeline += gp.IntensityScaleShift(keys.raw, 1.0 / std, -mean / std)
    pipeline += gp.Pad(keys.raw, None)
    pipeline += gp.Pad(keys.labels, label_padding)
    pipeline += gp.Pad(keys.labels_mask, label_padding)
    pipeline += gp.Pad(keys.sample_mask, label_padding)
    if "mito" in arrays:
        pipeline += gp.Pad(keys.mito, label_padding)
    keys.sample_at_output |= thin
    pipeline += gp.RandomLocation(min_masked=config.training.min_masked,
                                  mask=keys.sample_mask if thin else keys.labels_mask)
    return pipeline


def build_training_pipeline(
    config: LsdflowConfig,
    keys: TrainingKeys,
    train_node: gp.BatchFilter | None = None,
    precache: bool = True,
):
    """The gunpowder pipeline from sources to (optionally) the Train node."""
    t = config.training
    aug = config.augment
    voxel_size = Coordinate(config.data.voxel_size)
    if not config.data.train:
        raise ConfigError(f"{config.source}: data.train lists no training volumes")
    input_size = Coordinate(config.model.input_shape) * voxel_size
    output_size = Coordinate(config.model.output_shape) * voxel_size
    network_context = (input_size - output_size) / 2
    lsd_context = Coordinate(
        math.ceil(3 * t.lsd_sigma_nm / v) * v for v in voxel_size
    )
    label_padding = Coordinate(max(a, b) for a, b in zip(network_context, lsd_context))

    label_request = output_size + lsd_context * 2
    sources = tuple(
        _volume_source(config, volume, keys, label_padding, label_request) for volume in config.data.train
    )
    pipeline = sources + gp.RandomProvider()

    anisotropic = config.data.is_anisotropic
    if aug.elastic:
        with warnings.catch_warnings():
            # gunpowder 1.4 marks ElasticAugment deprecated in favour of DeformAugment,
            # but only ElasticAugment has the section slips/shifts anisotropic data needs
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            pipeline += gp.ElasticAugment(
                control_point_spacing=[
                    max(1, round(s / v)) for s, v in zip(aug.control_point_spacing_nm, voxel_size)
                ],
                jitter_sigma=[j / v for j, v in zip(aug.jitter_sigma_nm, voxel_size)],
                rotation_interval=[0, math.pi / 2.0],
                prob_slip=aug.prob_slip,
                prob_shift=aug.prob_shift,
                max_misalign=max(0, round(aug.max_misalign_nm / min(voxel_size))),
                subsample=aug.subsample,
            )
    pipeline += gp.SimpleAugment(transpose_only=aug.transpose_axes)
    pipeline += gp.IntensityAugment(
        keys.raw,
        scale_min=aug.intensity_scale[0],
        scale_max=aug.intensity_scale[1],
        shift_min=aug.intensity_shift[0],
        shift_max=aug.intensity_shift[1],
        z_section_wise=anisotropic,
        clip=False,  # data are z-scored, not in [0, 1]
    )
    if aug.blur_sigma_nm[1] > 0:
        pipeline += BlurAugment(keys.raw, aug.blur_sigma_nm, aug.blur_probability, in_plane_only=anisotropic)
    if t.grow_boundary_steps > 0:
        pipeline += gp.GrowBoundary(
            keys.labels, mask=keys.labels_mask, steps=t.grow_boundary_steps, only_xy=anisotropic
        )
    outputs = config.model.outputs
    neighborhood = [list(n) for n in config.model.affinity_neighborhood]
    if "lsds" in outputs:
        pipeline += AddLocalShapeDescriptor(
            keys.labels,
            keys.targets["lsds"],
            lsds_mask=keys.weights["lsds"],
            labels_mask=keys.labels_mask,
            sigma=t.lsd_sigma_nm,
            downsample=t.lsd_downsample,
        )
    for name, labels in (("affs", keys.labels), ("mito_affs", keys.mito)):
        if name not in outputs:
            continue
        mask = gp.ArrayKey(f"{name.upper()}_MASK")
        pipeline += gp.AddAffinities(
            affinity_neighborhood=neighborhood,
            labels=labels,
            affinities=keys.targets[name],
            labels_mask=keys.labels_mask,
            affinities_mask=mask,
            dtype=np.float32,
        )
        if t.balance_affinities:
            pipeline += gp.BalanceLabels(keys.targets[name], keys.weights[name], mask=mask)
        else:
            pipeline += _Copy(mask, keys.weights[name])
    pipeline += gp.Unsqueeze([keys.raw])
    pipeline += gp.Stack(t.batch_size)
    if precache:
        pipeline += gp.PreCache(cache_size=t.precache_size, num_workers=t.precache_workers)
    if train_node is not None:
        pipeline += train_node
    return pipeline


class _Copy(gp.BatchFilter):
    """Provide `target` as a float32 copy of `source` (unbalanced weights)."""

    def __init__(self, source: gp.ArrayKey, target: gp.ArrayKey):
        self.source = source
        self.target = target

    def setup(self):
        spec = self.spec[self.source].copy()
        spec.dtype = np.float32
        self.provides(self.target, spec)

    def prepare(self, request):
        deps = gp.BatchRequest()
        deps[self.source] = request[self.target].copy()
        return deps

    def process(self, batch, request):
        spec = batch[self.source].spec.copy()
        spec.dtype = np.float32
        out = gp.Batch()
        out[self.target] = gp.Array(batch[self.source].data.astype(np.float32), spec)
        return out


def make_request(config: LsdflowConfig, keys: TrainingKeys, seed: int | None = None) -> gp.BatchRequest:
    voxel_size = Coordinate(config.data.voxel_size)
    input_size = Coordinate(config.model.input_shape) * voxel_size
    output_size = Coordinate(config.model.output_shape) * voxel_size
    request = gp.BatchRequest(random_seed=seed)
    request.add(keys.raw, input_size)
    for name in config.model.outputs:
        request.add(keys.targets[name], output_size)
        request.add(keys.weights[name], output_size)
    if keys.sample_at_output:
        request.add(keys.sample_mask, output_size)
    return request


def training_request(config: LsdflowConfig, keys: TrainingKeys) -> gp.BatchRequest:
    """The request of every training iteration: deliberately without a random seed.

    PreCache workers copy one request, and gunpowder derives a copy's seed from the
    original's: a seeded request would make every worker produce the same batch, forever."""
    return make_request(config, keys, seed=None)


@dataclass
class TrainingResult:
    checkpoint: Path
    iteration: int
    losses: list[tuple[int, float]]
    seconds: float
    device: str

    @property
    def iterations_per_second(self) -> float:
        done = len(self.losses)
        return done / self.seconds if self.seconds > 0 else float("nan")


class _Train(gunpowder.torch.Train):
    """gunpowder's Train, with the configured learning rate kept on resume.

    Train.start() restores the optimizer's state from the newest checkpoint, learning
    rate included: a run resumed with a lower `training.learning_rate` (the usual way to
    decay it) would silently go on with the old one."""

    def __init__(self, *args, learning_rate: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.learning_rate = learning_rate

    def start(self):
        super().start()
        for group in self.optimizer.param_groups:
            if group["lr"] != self.learning_rate:
                logger.info("learning rate %g (checkpoint had %g)", self.learning_rate, group["lr"])
            group["lr"] = self.learning_rate


def _write_run_config(config: LsdflowConfig) -> None:
    """Keep the resolved config beside the checkpoints; refuse to resume another network."""
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = config.checkpoint_dir / "config.json"
    if path.is_file():
        # only the network must match; other sections may come from an older lsdflow
        previous = ModelConfig.model_validate(json.loads(path.read_text())["model"])
        if previous != config.model and latest_checkpoint(config.checkpoint_dir):
            raise ConfigError(
                f"{config.checkpoint_dir} holds checkpoints of a different network "
                f"(model section differs from {config.source}); use another workspace"
            )
    path.write_text(config.model_dump_json(indent=2))


def start_from_model(config: LsdflowConfig, model_file: str | Path) -> int:
    """Begin a run with a trained model's weights (fine-tuning, or continuing with a new
    optimizer): its weights and a fresh Adam state become the run's first checkpoint,
    numbered with the model's iteration so that the count goes on. Returns that iteration.

    Refused, before anything is written, when the workspace already holds checkpoints
    (that run resumes by itself) or when the weights do not fit the config's network."""
    existing = latest_checkpoint(config.checkpoint_dir)
    if existing:
        raise ConfigError(
            f"{config.checkpoint_dir} already holds checkpoints (newest {existing[1].name}): a run started "
            f"from {model_file} needs a new workspace (without the model file, training resumes)"
        )
    trained, meta = load_model(model_file)
    model = build_model(config.model)
    try:
        model.load_state_dict(trained.state_dict())
    except RuntimeError as e:
        raise ConfigError(
            f"{model_file}: its weights do not fit the network of {config.source} "
            f"(model section: {config.model.kind}, num_fmaps {config.model.num_fmaps}): {str(e).splitlines()[0]}"
        ) from None
    _write_run_config(config)
    iteration = int(meta.get("iteration") or 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.training.learning_rate)
    save_training_checkpoint(config.checkpoint_dir, iteration, model.train(), optimizer)
    logger.info("run starts from %s at iteration %d", model_file, iteration)
    return iteration


def train(
    config: LsdflowConfig,
    iterations: int | None = None,
    device: str | None = None,
    progress: bool = True,
    on_log: Callable[[int, float, float], None] | None = None,
    init_from: str | Path | None = None,
) -> TrainingResult:
    """Train (or resume training) up to `iterations` total iterations; `init_from`: start
    a new run from a model file's weights (`start_from_model`)."""
    t = config.training
    total = iterations if iterations is not None else t.iterations
    device = device or default_device()
    checkpoint_dir = config.checkpoint_dir
    if init_from is not None:
        # every training volume checked before the run's first checkpoint is written: a
        # bad volume must not leave a workspace that refuses the corrected --init-from
        build_training_pipeline(config, TrainingKeys.for_outputs(config.model.outputs), precache=False)
        start_from_model(config, init_from)

    start = latest_checkpoint(checkpoint_dir)
    start_iteration = start[0] if start else 0
    if start_iteration >= total:
        logger.info("already trained to iteration %d (>= %d)", start_iteration, total)
        return TrainingResult(start[1], start_iteration, [], 0.0, device)

    if t.seed is not None:
        torch.manual_seed(t.seed + start_iteration)
        np.random.seed((t.seed + start_iteration) % 2**32)
    keys = TrainingKeys.for_outputs(config.model.outputs)
    model = build_model(config.model)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=t.learning_rate)
    loss = MultiTaskWeightedMSELoss([t.loss_weights[n] for n in config.model.outputs])
    loss_inputs = {}
    for i, name in enumerate(config.model.outputs):
        loss_inputs[3 * i] = keys.predictions[name]
        loss_inputs[3 * i + 1] = keys.targets[name]
        loss_inputs[3 * i + 2] = keys.weights[name]
    train_node = _Train(
        model=model,
        loss=loss,
        optimizer=optimizer,
        inputs={"raw": keys.raw},
        outputs={i: keys.predictions[n] for i, n in enumerate(config.model.outputs)},
        loss_inputs=loss_inputs,
        checkpoint_basename=str(checkpoint_dir / "model"),
        save_every=t.save_every,
        device=device,
        learning_rate=t.learning_rate,
    )
    # opens and checks every training volume before anything is written
    pipeline = build_training_pipeline(config, keys, train_node=train_node)
    _write_run_config(config)

    log_path = config.resolved_workspace / "training_log.csv"
    new_log = not log_path.exists()
    losses: list[tuple[int, float]] = []
    began = time.perf_counter()
    iteration = start_iteration
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start_iteration, desc=f"train {config.name}", unit="it")
    # funlib arrays read through dask; its thread pool does not survive the fork into
    # PreCache workers (they deadlock), so reads run synchronously in each worker
    with (
        dask.config.set(scheduler="synchronous"),
        open(log_path, "a", newline="") as log_file,
        gp.build(pipeline),
    ):
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(["iteration", "loss", "seconds_per_iteration", "device"])
        last = time.perf_counter()
        while iteration < total:
            batch = pipeline.request_batch(training_request(config, keys))
            iteration = batch.iteration
            value = float(batch.loss)
            now = time.perf_counter()
            losses.append((iteration, value))
            if iteration % t.log_every == 0 or iteration == total:
                writer.writerow([iteration, f"{value:.6f}", f"{now - last:.4f}", device])
                log_file.flush()
                if on_log:
                    on_log(iteration, value, now - last)
            last = now
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
        checkpoint = save_training_checkpoint(checkpoint_dir, iteration, train_node.model, optimizer)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - began
    (config.resolved_workspace / "training_summary.json").write_text(
        json.dumps(
            {
                "config": config.name,
                "iteration": iteration,
                "started_at_iteration": start_iteration,
                "seconds": round(seconds, 2),
                "device": device,
                "checkpoint": str(checkpoint),
            },
            indent=2,
        )
    )
    return TrainingResult(checkpoint, iteration, losses, seconds, device)
