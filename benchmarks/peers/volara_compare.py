"""lsdflow against volara (its peer for blockwise post-processing) on the same real
affinities: seconds per stage, the best VOI sum of each over its own merge parameter,
and one `waterz.agglomerate` call as the single-process reference. Prints a table and
writes JSON.

    make peers        # creates benchmarks/peers/.venv-volara (volara 1.0.5) once, then runs this
    python benchmarks/peers/volara_compare.py --dataset medulla --region validation \
        --volara-python benchmarks/peers/.venv-volara/bin/python

The affinities are the dataset's model on one of its regions (one pass, as
`benchmarks/blockwise_agreement.py` predicts them). Both tools get the same block size and
number of workers and an SQLite region graph. volara runs as its tutorial recommends
(`volara_run.py`: mutex-watershed fragments with bias -0.5 and a 2-voxel context, mean
affinity edges, a global graph mutex watershed), once as in the tutorial and once with the
best settings found for it (`VOLARA_SETTINGS`), each with a sweep of the graph
bias (the counterpart of lsdflow's thresholds: merge where mean affinity > -bias). VOI is
computed by lsdflow's evaluation on the labelled voxels, the same for every row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import waterz

from lsdflow.core.blockwise.runner import RunSettings
from lsdflow.core.config import load_config
from lsdflow.core.evaluate.metrics import segmentation_scores
from lsdflow.core.io.volumes import open_array
from lsdflow.core.segment.blockwise import segment_blockwise
from lsdflow.core.segment.watershed import quiet_stdout, scoring_function

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from blockwise_agreement import predicted_region  # noqa: E402  (a sibling benchmark script)

THRESHOLDS = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5]
BIASES = [-0.95, -0.9, -0.8, -0.7, -0.6, -0.5, -0.4, -0.3, -0.2]  # merge where mean affinity > -bias
STAGES = ("fragments", "agglomerate", "find_segments", "relabel")
# the tutorial's settings, and the best of those tried on medulla validation (docs/benchmarks.md):
# seeded like lsdflow's fragments, the noise volara advises for affinities stored as uint8, and
# its smoothing; fragment biases -0.3 / -0.7 / -0.85 were worse
VOLARA_SETTINGS = {
    "tutorial": [],
    "seeded, noise, smoothed": ["--min-seed-distance", "10", "--noise-eps", "0.001", "--sigma-voxels", "1"],
}


def _read(container: Path, dataset: str) -> np.ndarray:
    array = open_array(container, dataset)
    return array[array.roi]


def _scores(labels: np.ndarray, segmentation: np.ndarray) -> dict:
    labelled = labels > 0
    s = segmentation_scores(labels[labelled], segmentation[labelled])
    return {"voi_split": s.voi_split, "voi_merge": s.voi_merge, "voi_sum": s.voi_sum, "arand": s.arand}


def run_lsdflow(dataset: str, container: Path, block_voxels: int, workers: int, labels: np.ndarray) -> dict:
    vs = open_array(container, "volumes/pred_affs").voxel_size
    config = load_config(dataset, [f"blockwise.block_size_nm={[block_voxels * v for v in vs]}"])
    copy = container.parent / "lsdflow.zarr"
    shutil.copytree(container, copy)
    began = time.perf_counter()
    result = segment_blockwise(config, copy, thresholds=THRESHOLDS, settings=RunSettings(workers=workers, progress=False))
    total = time.perf_counter() - began
    stages = {name: result["stages"][name]["seconds"] for name in STAGES}
    merge_function = config.segmentation.merge_function
    rows = [{"parameter": t, **_scores(labels, _read(copy, f"volumes/segmentation/{merge_function}/{t:g}"))}
            for t in THRESHOLDS]
    return {"seconds": stages, "total_seconds": total, "rows": rows, "merge_function": merge_function}


def run_waterz(container: Path, dataset: str, labels: np.ndarray) -> dict:
    """One single-process waterz call on the whole volume (no fragments stage of lsdflow's:
    waterz's own watershed), the reference the issue measures against."""
    affs = _read(container, "volumes/pred_affs").astype(np.float32) / 255
    merge_function = load_config(dataset).segmentation.merge_function
    began = time.perf_counter()
    rows = []
    with quiet_stdout():
        for t, segmentation in zip(THRESHOLDS, waterz.agglomerate(
                affs, THRESHOLDS, scoring_function=scoring_function(merge_function), discretize_queue=256)):
            rows.append({"parameter": t, **_scores(labels, segmentation)})
    return {"total_seconds": time.perf_counter() - began, "rows": rows}


def run_volara(python: str, container: Path, workdir: Path, block_voxels: int, workers: int,
               labels: np.ndarray, name: str, options: list[str]) -> dict:
    array = open_array(container, "volumes/pred_affs")
    inputs = workdir / "volara_input.npz"
    np.savez(inputs, affs=(array[array.roi].astype(np.float32) / 255), voxel_size=np.array(array.voxel_size),
             offset=np.array(array.roi.offset))
    out = workdir / f"volara-{name}"
    out.mkdir()
    command = [python, str(HERE / "volara_run.py"), str(inputs), str(out), "--block-voxels", str(block_voxels),
               "--workers", str(workers), "--biases", *map(str, BIASES), *options]
    began = time.perf_counter()
    finished = subprocess.run(command, cwd=out, capture_output=True, text=True)  # volara logs into its cwd
    total = time.perf_counter() - began
    if finished.returncode != 0:
        raise RuntimeError(f"volara failed:\n{finished.stderr[-3000:]}")
    seconds = json.loads((out / "timings.json").read_text())
    rows = [{"parameter": b, **_scores(labels, np.load(out / f"segmentation_{b:g}.npy"))} for b in BIASES]
    return {"seconds": seconds, "total_seconds": total, "rows": rows, "options": options}


def best(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["voi_sum"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="medulla")
    parser.add_argument("--region", default="validation", choices=["train", "validation", "test"])
    parser.add_argument("--crop", type=int, help="a centred crop of N^3 voxels of the region")
    parser.add_argument("--block-voxels", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--volara-python", default=str(HERE / ".venv-volara" / "bin" / "python"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # absolute, not resolved: volara runs in another working directory, and resolving the
    # venv's interpreter symlink would lose the venv
    args.volara_python = os.path.abspath(args.volara_python)
    if not Path(args.volara_python).exists():
        sys.exit(f"lsdflow: error: {args.volara_python}: no volara environment; `make peers` creates it")
    workdir = Path(tempfile.mkdtemp(prefix="lsdflow-peers-"))
    try:
        container = predicted_region(args.dataset, args.region, workdir, args.crop)
        labels = _read(container, "volumes/labels/neuron_ids")
        results = {
            "lsdflow": run_lsdflow(args.dataset, container, args.block_voxels, args.workers, labels),
            **{f"volara ({name})": run_volara(args.volara_python, container, workdir, args.block_voxels,
                                              args.workers, labels, name, options)
               for name, options in VOLARA_SETTINGS.items()},
            "one waterz call": run_waterz(container, args.dataset, labels),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    voxels = int(labels.size)
    print(f"{args.dataset} {args.region}: {labels.shape} voxels, blocks {args.block_voxels}^3, {args.workers} workers")
    print(f"{'':34s}" + "".join(f"{s:>14s}" for s in STAGES) + f"{'total s':>9s}{'Mvox/s':>8s}"
          f"{'best VOI':>9s}{'at':>7s}{'split':>7s}{'merge':>7s}{'ARAND':>7s}")
    for name, r in results.items():
        b = best(r["rows"])
        stages = "".join(f"{r.get('seconds', {}).get(s, float('nan')):14.2f}" for s in STAGES)
        print(f"{name:34s}{stages}{r['total_seconds']:9.2f}{voxels / r['total_seconds'] / 1e6:8.2f}"
              f"{b['voi_sum']:9.3f}{b['parameter']:7g}{b['voi_split']:7.3f}{b['voi_merge']:7.3f}{b['arand']:7.3f}")
    volara_best = min((r for n, r in results.items() if n.startswith("volara")), key=lambda r: best(r["rows"])["voi_sum"])
    ratios = {"lsdflow_speed_vs_volara": volara_best["total_seconds"] / results["lsdflow"]["total_seconds"],
              "lsdflow_voi_minus_volara": best(results["lsdflow"]["rows"])["voi_sum"] - best(volara_best["rows"])["voi_sum"],
              "lsdflow_speed_vs_waterz": results["one waterz call"]["total_seconds"] / results["lsdflow"]["total_seconds"]}
    print("lsdflow speed / volara's (its best setting): {lsdflow_speed_vs_volara:.2f}; best VOI lsdflow - volara: "
          "{lsdflow_voi_minus_volara:+.3f}; lsdflow speed / one waterz call: {lsdflow_speed_vs_waterz:.2f}".format(**ratios))
    out = args.out or ROOT / "benchmarks" / "results" / f"peers_volara_{args.dataset}_{args.region}.json"
    out.write_text(json.dumps({"dataset": args.dataset, "region": args.region, "crop": args.crop, "voxels": voxels,
                               "block_voxels": args.block_voxels, "workers": args.workers, "volara": "1.0.5",
                               "results": results, "ratios": ratios}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
