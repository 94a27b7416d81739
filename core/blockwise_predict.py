"""Prediction of large volumes block by block (the `predict` stage of the blockwise runner).

Each worker loads the model once, on `cuda:{worker_id % n_gpus}` when GPUs exist, else
the CPU with its share of the cores (workers x torch threads never exceed them). A block
is a whole number of network passes (`block_voxels`); it reads the raw data with
the network's context, z-scored with the volume's statistics (like training) and padded
with the mean outside the volume. Blocks with no raw data (no stored chunks, all zeros,
or outside the optional mask) are skipped and recorded as skipped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from .blockwise import BlockProcessor, RunSettings, Stage, grid_blocks, run_stage
from .devices import share_cores, worker_device
from .output_lock import output_lock
from .predict import context_margin, prediction_tile
from .input_checks import check_finite, check_not_constant, check_writable
from .staged_arrays import OutputArray, StagedArrays, committed_fingerprint, stage_key
from .volumes import VolumeError, container_identity, dataset_fingerprint, open_array, voxel_slices

CODE_VERSION = "blockwise-predict-2"  # 2: tiles grown by the test-time augmentation margin


class PredictBlock(BlockProcessor):
    def __init__(self, container, raw_dataset, model_file, outputs: dict[str, str], input_shape, output_shape,
                 block_size, normalization, dtype, batch_size, device=None, empty_dir=None, augment=False,
                 workers_per_machine=1):
        self.container = str(container)
        self.raw_dataset = raw_dataset
        self.model_file = str(model_file)
        self.outputs = outputs  # model output name -> dataset to write
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(output_shape)
        self.block_size = Coordinate(block_size)
        self.normalization = normalization  # core.intensity.Normalization: the same for every block
        self.dtype = dtype
        self.batch_size = batch_size
        self.device = device
        self.empty_dir = str(empty_dir) if empty_dir else None
        self.augment = augment
        self.workers_per_machine = workers_per_machine

    def setup(self):
        from .checkpoints import load_model

        self._h_device = self.device or worker_device()
        if self._h_device == "cpu":
            share_cores(self.workers_per_machine)
        self._h_model, _ = load_model(self.model_file, self._h_device)
        self._h_raw = open_array(self.container, self.raw_dataset)
        self._h_outputs = {name: open_array(self.container, d, mode="r+") for name, d in self.outputs.items()}

    def process(self, block):
        from .predict import predict_with_context

        raw_array = self._h_raw
        vs = raw_array.voxel_size
        context = Coordinate(context_margin(self._h_model, self.input_shape, self.output_shape, self.augment)) * vs
        # a block shrunk at the volume's far faces is predicted by the passes it needs, then cropped
        covered = covering_voxels(self._h_model, self.input_shape, self.output_shape, self.augment,
                                  block.write_roi.shape / vs)
        full = Roi(block.write_roi.begin, covered * vs).grow(context, context)
        inside = full.intersect(raw_array.roi)
        raw = raw_array[inside] if not inside.empty else np.zeros(0)
        if not np.any(raw):
            if self.empty_dir:
                Path(self.empty_dir).mkdir(parents=True, exist_ok=True)
                (Path(self.empty_dir) / f"{block.block_id[1]}").touch()
            return  # outputs keep their fill value 0
        check_finite(raw, f"{self.container}/{self.raw_dataset} in {inside}")
        scale = float(np.iinfo(raw.dtype).max) if np.issubdtype(raw.dtype, np.integer) else 1.0
        normalized = np.zeros(tuple(full.shape / vs), dtype=np.float32)  # 0 = the mean
        where = voxel_slices(inside, full, vs)
        normalized[where] = self.normalization(raw.astype(np.float32) / scale)
        results = predict_with_context(
            self._h_model, normalized, self.input_shape, self.output_shape, self.batch_size, self._h_device,
            augment=self.augment,
        )
        crop = (slice(None),) + tuple(slice(0, s) for s in block.write_roi.shape / vs)
        for name, data in zip(self._h_model.outputs, results):
            if name not in self._h_outputs:
                continue
            data = data[crop]
            values = np.round(data * 255).astype(np.uint8) if self.dtype == "uint8" else data.astype(np.float32)
            self._h_outputs[name][block.write_roi] = values


def block_voxels(model, input_shape, output_shape, tiles, augment: bool) -> Coordinate:
    """Voxels per axis of a prediction block: what `tiles` network passes per axis cover,
    less the test-time augmentation margin they also cover beyond the block
    (`predict.prediction_tile`); `tiles` output tiles without augmentation."""
    _, tile = prediction_tile(model, input_shape, output_shape, augment)
    margins = [t - o for t, o in zip(tile, output_shape)]  # both sides
    return Coordinate(n * t - m for n, t, m in zip(tiles, tile, margins))


def covering_voxels(model, input_shape, output_shape, augment: bool, write_voxels) -> Coordinate:
    """The smallest block of whole passes (`block_voxels`) that covers `write_voxels`."""
    _, tile = prediction_tile(model, input_shape, output_shape, augment)
    passes = [max(1, -(-(w + t - o) // t)) for w, t, o in zip(write_voxels, tile, output_shape)]
    return block_voxels(model, input_shape, output_shape, passes, augment)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def empty_block_mask(raw_array, total_roi: Roi, block_size: Coordinate, mask_array=None) -> np.ndarray:
    """Per block (grid order, 1 = skip): no raw chunk stored under the block, or the
    mask is zero everywhere in it. Reads only chunk names (and the mask, usually small)."""
    store = raw_array._source_data.store
    path = raw_array._source_data.path
    separator = raw_array._source_data._dimension_separator or "."
    prefix = f"{path}/" if path else ""
    chunks = np.array(raw_array._source_data.chunks)
    present = set()
    for key in store.keys() if hasattr(store, "keys") else []:
        if key.startswith(prefix):
            name = key[len(prefix):]
            parts = name.split(separator)
            if len(parts) == len(chunks) and all(p.isdigit() for p in parts):
                present.add(tuple(int(p) for p in parts))
    vs = raw_array.voxel_size
    grid = tuple(-(-s // b) for s, b in zip(total_roi.shape, block_size))
    skip = np.zeros(grid, dtype=np.uint8)
    for position, write_roi in zip(np.ndindex(*grid), grid_blocks(total_roi, block_size)):
        begin = np.array((write_roi.begin - raw_array.roi.begin) / vs) // chunks
        end = (np.array((write_roi.end - raw_array.roi.begin) / vs) - 1) // chunks
        has_data = any(
            tuple(int(x) for x in np.add(c, begin)) in present for c in np.ndindex(*(end - begin + 1))
        )
        if has_data and mask_array is not None:
            region = write_roi.intersect(mask_array.roi)
            has_data = not region.empty and bool(np.any(mask_array[region]))
        skip[position] = 0 if has_data else 1
    return skip


def _intensity_range(data) -> tuple[float, float]:
    """(low, high) of a Zarr array, chunk by chunk; stops at the first sign of two values."""
    import itertools

    low = high = None
    for start in itertools.product(*(range(0, n, c) for n, c in zip(data.shape, data.chunks))):
        chunk = data[tuple(slice(s, s + c) for s, c in zip(start, data.chunks))]
        low = float(chunk.min()) if low is None else min(low, float(chunk.min()))
        high = float(chunk.max()) if high is None else max(high, float(chunk.max()))
        if low != high:
            break
    return low, high


def predict_blockwise(
    config,
    container,
    model_file=None,
    output_dtype: str | None = None,
    settings: RunSettings | None = None,
    device: str | None = None,
    extra_attrs: dict | None = None,
) -> dict:
    """Predict `volumes/pred_<output>` for the whole raw ROI block by block (see module doc)."""
    from .checkpoints import input_normalization, input_shift, load_model
    from .config import check_voxel_size
    from .predict import prediction_attrs

    container = Path(container).resolve()
    bw = config.blockwise
    settings = settings or RunSettings(bw.workers, bw.retries, bw.block_timeout_s, bw.launcher)
    model_file = Path(model_file or config.prediction.checkpoint or "")
    raw = open_array(container, config.data.raw_dataset)
    check_voxel_size(config, tuple(raw.voxel_size), f"{container}/{config.data.raw_dataset}")
    model, meta = load_model(model_file)  # a missing or broken model fails before any output
    check_writable(container)
    mask = open_array(container, bw.mask_dataset) if bw.mask_dataset else None
    dtype = output_dtype or config.prediction.output_dtype
    # the model file defines the network; the config the data and the prediction tile
    input_shape, output_shape = config.with_model(model.config).prediction_shapes
    vs = raw.voxel_size
    augment = config.prediction.test_time_augmentation
    block = block_voxels(model, input_shape, output_shape, bw.prediction_tiles, augment)
    block_size = block * vs
    context = Coordinate(context_margin(model, input_shape, output_shape, augment)) * vs
    normalization = input_normalization(raw, config.prediction.normalization, model_file, meta)
    if normalization.std <= 1e-6:  # the sampled chunks are all of one intensity: look further before refusing
        check_not_constant(*_intensity_range(raw._source_data), f"{container}/{config.data.raw_dataset}")
    attrs = prediction_attrs(model_file, meta, model, f"{container}/{config.data.raw_dataset}", dtype)
    attrs["test_time_augmentation"] = augment
    attrs["normalization"] = normalization.kind
    attrs["intensity_shift"] = input_shift(raw, model_file, meta)  # label-free: unlike the training data?
    attrs.update(extra_attrs or {})  # e.g. the registered model's lineage
    probe = {name: channels for name, channels in zip(model.outputs, _output_channels(model, input_shape))}
    key = _prediction_key(config, container, model_file, input_shape, output_shape, dtype, block_size, extra_attrs)
    outputs = [
        OutputArray(f"volumes/pred_{name}", raw.roi, vs, dtype, tuple(block), num_channels=channels,
                    attrs=dict(attrs))
        for name, channels in probe.items()
    ]
    with output_lock(container, "predict"):  # one writer of the predictions at a time
        staged = StagedArrays(container, outputs, key)
        if staged.complete():
            return {"stage": {"stage": "predict", "up_to_date": True, "key": key},
                    "written": [container / o.dataset for o in outputs]}
        partials = staged.prepare()
        empty_dir = staged.tracking_dir / "empty"
        stage = Stage(
            "predict", raw.roi, block_size, context,
            PredictBlock(container, config.data.raw_dataset, model_file.resolve(),
                         {name: partials[f"volumes/pred_{name}"] for name in probe}, input_shape, output_shape,
                         block_size, normalization, dtype, config.prediction.batch_size, device, empty_dir, augment,
                         workers_per_machine=1 if settings.launcher else settings.workers),
            staged.tracking_dir,
            skip_mask=empty_block_mask(raw, raw.roi, block_size, mask),
            log_dir=container / ".lsdflow" / "logs" / "predict",
        )
        summary = run_stage(stage, settings)
        empty = len(list(empty_dir.glob("*"))) if empty_dir.exists() else 0
        summary["processed"] = max(0, summary["processed"] - empty)
        summary["skipped"] += empty
        written = staged.commit()
        return {"stage": {**summary, "key": key}, "written": written}


def _prediction_key(config, container, model_file, input_shape, output_shape, dtype, block_size, lineage) -> str:
    return stage_key(
        stage="predict", code=CODE_VERSION, container=container_identity(container),
        raw=dataset_fingerprint(container, config.data.raw_dataset),
        model=_file_sha256(Path(model_file)), input_shape=tuple(input_shape), output_shape=tuple(output_shape),
        dtype=dtype, block=tuple(block_size), mask=config.blockwise.mask_dataset, lineage=lineage or {},
        augment=config.prediction.test_time_augmentation,
        # z-scoring was the only normalization before there was a choice: its keys stay as they were
        **({} if config.prediction.normalization == "zscore" else {"normalization": config.prediction.normalization}),
    )


def prediction_key(config, container, model_file, output_dtype: str | None = None, extra_attrs: dict | None = None) -> str:
    """The key of `predict_blockwise`'s result for these inputs (what its cache depends on)."""
    return prediction_state(config, container, model_file, output_dtype, extra_attrs)[0]


def prediction_state(config, container, model_file, output_dtype: str | None = None,
                     extra_attrs: dict | None = None) -> tuple[str, str | None]:
    """(key, fingerprint of the committed outputs made with that key, or None)."""
    from .checkpoints import load_model

    container = Path(container).resolve()
    model, _ = load_model(model_file)
    input_shape, output_shape = config.with_model(model.config).prediction_shapes
    vs = open_array(container, config.data.raw_dataset).voxel_size
    block_size = block_voxels(model, input_shape, output_shape, config.blockwise.prediction_tiles,
                              config.prediction.test_time_augmentation) * vs
    key = _prediction_key(config, container, model_file, input_shape, output_shape,
                          output_dtype or config.prediction.output_dtype, block_size, extra_attrs)
    done = committed_fingerprint(container, {f"volumes/pred_{name}": key for name in model.outputs})
    return key, done


def _output_channels(model, input_shape) -> list[int]:
    """Channels of each model output, from a forward on the meta device (no compute)."""
    import copy

    import torch

    meta_model = copy.deepcopy(model).to("meta")
    with torch.no_grad():
        result = meta_model(torch.zeros((1, 1, *input_shape), device="meta"))
    if isinstance(result, torch.Tensor):
        result = (result,)
    return [int(r.shape[1]) for r in result]


__all__ = ["PredictBlock", "VolumeError", "empty_block_mask", "predict_blockwise", "prediction_key"]
