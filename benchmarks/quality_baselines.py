"""Segmentation quality on gala: the shipped MTLSD next to two baselines, on the test region.

gala_test is split by the config into a validation half (where the shipped checkpoint,
the segmentation settings and the threshold were chosen) and a test half (reported here).

  mtlsd           shipped model → seeded watershed fragments → waterz (config's merge function),
                  at the threshold chosen on the validation region, and at the best one on test
  raw watershed   scikit-image watershed on a smoothed raw-intensity boundary map, seeds from
                  h-minima, h swept; h chosen on the validation region like the threshold,
                  and the best h on test (generous to the baseline)
  gt affinities   the same post-processing fed with affinities computed from the labels
                  (what post-processing loses when the affinities are right)

The whole of gala_test is reported too, for comparison with earlier numbers (half of it is
the validation region). Prints tables and writes JSON.

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
from lsdflow.core.checkpoints import describe_model, load_model
from lsdflow.core.config import load_config
from lsdflow.core.metrics import segmentation_scores
from lsdflow.core.predict import predict_array
from lsdflow.core.segment import agglomerate, fragments_from_affinities
from lsdflow.core.volumes import intensity_stats, open_array, voxel_slices

ROOT = Path(__file__).resolve().parents[1]


def scores(gt, candidates: dict, region) -> list[dict]:
    return [{"parameter": k, **segmentation_scores(gt[region], seg[region]).as_dict()} for k, seg in candidates.items()]


def best(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["voi_sum"])


def post_process(affs, config) -> dict:
    seg = config.segmentation
    fragments = fragments_from_affinities(affs, config.fragments_in_xy(), seg.min_seed_distance, seg.filter_fragments)
    return agglomerate(affs, fragments, seg.thresholds, seg.merge_function)


def print_table(title: str, results: dict) -> None:
    header = f"{title:48s} {'at':>6s} {'VOI split':>9s} {'VOI merge':>9s} {'VOI sum':>8s} {'ARAND':>7s}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:48s} {r['parameter']:6.3g} {r['voi_split']:9.3f} {r['voi_merge']:9.3f} "
              f"{r['voi_sum']:8.3f} {r['arand']:7.3f}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality_baselines.json")
    parser.add_argument("--model", type=Path, help="a model file other than the shipped one (prediction.checkpoint)")
    args = parser.parse_args()
    config = load_config("gala")
    validation, test = config.data.validation[0], config.data.test[0]
    assert validation.path == test.path, "the benchmark expects both regions in one volume"
    raw_array = open_array(test.path, config.data.raw_dataset)
    labels_array = open_array(test.path, config.data.labels_dataset)
    raw, gt = raw_array[raw_array.roi], labels_array[raw_array.roi]
    regions = {name: voxel_slices(v.roi, raw_array.roi, raw_array.voxel_size) for name, v in
               (("validation", validation), ("test", test))}
    regions["whole"] = tuple(slice(None) for _ in range(3))
    seconds = {}

    began = time.perf_counter()
    model, meta = load_model(args.model or config.prediction.checkpoint)
    print(f"model: {args.model or config.prediction.checkpoint} ({describe_model(meta)})")
    mean, std = intensity_stats(raw_array)
    input_shape, output_shape = config.prediction_shapes
    _, affs = predict_array(model, raw / 255.0, input_shape, output_shape, mean, std,
                            augment=config.prediction.test_time_augmentation)
    mtlsd = post_process(affs, config)
    seconds["mtlsd"] = time.perf_counter() - began

    began = time.perf_counter()
    boundary = gaussian(1.0 - raw / 255.0, sigma=1.0)  # membranes are dark
    watersheds = {h: watershed(boundary, label(h_minima(boundary, h)))
                  for h in (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)}
    seconds["raw watershed"] = time.perf_counter() - began

    began = time.perf_counter()
    upper = post_process(labels_to_affinities(gt, config.model.affinity_neighborhood), config)
    seconds["gt affinities"] = time.perf_counter() - began

    chosen = best(scores(gt, mtlsd, regions["validation"]))["parameter"]
    chosen_h = best(scores(gt, watersheds, regions["validation"]))["parameter"]
    results = {}
    for name in ("test", "whole"):
        rows = scores(gt, mtlsd, regions[name])
        baseline = scores(gt, watersheds, regions[name])
        results[name] = {
            "mtlsd (shipped), threshold from validation": next(r for r in rows if r["parameter"] == chosen),
            "mtlsd (shipped), best threshold here": best(rows),
            "raw watershed (scikit-image), h from validation": next(r for r in baseline if r["parameter"] == chosen_h),
            "raw watershed (scikit-image), best h here": best(baseline),
            "gt affinities (upper bound), best here": best(scores(gt, upper, regions[name])),
        }
    print_table(f"gala_test, test region {tuple(test.roi.offset)}+{tuple(test.roi.shape)} nm", results["test"])
    print_table("gala_test, whole volume (half is validation)", results["whole"])
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "volume": str(test.path), "validation_region": str(validation), "test_region": str(test),
        "model_iteration": meta.get("iteration"), "model": describe_model(meta),
        "test_time_augmentation": config.prediction.test_time_augmentation, "merge_function": config.segmentation.merge_function,
        "min_seed_distance": config.segmentation.min_seed_distance, "threshold_from_validation": chosen,
        "h_from_validation": chosen_h,
        "results": results, "seconds": seconds,
    }, indent=2, default=float))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
