"""Prediction throughput: `lsdflow predict` in memory and `--blockwise` (Zarr out) vs a
bare model(x) forward over the same tiles.

All on the same device, the same network, the same settings (test-time augmentation as
the config says) and the same volume (gala_test with the shipped model by default); the
bare forward (one process, every core, the passes each path makes) is the limit. Prints
a table and writes JSON.

    python benchmarks/predict_throughput.py [--repeat 3] [--device cpu|cuda] [--crop N]
        [--workers 2] [--set SECTION.FIELD=VALUE ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from funlib.geometry import Coordinate

from lsdflow.core.blockwise.runner import RunSettings, grid_blocks
from lsdflow.core.config import load_config
from lsdflow.core.io.volumes import open_array, write_array
from lsdflow.core.model.checkpoints import load_model
from lsdflow.core.model.devices import default_device
from lsdflow.core.predict.augmentation import MIRRORINGS
from lsdflow.core.predict.blockwise import (
    block_voxels,
    covering_voxels,
    predict_blockwise,
    predict_volume,
)
from lsdflow.core.predict.tiling import prediction_tile, tile_starts
from lsdflow.core.segment.threshold_selection import central_crop

ROOT = Path(__file__).resolve().parents[1]


def passes_in_memory(model, config, shape) -> int:
    """Network passes of `lsdflow predict` on a volume of `shape` voxels."""
    input_shape, output_shape = config.prediction_shapes
    augment = config.prediction.test_time_augmentation
    _, tile = prediction_tile(model, input_shape, output_shape, augment)
    margin = [(t - o) for t, o in zip(tile, output_shape)]  # both sides
    region = [max(s, o) + m for s, o, m in zip(shape, output_shape, margin)]
    return int(np.prod([len(tile_starts(r, t)) for r, t in zip(region, tile)])) * _mirrorings(augment)


def passes_blockwise(model, config, roi, voxel_size) -> int:
    """Network passes of `lsdflow predict --blockwise` on `roi`."""
    input_shape, output_shape = config.prediction_shapes
    augment = config.prediction.test_time_augmentation
    _, tile = prediction_tile(model, input_shape, output_shape, augment)
    block = block_voxels(model, input_shape, output_shape, config.blockwise.prediction_tiles, augment)
    total = 0
    for write_roi in grid_blocks(roi, block * voxel_size):
        covered = covering_voxels(model, input_shape, output_shape, augment, write_roi.shape / voxel_size)
        total += int(np.prod([(c + t - o) // t for c, t, o in zip(covered, tile, output_shape)]))
    return total * _mirrorings(augment)


def _mirrorings(augment: bool) -> int:
    return len(MIRRORINGS) if augment else 1


def bare_seconds(model, tile_shape, passes, batch_size, device) -> float:
    """`passes` forwards of random tiles, nothing else."""
    x = torch.randn(batch_size, 1, *tile_shape, device=device)
    with torch.inference_mode():
        model(x)  # warm up
        began = time.perf_counter()
        for _ in range(0, passes, batch_size):
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--workers", type=int, default=2, help="daisy workers of the blockwise path")
    parser.add_argument("--crop", type=int, help="predict a centred crop of N^3 voxels of the volume")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a setting, e.g. prediction.test_time_augmentation=false")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_throughput.json")
    args = parser.parse_args()
    config = load_config("gala", args.set)
    volume = config.data.test[0].path
    raw = open_array(volume, config.data.raw_dataset)
    vs = raw.voxel_size
    roi = central_crop(raw.roi, vs, args.crop**3) if args.crop else raw.roi
    shape = tuple(int(s) for s in roi.shape / vs)
    voxels = int(np.prod(shape))
    input_shape, output_shape = config.prediction_shapes
    augment = config.prediction.test_time_augmentation
    model, _ = load_model(config.prediction.checkpoint, device=args.device)
    tile_in, _ = prediction_tile(model, input_shape, output_shape, augment)

    passes = {"in_memory": passes_in_memory(model, config, shape),
              "blockwise": passes_blockwise(model, config, roi, Coordinate(vs))}
    times: dict[str, list[float]] = {"in_memory": [], "blockwise": [], "bare_in_memory": [], "bare_blockwise": []}
    settings = RunSettings(workers=args.workers, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeat):  # every measurement in each round, so that a busy spell hits all
            work = Path(tmp) / f"v{k}.zarr"
            write_array(work, config.data.raw_dataset, roi, vs, raw[roi])
            began = time.perf_counter()
            predict_volume(config, work, device=args.device, progress=False)
            times["in_memory"].append(time.perf_counter() - began)
            blocks = Path(tmp) / f"b{k}.zarr"
            write_array(blocks, config.data.raw_dataset, roi, vs, raw[roi])
            began = time.perf_counter()
            predict_blockwise(config, blocks, device=args.device, settings=settings)
            times["blockwise"].append(time.perf_counter() - began)
            for path, n in passes.items():
                times[f"bare_{path}"].append(bare_seconds(model, tile_in, n, config.prediction.batch_size, args.device))
    bare = {path: min(times[f"bare_{path}"]) for path in passes}
    memory_times, blockwise_times = times["in_memory"], times["blockwise"]
    rates = {
        "in_memory": voxels / min(memory_times) / 1e6,
        "blockwise": voxels / min(blockwise_times) / 1e6,
        "bare_in_memory_tiles": voxels / bare["in_memory"] / 1e6,
        "bare_blockwise_tiles": voxels / bare["blockwise"] / 1e6,
    }
    rows = {
        "volume": str(volume), "voxels": voxels, "test_time_augmentation": augment, "device": args.device,
        "workers": args.workers, "passes": passes, "tile_input_shape": list(tile_in),
        "input_shape": list(input_shape), "output_shape": list(output_shape),
        "block_voxels": list(block_voxels(model, input_shape, output_shape, config.blockwise.prediction_tiles, augment)),
        "seconds": times,
        "mvox_s": rates,
        "lsdflow_predict_mvox_s": rates["in_memory"], "bare_forward_mvox_s": rates["bare_in_memory_tiles"],
        "ratio_lsdflow_to_bare": rates["in_memory"] / rates["bare_in_memory_tiles"],
        "ratio_blockwise_to_in_memory": rates["blockwise"] / rates["in_memory"],
        "ratio_blockwise_to_bare": rates["blockwise"] / rates["bare_blockwise_tiles"],
    }
    print(f"{'':40s} {'passes':>7s} {'Mvox/s':>8s}")
    print(f"{'lsdflow predict, in memory':40s} {passes['in_memory']:7d} {rates['in_memory']:8.3f}")
    print(f"{f'lsdflow predict --blockwise, {args.workers} workers':40s} {passes['blockwise']:7d} "
          f"{rates['blockwise']:8.3f}")
    print(f"{'bare model(x), the in-memory tiles':40s} {passes['in_memory']:7d} {rates['bare_in_memory_tiles']:8.3f}")
    print(f"{'bare model(x), the blockwise tiles':40s} {passes['blockwise']:7d} {rates['bare_blockwise_tiles']:8.3f}")
    print(f"blockwise / in memory: {rows['ratio_blockwise_to_in_memory']:.2f}; blockwise / bare: "
          f"{rows['ratio_blockwise_to_bare']:.2f}; in memory / bare: {rows['ratio_lsdflow_to_bare']:.2f}  "
          f"(tiles {tuple(tile_in)}, test-time augmentation {augment}, {voxels / 1e6:.1f} Mvox, {args.device}, "
          f"best of {args.repeat})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
