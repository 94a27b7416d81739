"""Segmentation quality on held-out regions: models next to baselines, thresholds chosen
with and without ground truth. One dataset per config (default: gala and medulla).

Each config splits its labelled volume into a validation region (where every choice is
made) and a test region (reported). For each dataset:

  models          each model (default: the shipped gala champion; `--model NAME=FILE`
                  adds others) through the platform's validation path, the code that
                  `select-checkpoint` and `evaluate-model` choose by: the whole volume
                  predicted and segmented by the deployed stages (core/evaluate/validation.py;
                  uint8 predictions, the config's fragments and merge function); VOI/ARAND at the threshold chosen on validation, at the
                  threshold carried over from gala's validation region (medulla), at the
                  threshold each label-free criterion chooses on the test region itself
                  (core/segment/threshold_selection.py; its regret = VOI sum there minus the best),
                  and at the best threshold on test (an oracle)
  raw watershed   scikit-image watershed on a smoothed raw-intensity boundary map, seeds
                  from h-minima; h chosen on validation, and the best h on test
  gt affinities   the same post-processing fed with affinities computed from the labels
                  (what post-processing loses when the affinities are right)

Before 2026-12-07 models were predicted over the bounding box of both regions plus the
network's context and segmented there in float32: up to 0.08 VOI away from the platform's
scores on medulla validation (docs/training.md), so tables made before then are not
comparable with later ones to that precision. The label-free quality estimate (affinity uncertainty, criterion value) is printed for each
region so that it can be compared with the true VOI. Prints tables and writes JSON.

    python benchmarks/quality_baselines.py [--config gala --config medulla]
        [--model NAME=FILE ...] [--out FILE] [--cache DIR] [--set SECTION.FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from funlib.geometry import Roi
from skimage.filters import gaussian
from skimage.measure import label
from skimage.morphology import h_minima
from skimage.segmentation import watershed

from lsdflow.core.config import VolumeRef, load_config
from lsdflow.core.evaluate.metrics import segmentation_scores
from lsdflow.core.evaluate.validation import copy_labelled_volume
from lsdflow.core.io.layout import PRED_AFFS, PRED_LSDS, segmentation_dataset
from lsdflow.core.io.volumes import dataset_exists, open_array, voxel_slices
from lsdflow.core.model.checkpoints import describe_model, load_model
from lsdflow.core.predict.blockwise import predict_volume
from lsdflow.core.segment.blockwise import segment_volume
from lsdflow.core.segment.threshold_selection import (
    affinity_uncertainty,
    choose,
    criteria,
    score_thresholds,
)
from lsdflow.core.segment.watershed import agglomerate, fragments_from_affinities
from lsdflow.core.train.affinities import labels_to_affinities

ROOT = Path(__file__).resolve().parents[1]
H_VALUES = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)


def scores(gt, candidates: dict, region) -> list[dict]:
    return [{"parameter": k, **segmentation_scores(gt[region], seg[region]).as_dict()} for k, seg in candidates.items()]


def best(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["voi_sum"])


def at(rows: list[dict], parameter) -> dict:
    return next(r for r in rows if r["parameter"] == parameter)


def post_process(affs, config) -> dict:
    seg = config.segmentation
    fragments = fragments_from_affinities(affs, config.fragments_in_xy(), seg.min_seed_distance, seg.filter_fragments)
    return agglomerate(affs, fragments, seg.thresholds, seg.merge_function)


def print_table(title: str, results: dict) -> None:
    header = f"{title:62s} {'at':>6s} {'VOI split':>9s} {'VOI merge':>9s} {'VOI sum':>8s} {'ARAND':>7s}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:62s} {r['parameter']:6.3g} {r['voi_split']:9.3f} {r['voi_merge']:9.3f} "
              f"{r['voi_sum']:8.3f} {r['arand']:7.3f}")
    print()


def _touching(labels):
    """Voxels of an object next to a voxel of another object (background excluded)."""
    touching = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        differ = (labels[a] != labels[b]) & (labels[a] != 0) & (labels[b] != 0)
        touching[a] |= differ
        touching[b] |= differ
    return touching


def _box(config, regions) -> Roi:
    """Both regions and the network's context on each side, inside the volume."""
    raw = open_array(regions[0].path, config.data.raw_dataset)
    box = regions[0].roi
    for region in regions[1:]:
        box = box.union(region.roi)
    context = config.derived()["context_nm"]
    return box.grow(context, context).intersect(raw.roi)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def platform_outputs(config, model_file: Path, volume: Path, box: Roi, work: Path):
    """(affinities, LSDs or None, {threshold: segmentation}) within `box`, made by the
    platform's validation path in a working copy of `volume` at `work`: the deployed
    predict and segmentation stages over the whole volume (their keys make a rerun with
    the same model and settings reuse what is there)."""
    if not dataset_exists(work, config.data.raw_dataset):
        copy_labelled_volume(config, VolumeRef(path=volume), work)
    predict_volume(config, work, model_file=model_file, progress=False)
    segment_volume(config, work, thresholds=config.segmentation.thresholds)

    def cropped(dataset: str) -> np.ndarray:
        return open_array(work, dataset)[box]

    def prediction(dataset: str) -> np.ndarray:  # uint8 predictions record their scale (255)
        scale = zarr.open(str(work / dataset), mode="r").attrs.get("value_scale", 1)
        return cropped(dataset).astype(np.float32) / float(scale)

    affs = prediction(PRED_AFFS)
    lsds = prediction(PRED_LSDS) if dataset_exists(work, PRED_LSDS) else None
    seg = config.segmentation
    segmentations = {t: cropped(segmentation_dataset(seg.merge_function, t)) for t in seg.thresholds}
    return affs, lsds, segmentations


def training_time(path: Path) -> dict | None:
    """For a training checkpoint (`<workspace>/checkpoints/model_checkpoint_N`): iterations
    trained since the run's first checkpoint (its start: `--init-from` or 0), and the wall
    time estimated from the run's training_log.csv (one iteration timed every log_every;
    mean and median seconds per iteration). None for other model files."""
    import csv
    import re

    match = re.fullmatch(r"model_checkpoint_(\d+)", Path(path).name)
    log = Path(path).parent.parent / "training_log.csv"
    if not match or not log.is_file():
        return None
    upto = int(match.group(1))
    with open(log) as f:
        rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= upto]
    if not rows:
        return None
    first = min(int(m.group(1)) for p in Path(path).parent.glob("model_checkpoint_*")
                if (m := re.fullmatch(r"model_checkpoint_(\d+)", p.name)))
    seconds = np.array([float(r["seconds_per_iteration"]) for r in rows])
    iterations = upto - first
    return {"iterations": iterations, "from": first, "seconds_per_iteration_mean": float(seconds.mean()),
            "seconds_per_iteration_median": float(np.median(seconds)),
            "wall_hours": float(seconds.mean() * iterations / 3600)}


def dataset_results(config_name: str, models: dict[str, Path], cache: Path | None = None,
                    carried: dict[str, float] | None = None, overrides: list[str] | None = None) -> dict:
    """`carried`: per model, a threshold chosen on another dataset's validation region
    (what a new acquisition without labels gets when thresholds are carried over);
    `overrides`: `section.field=value` settings for the config (e.g. the normalization)."""
    config = load_config(config_name, overrides)
    validation, test = config.data.validation[0], config.data.test[0]
    assert validation.path == test.path, "the benchmark expects both regions in one volume"
    box = _box(config, [validation, test])
    raw_array = open_array(test.path, config.data.raw_dataset)
    labels_array = open_array(test.path, config.data.labels_dataset)
    raw, gt = raw_array[box], labels_array[box]
    regions = {name: voxel_slices(v.roi, box, raw_array.voxel_size) for name, v in
               (("validation", validation), ("test", test))}
    available = criteria(config.model.affinity_neighborhood, config.training.lsd_sigma_nm, config.data.voxel_size,
                         config.training.lsd_downsample)
    seconds, results, label_free = {}, {"validation": {}, "test": {}}, {}
    choices = {}

    for name, path in models.items():
        began = time.perf_counter()
        _, meta = load_model(path)
        print(f"{config_name}: {name}: {path} ({describe_model(meta)})", flush=True)
        with tempfile.TemporaryDirectory(prefix="lsdflow-quality-") as scratch:
            work = (cache or Path(scratch)) / f"{config_name}-{_slug(name)}.zarr"
            affs, lsds, segmentations = platform_outputs(config, path, Path(test.path), box, work)
        seconds[name] = time.perf_counter() - began
        on_validation = best(scores(gt, segmentations, regions["validation"]))
        # what models are chosen by (the champion: the best on validation)
        results["validation"][f"{name}, best threshold"] = on_validation
        chosen = on_validation["parameter"]
        rows = scores(gt, segmentations, regions["test"])
        results["test"][f"{name}, threshold from validation"] = at(rows, chosen)
        if carried and name in carried:
            results["test"][f"{name}, threshold carried over from gala validation"] = at(rows, carried[name])
        choices[name] = {"validation": chosen}
        for region_name, region in regions.items():
            region_rows = scores(gt, segmentations, region)
            began = time.perf_counter()
            criterion_rows = score_thresholds({t: s[region] for t, s in segmentations.items()},
                                              {"affs": affs[(slice(None), *region)],
                                               "lsds": None if lsds is None else lsds[(slice(None), *region)]},
                                              available)
            seconds[f"{name} criteria ({region_name})"] = time.perf_counter() - began
            oracle = best(region_rows)
            label_free[f"{name} / {region_name}"] = {
                "affinity_uncertainty": affinity_uncertainty(affs[(slice(None), *region)]),
                "best_voi_sum": oracle["voi_sum"], "rows": criterion_rows,
                **{c: {"threshold": choose(criterion_rows, c),
                       "value": min(r[c] for r in criterion_rows),
                       "regret": at(region_rows, choose(criterion_rows, c))["voi_sum"] - oracle["voi_sum"]}
                   for c in available if c in criterion_rows[0]},
            }
            if region_name == "test":
                for c in available:
                    if c in criterion_rows[0]:
                        results["test"][f"{name}, threshold by {c}"] = at(rows, choose(criterion_rows, c))
                        choices[name][c] = choose(criterion_rows, c)
        results["test"][f"{name}, best threshold here (oracle)"] = best(rows)

    began = time.perf_counter()
    boundary = gaussian(1.0 - raw / 255.0, sigma=1.0)  # membranes are dark
    watersheds = {h: watershed(boundary, label(h_minima(boundary, h))) for h in H_VALUES}
    seconds["raw watershed"] = time.perf_counter() - began
    on_validation = best(scores(gt, watersheds, regions["validation"]))
    results["validation"]["raw watershed (scikit-image), best h"] = on_validation
    chosen_h = on_validation["parameter"]
    baseline = scores(gt, watersheds, regions["test"])
    results["test"]["raw watershed (scikit-image), h from validation"] = at(baseline, chosen_h)
    results["test"]["raw watershed (scikit-image), best h here"] = best(baseline)

    began = time.perf_counter()
    # where two labels touch without a gap (medulla; gala's labels have one), a boundary two
    # voxels thick, as membranes are: affinities would otherwise say "boundary" in one
    # channel only, and the watershed fragments would leak across
    thick = np.where(_touching(gt), 0, gt)
    upper = post_process(labels_to_affinities(thick, config.model.affinity_neighborhood), config)
    seconds["gt affinities"] = time.perf_counter() - began
    results["test"]["gt affinities (upper bound), best here"] = best(scores(gt, upper, regions["test"]))

    print_table(f"{config_name}: validation region {tuple(validation.roi.offset)}+{tuple(validation.roi.shape)} nm",
                results["validation"])
    print_table(f"{config_name}: test region {tuple(test.roi.offset)}+{tuple(test.roi.shape)} nm", results["test"])
    print(f"{'label-free criteria':34s} {'region':>10s} {'unc.':>6s} " + " ".join(
        f"{c[:22]:>22s} {'regret':>6s}" for c in available))
    for key, row in label_free.items():
        model_name, region_name = key.split(" / ")
        print(f"{model_name[:34]:34s} {region_name:>10s} {row['affinity_uncertainty']:6.3f} " + " ".join(
            f"{row[c]['value']:12.4f} at {row[c]['threshold']:5.2f} {row[c]['regret']:6.3f}" if c in row else " " * 29
            for c in available))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()) + "\n", flush=True)
    return {"volume": str(test.path), "validation_region": str(validation), "test_region": str(test),
            "scored_box_nm": str(box), "scored_by": "platform validation path (whole volume, deployed stages)", "models": {n: str(p) for n, p in models.items()},
            "test_time_augmentation": config.prediction.test_time_augmentation,
            "merge_function": config.segmentation.merge_function, "thresholds": config.segmentation.thresholds,
            "choices": choices, "h_from_validation": chosen_h, "results": results, "label_free": label_free,
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="dataset config (repeatable; default gala and medulla)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=FILE",
                        help="a model file to score (repeatable; default: the shipped gala champion)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality_baselines.json")
    parser.add_argument("--cache", type=Path, help="keep the working copies (predictions, segmentations) here; a rerun with the same "
                        "model and settings reuses them")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a setting of every config, e.g. prediction.normalization=\"match_training\"")
    args = parser.parse_args()
    models = dict(m.split("=", 1) for m in args.model) or {
        "gala champion": str(load_config("gala").prediction.checkpoint)}
    report = {"training": {name: training_time(Path(path)) for name, path in models.items()}}
    for name, t in report["training"].items():
        if t:
            print(f"training {name}: {t['iterations']} iterations from {t['from']}, {t['wall_hours']:.2f} h on this "
                  f"machine ({t['seconds_per_iteration_mean']:.2f} s/it mean, "
                  f"{t['seconds_per_iteration_median']:.2f} median: the machine was shared)")
    for name in args.config or ["gala", "medulla"]:
        carried = {m: c["validation"] for m, c in report["gala"]["choices"].items()} if "gala" in report else None
        report[name] = dataset_results(name, {k: Path(v) for k, v in models.items()}, args.cache, carried, args.set)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
