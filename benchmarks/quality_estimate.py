"""Does a label-free signal predict how good a segmentation is? For each model and region:
the true VOI sum at the model's validation threshold, against what a platform can compute
without labels: the VOI between the segmentations of two halves of the test-time
augmentations (mirrorings {(), z, y, x} against {zyx, yx, zx, zy}), the input shift and
the affinity uncertainty. Prints a table and writes JSON.

    python benchmarks/quality_estimate.py --model gala=data/pretrained/gala_mtlsd.pt:0.15 \
        --model medulla=data/pretrained/medulla_mtlsd.pt:0.2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from lsdflow.core.config import load_config
from lsdflow.core.evaluate.metrics import segmentation_scores
from lsdflow.core.io.volumes import open_array
from lsdflow.core.model.checkpoints import input_shift, load_model
from lsdflow.core.segment.quality_estimate import halves_affinities, segment_at, tta_disagreement
from lsdflow.core.segment.threshold_selection import affinity_uncertainty, central_crop

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=FILE:THRESHOLD (its validation threshold)")
    parser.add_argument("--datasets", nargs="+", default=["gala", "medulla"])
    parser.add_argument("--regions", nargs="+", default=["validation", "test"])
    parser.add_argument("--crop", type=int, help="a centred crop of N^3 voxels of each region")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality_estimate.json")
    args = parser.parse_args()
    rows = []
    for spec in args.model:
        name, rest = spec.split("=", 1)
        file, threshold = rest.rsplit(":", 1)
        for dataset in args.datasets:
            config = load_config(dataset)
            for region in args.regions:
                source = getattr(config.data, region)[0]
                raw_array = open_array(source.path, config.data.raw_dataset)
                labels_array = open_array(source.path, config.data.labels_dataset)
                roi = source.roi or raw_array.roi
                if args.crop:
                    roi = central_crop(roi, raw_array.voxel_size, args.crop ** 3)
                began = time.perf_counter()
                a, b, inner = halves_affinities(config, Path(file), raw_array, roi)
                a, b = a[inner], b[inner]
                shift = input_shift(raw_array, Path(file), load_model(Path(file))[1])
                labels = labels_array[roi][inner[1:]]
                t = float(threshold)
                seg = segment_at(config, (a + b) / 2, t)  # = test-time augmentation over all 8
                labelled = labels > 0
                true = segmentation_scores(labels[labelled], seg[labelled])
                halves_voi = tta_disagreement(config, a, b, t)
                row = {"model": name, "dataset": dataset, "region": region, "threshold": t, "voxels": int(labels.size),
                       "true_voi_sum": true.voi_sum, "true_voi_split": true.voi_split, "true_voi_merge": true.voi_merge,
                       "halves_voi_sum": halves_voi, "input_shift": shift,
                       "affinity_uncertainty": affinity_uncertainty((a + b) / 2),
                       "seconds": time.perf_counter() - began}
                rows.append(row)
                print(f"{name:10s} {dataset:8s} {region:10s} t {t:<5g} true VOI {row['true_voi_sum']:.3f}  "
                      f"halves VOI {row['halves_voi_sum']:.3f}  shift {shift:.3f}  "
                      f"uncertainty {row['affinity_uncertainty']:.3f}  ({row['seconds']:.0f} s)", flush=True)
    true = np.array([r["true_voi_sum"] for r in rows])
    summary = {signal: float(np.corrcoef(true, [r[signal] for r in rows])[0, 1]) if len(rows) > 2 else None
               for signal in ("halves_voi_sum", "input_shift", "affinity_uncertainty")}
    print("correlation with the true VOI sum: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items() if v is not None))
    args.out.write_text(json.dumps({"rows": rows, "correlation": summary, "crop": args.crop}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
