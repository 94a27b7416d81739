"""Segmentation quality on gala_test: the shipped MTLSD next to two baselines.

  mtlsd           shipped model → seeded watershed fragments → waterz (config's merge function)
  raw watershed   scikit-image watershed on a smoothed raw-intensity boundary map, seeds from
                  h-minima, h swept (the best h is reported: generous to the baseline)
  gt affinities   the same post-processing fed with affinities computed from the labels
                  (what post-processing loses when the affinities are right)

Best threshold (or h) by VOI sum. Prints a table and writes JSON.

    python benchmarks/quality_baselines.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from skimage.filters import gaussian
from skimage.measure import label
from skimage.morphology import h_minima
from skimage.segmentation import watershed

from lsdflow.core.affinities import labels_to_affinities
from lsdflow.core.checkpoints import load_model
from lsdflow.core.config import load_config
from lsdflow.core.metrics import segmentation_scores
from lsdflow.core.predict import predict_array
from lsdflow.core.segment import agglomerate, fragments_from_affinities
from lsdflow.core.volumes import intensity_stats, open_array

ROOT = Path(__file__).resolve().parents[1]


def best_of(gt, candidates: dict) -> dict:
    rows = [{"parameter": k, **segmentation_scores(gt, seg).as_dict()} for k, seg in candidates.items()]
    return min(rows, key=lambda r: r["voi_sum"])


def post_process(affs, config) -> dict:
    seg = config.segmentation
    fragments = fragments_from_affinities(affs, bool(seg.fragments_in_xy), seg.min_seed_distance)
    return agglomerate(affs, fragments, seg.thresholds, seg.merge_function)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality_baselines.json")
    args = parser.parse_args()
    config = load_config("gala")
    volume = config.data.test[0]
    raw_array = open_array(volume, config.data.raw_dataset)
    labels_array = open_array(volume, config.data.labels_dataset)
    raw, gt = raw_array[raw_array.roi], labels_array[labels_array.roi]
    results = {}

    began = time.perf_counter()
    model, meta = load_model(config.prediction.checkpoint)
    mean, std = intensity_stats(raw_array)
    input_shape, output_shape = config.prediction_shapes
    _, affs = predict_array(model, raw / 255.0, input_shape, output_shape, mean, std)
    results["mtlsd (shipped model)"] = {**best_of(gt, post_process(affs, config)), "seconds": time.perf_counter() - began}

    began = time.perf_counter()
    boundary = gaussian(1.0 - raw / 255.0, sigma=1.0)  # membranes are dark
    candidates = {h: watershed(boundary, label(h_minima(boundary, h))) for h in (0.02, 0.05, 0.1, 0.15, 0.2)}
    results["raw watershed (scikit-image)"] = {**best_of(gt, candidates), "seconds": time.perf_counter() - began}

    began = time.perf_counter()
    gt_affs = labels_to_affinities(gt, config.model.affinity_neighborhood)
    results["gt affinities (upper bound)"] = {**best_of(gt, post_process(gt_affs, config)), "seconds": time.perf_counter() - began}

    header = f"{'gala_test':30s} {'best at':>8s} {'VOI split':>9s} {'VOI merge':>9s} {'VOI sum':>8s} {'ARAND':>7s} {'seconds':>8s}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:30s} {r['parameter']:8.3g} {r['voi_split']:9.3f} {r['voi_merge']:9.3f} "
              f"{r['voi_sum']:8.3f} {r['arand']:7.3f} {r['seconds']:8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"volume": str(volume), "model_iteration": meta.get("iteration"),
                                    "merge_function": config.segmentation.merge_function,
                                    "results": results}, indent=2, default=float))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
