"""Segmentation throughput: lsdflow's fragments + agglomeration vs one waterz.agglomerate call.

On the same affinities (the shipped model's prediction of gala_test by default) and the
same thresholds; waterz alone builds its own zwatershed fragments. Prints a table and
writes JSON.

    python benchmarks/segment_throughput.py [--repeat 3] [--crop N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import waterz

from lsdflow.core.config import load_config
from lsdflow.core.io.intensity import Normalization, intensity_stats
from lsdflow.core.io.volumes import open_array
from lsdflow.core.model.checkpoints import load_model
from lsdflow.core.predict.tiling import predict_array
from lsdflow.core.segment.threshold_selection import central_crop
from lsdflow.core.segment.watershed import (
    agglomerate,
    fragments_from_affinities,
    quiet_stdout,
    scoring_function,
)

ROOT = Path(__file__).resolve().parents[1]


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--crop", type=int, help="segment a centred crop of N^3 voxels of the volume")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "segment_throughput.json")
    args = parser.parse_args()
    config = load_config("gala")
    raw_array = open_array(config.data.test[0].path, config.data.raw_dataset)
    roi = central_crop(raw_array.roi, raw_array.voxel_size, args.crop**3) if args.crop else raw_array.roi
    model, _ = load_model(config.prediction.checkpoint)
    normalization = Normalization(*intensity_stats(raw_array))
    _, affs = predict_array(model, raw_array[roi] / 255.0, *config.prediction_shapes, normalization)
    affs = np.ascontiguousarray(affs, dtype=np.float32)
    thresholds = config.segmentation.thresholds
    merge = config.segmentation.merge_function
    voxels = int(np.prod(affs.shape[1:]))

    def ours():
        agglomerate(affs, fragments_from_affinities(affs), thresholds, merge)

    def fragments_only():
        fragments_from_affinities(affs)

    def waterz_alone():
        with quiet_stdout():
            for _ in waterz.agglomerate(affs, thresholds, scoring_function=scoring_function(merge), discretize_queue=256):
                pass

    t_ours, t_frag, t_waterz = (best_time(f, args.repeat) for f in (ours, fragments_only, waterz_alone))
    rows = {
        "voxels": voxels, "thresholds": thresholds, "merge_function": merge,
        "lsdflow_fragments_mvox_s": voxels / t_frag / 1e6,
        "lsdflow_fragments_plus_agglomeration_mvox_s": voxels / t_ours / 1e6,
        "waterz_agglomerate_alone_mvox_s": voxels / t_waterz / 1e6,
        "ratio_lsdflow_to_waterz": t_waterz / t_ours,
    }
    print(f"{'':40s} {'Mvox/s':>8s}")
    print(f"{'lsdflow fragments only':40s} {rows['lsdflow_fragments_mvox_s']:8.2f}")
    print(f"{'lsdflow fragments + agglomeration':40s} {rows['lsdflow_fragments_plus_agglomeration_mvox_s']:8.2f}")
    print(f"{'one waterz.agglomerate call':40s} {rows['waterz_agglomerate_alone_mvox_s']:8.2f}")
    print(f"ratio lsdflow / waterz: {rows['ratio_lsdflow_to_waterz']:.2f}  ({voxels / 1e6:.1f} Mvox, "
          f"{len(thresholds)} thresholds, {merge}, best of {args.repeat})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
