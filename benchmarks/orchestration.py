"""Orchestration overhead: one acquisition processed by the `process-acquisition` flow vs
by the same core calls without Prefect, and a fully cached rerun of the flow. Prints a
table and writes JSON.

The acquisition is gala_test mirrored to 128^3 voxels (real EM, with labels). The flow runs
against a temporary local Prefect API started before timing (as a deployed platform would
have one running).

    python benchmarks/orchestration.py [--size 128] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["blockwise.workers=2"]
THRESHOLDS = [0.1, 0.15, 0.2]


def make_volume(path: Path, size: int) -> None:
    from lsdflow.core.io.volumes import open_array, write_array
    from funlib.geometry import Roi

    source = ROOT / "data" / "gala" / "gala_test.zarr"
    raw = open_array(source, "volumes/raw")
    labels = open_array(source, "volumes/labels/neuron_ids")
    r, l = raw[raw.roi], labels[labels.roi]
    pad = [(0, max(0, size - s)) for s in r.shape]
    r = np.pad(r, pad, mode="reflect")[:size, :size, :size]
    l = np.pad(l, pad, mode="reflect")[:size, :size, :size]
    roi = Roi((0, 0, 0), tuple(s * 10 for s in r.shape))
    write_array(path, "volumes/raw", roi, raw.voxel_size, r)
    write_array(path, "volumes/labels/neuron_ids", roi, raw.voxel_size, l)


def direct(volume: Path, workspace: Path) -> float:
    from lsdflow.core.predict.blockwise import predict_blockwise
    from lsdflow.core.segment.blockwise import segment_blockwise
    from lsdflow.core.config import load_config
    from lsdflow.core.evaluate.scores import evaluate_volume

    began = time.perf_counter()
    config = load_config("gala", OVERRIDES, workspace)
    predict_blockwise(config, volume)
    segment_blockwise(config, volume, thresholds=THRESHOLDS)
    evaluate_volume(volume, labels_dataset=config.data.labels_dataset)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "orchestration.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lsdflow-orchestration-"))
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(work / "prefect" / "storage")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    try:
        make_volume(work / "direct.zarr", args.size)
        shutil.copytree(work / "direct.zarr", work / "flow.zarr")
        t_direct = direct(work / "direct.zarr", work / "ws-direct")

        from prefect.testing.utilities import prefect_test_harness

        from lsdflow.flows.process_acquisition import process_acquisition

        with prefect_test_harness(server_startup_timeout=120):
            kwargs = dict(path=str(work / "flow.zarr"), config_name="gala", overrides=OVERRIDES,
                          workspace=str(work / "ws-flow"), thresholds=THRESHOLDS,
                          data_roots=[str(work)])
            began = time.perf_counter()
            process_acquisition(**kwargs)
            t_flow = time.perf_counter() - began
            began = time.perf_counter()
            process_acquisition(**kwargs)
            t_cached = time.perf_counter() - began
        rows = {
            "voxels": args.size**3, "direct_seconds": t_direct, "flow_seconds": t_flow, "cached_rerun_seconds": t_cached,
            "overhead_ratio": t_flow / t_direct, "cached_fraction": t_cached / t_flow,
        }
        print(f"{'':34s} {'seconds':>8s}")
        print(f"{'core calls, no Prefect':34s} {t_direct:8.1f}")
        print(f"{'process-acquisition flow':34s} {t_flow:8.1f}   ratio {rows['overhead_ratio']:.2f} (goal <= 1.10)")
        print(f"{'flow again, everything cached':34s} {t_cached:8.1f}   {100 * rows['cached_fraction']:.1f}% of the first run (goal <= 5%)")
        print(f"({args.size}^3 voxels of gala_test mirrored; predict + fragments + agglomerate + find segments + relabel + evaluate)")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
