"""Prediction throughput: `lsdflow predict` (in memory, Zarr out) vs a bare model(x) forward.

Both on the same device, the same network and the same tiles of the same volume
(gala_test with the shipped model by default); the bare forward is the limit. Prints a
table and writes JSON.

    python benchmarks/predict_throughput.py [--repeat 3] [--device cpu|cuda] [--crop N]
        [--set SECTION.FIELD=VALUE ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lsdflow.core.checkpoints import load_model
from lsdflow.core.config import load_config
from lsdflow.core.predict import predict_volume, tile_starts
from lsdflow.core.train import default_device
from lsdflow.core.threshold_selection import central_crop
from lsdflow.core.volumes import open_array, write_array

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--crop", type=int, help="predict a centred crop of N^3 voxels of the volume")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a setting, e.g. prediction.test_time_augmentation=false")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_throughput.json")
    args = parser.parse_args()
    config = load_config("gala", args.set)
    volume = config.data.test[0].path
    raw = open_array(volume, config.data.raw_dataset)
    roi = central_crop(raw.roi, raw.voxel_size, args.crop**3) if args.crop else raw.roi
    shape = tuple(int(s) for s in roi.shape / raw.voxel_size)
    voxels = int(np.prod(shape))
    input_shape, output_shape = config.prediction_shapes
    model, _ = load_model(config.prediction.checkpoint, device=args.device)

    lsdflow_times = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "v.zarr"
        write_array(work, config.data.raw_dataset, roi, raw.voxel_size, raw[roi])
        for _ in range(args.repeat):
            began = time.perf_counter()
            predict_volume(config, work, device=args.device, progress=False)
            lsdflow_times.append(time.perf_counter() - began)

    padded = [max(s, o) for s, o in zip(shape, output_shape)]
    tiles = list(itertools.product(*(tile_starts(s, o) for s, o in zip(padded, output_shape))))
    x = torch.randn(config.prediction.batch_size, 1, *input_shape, device=args.device)
    bare_times = []
    with torch.inference_mode():
        model(x)  # warm up
        for _ in range(args.repeat):
            began = time.perf_counter()
            for _ in range(0, len(tiles), config.prediction.batch_size):
                model(x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            bare_times.append(time.perf_counter() - began)

    lsdflow_rate = voxels / min(lsdflow_times)
    bare_rate = voxels / min(bare_times)
    rows = {
        "volume": str(volume), "voxels": voxels, "test_time_augmentation": config.prediction.test_time_augmentation, "device": args.device, "tiles": len(tiles),
        "input_shape": list(input_shape), "output_shape": list(output_shape),
        "lsdflow_predict_mvox_s": lsdflow_rate / 1e6, "bare_forward_mvox_s": bare_rate / 1e6,
        "ratio_lsdflow_to_bare": lsdflow_rate / bare_rate,
    }
    print(f"{'':28s} {'Mvox/s':>8s}")
    print(f"{'lsdflow predict (Zarr out)':28s} {rows['lsdflow_predict_mvox_s']:8.3f}")
    print(f"{'bare model(x), same tiles':28s} {rows['bare_forward_mvox_s']:8.3f}")
    print(f"ratio lsdflow / bare: {rows['ratio_lsdflow_to_bare']:.2f}  ({len(tiles)} tiles {tuple(input_shape)} -> "
          f"{tuple(output_shape)}, {voxels / 1e6:.1f} Mvox, {args.device}, best of {args.repeat})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
