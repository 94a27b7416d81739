"""Flat memory and linear time: every blockwise stage on 1x, 8x and 27x a base volume.

The volume is gala_test's raw data mirrored out to an edge of 1, 2 and 3 times `--base`
voxels; each size goes through predict (the shipped model, blockwise) → fragments →
agglomerate → find segments → relabel → OME-Zarr export with the same workers. For each stage: seconds,
Mvox/s, and the peak memory of the whole process tree (this process and its daisy
workers, resident set sampled every 50 ms with psutil). Flat memory: a stage's peak does
not grow with the volume; linear time: 8x the volume takes at most 9x the time.

The segmentation blocks are the default geometry scaled down (a third of the base edge,
fragments context a quarter of the block, as 32 of 128 by default) so that even the base
volume has interior blocks: a stage's peak is set by its largest block, one with context
on every side, and a volume of face blocks only would look flatter than it is.

    python benchmarks/scaling.py [--base 96] [--factors 1 2 3] [--workers 2] [--block N]
        [--set SECTION.FIELD=VALUE ...] [--out FILE]

Test-time augmentation is off by default here (`--set prediction.test_time_augmentation=true`
to include it): it multiplies predict's time by 8 at every size and changes nothing else.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
from funlib.geometry import Roi

from lsdflow.core.blockwise.runner import RunSettings
from lsdflow.core.blockwise.worker_pool import close_worker_pool
from lsdflow.core.config import load_config
from lsdflow.core.io.ome_zarr_export import export_ome_zarr
from lsdflow.core.io.volumes import open_array, write_array
from lsdflow.core.predict.blockwise import predict_blockwise
from lsdflow.core.segment.blockwise import BlockwiseSegmentation

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("predict", "fragments", "agglomerate", "find_segments", "relabel", "export")


class PeakMemory:
    """Peak resident memory (bytes) of this process and all its descendants while running."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak = 0
        self.main_peak = 0  # this process alone (the scheduler; the agglomerate stage's merge)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _tree_rss(self) -> int:
        me = psutil.Process()
        main = me.memory_info().rss
        self.main_peak = max(self.main_peak, main)
        total = main
        for process in me.children(recursive=True):
            try:
                total += process.memory_info().rss
            except psutil.Error:  # a worker that just ended
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self.peak = self._tree_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._tree_rss())


@contextmanager
def measured(row: dict, stage: str):
    began = time.perf_counter()
    with PeakMemory() as memory:
        yield
    row[stage] = {"seconds": time.perf_counter() - began, "peak_gb": memory.peak / 1e9,
                  "main_process_peak_gb": memory.main_peak / 1e9}


def mirrored_raw(edge: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """gala_test's raw data mirrored out to edge^3 voxels (real texture at any size)."""
    config = load_config("gala")
    raw = open_array(config.data.test[0].path, config.data.raw_dataset)
    data = raw[raw.roi]
    reps = [-(-edge // s) for s in data.shape]
    tiles = data
    for axis, n in enumerate(reps):
        tiles = np.concatenate([np.flip(tiles, axis) if k % 2 else tiles for k in range(n)], axis=axis)
    return np.ascontiguousarray(tiles[:edge, :edge, :edge]), tuple(raw.voxel_size)


def run_size(edge: int, config, settings: RunSettings, workdir: Path) -> dict:
    data, vs = mirrored_raw(edge)
    container = workdir / f"v{edge}.zarr"
    write_array(container, config.data.raw_dataset, Roi((0, 0, 0), tuple(e * v for e, v in zip(data.shape, vs))), vs,
                data)
    del data
    thresholds = list(config.segmentation.thresholds)
    row: dict = {"edge": edge, "voxels": edge**3}
    with measured(row, "predict"):
        predict_blockwise(config, container, settings=settings)
    job = BlockwiseSegmentation(config, container, settings=settings)
    with measured(row, "fragments"):
        row["blocks"] = job.fragments()["blocks"]
    with measured(row, "agglomerate"):
        row["edges"] = job.agglomerate()["edges"]  # its merge holds the whole region graph in one process
    with measured(row, "find_segments"):
        job.find_segments(thresholds)
    with measured(row, "relabel"):
        job.relabel(thresholds)
    exported = workdir / f"v{edge}.ome.zarr"
    with measured(row, "export"):  # lsdflow export: pyramids of raw, predictions, fragments, segmentations
        export_ome_zarr(container, exported, fragments=True, predictions=True, settings=settings)
    shutil.rmtree(exported, ignore_errors=True)
    shutil.rmtree(container, ignore_errors=True)
    close_worker_pool()  # each size as its own lsdflow run: no pooled process carried over
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=96, help="edge of the 1x volume (voxels)")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2, 3], help="edge multiples: 1, 8, 27x the voxels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block", type=int, help="segmentation block edge in voxels (default: a third of --base, "
                        "so that the base volume has interior blocks; fragments context a quarter of it)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.json")
    args = parser.parse_args()
    block = args.block or max(8, args.base // 3)
    # a stage's peak is set by its largest block: one with context on every side; a volume of
    # face blocks only (the default 128^3 blocks on a small base) reads less and looks flatter
    # the default geometry scaled down (128^3 blocks, 32 voxels of fragments context): same ratio
    vs = load_config("gala").data.voxel_size
    block_nm, context_nm = [block * v for v in vs], [max(1, block // 4) * v for v in vs]
    config = load_config("gala", ["prediction.test_time_augmentation=false", f"blockwise.block_size_nm={block_nm}",
                                  f"blockwise.fragments_context_nm={context_nm}", *args.set])
    settings = RunSettings(workers=args.workers, progress=False)
    workdir = Path(tempfile.mkdtemp(prefix="lsdflow-scaling-"))
    try:
        rows = [run_size(args.base * f, config, settings, workdir) for f in args.factors]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = rows[0]
    result = {"base_edge": args.base, "segmentation_block": block, "factors": args.factors, "workers": args.workers,
              "test_time_augmentation": config.prediction.test_time_augmentation, "sizes": rows, "stages": {}}
    sizes = [f"{r['voxels'] / 1e6:.1f} Mvox" for r in rows]
    print(f"{'stage':14s} " + " ".join(f"{size:>22s}" for size in sizes)
          + f" {'time/base time per voxel':>26s} {'peak / base peak':>18s}")
    for stage in STAGES:
        per_voxel = [r[stage]["seconds"] / r["voxels"] / (base[stage]["seconds"] / base["voxels"]) for r in rows]
        peaks = [r[stage]["peak_gb"] / base[stage]["peak_gb"] for r in rows]
        result["stages"][stage] = {"time_per_voxel_vs_base": per_voxel, "peak_vs_base": peaks}
        cells = " ".join(f"{r[stage]['seconds']:9.1f} s {r[stage]['peak_gb']:6.2f} GB  " for r in rows)
        print(f"{stage:14s} {cells} {' '.join(f'{x:5.2f}' for x in per_voxel):>26s} "
              f"{' '.join(f'{x:5.2f}' for x in peaks):>18s}")
    total = [sum(r[s]["seconds"] for s in STAGES) for r in rows]
    result["total_seconds"] = total
    result["total_time_per_voxel_vs_base"] = [t / r["voxels"] / (total[0] / base["voxels"]) for t, r in zip(total, rows)]
    result["max_peak_vs_base"] = max(max(v["peak_vs_base"]) for v in result["stages"].values())
    print(f"all stages: {' '.join(f'{t:.1f} s' for t in total)}; time per voxel vs base "
          f"{' '.join(f'{x:.2f}' for x in result['total_time_per_voxel_vs_base'])} (target: 8x volume <= 9x time, "
          f"i.e. <= 1.125); largest peak vs base {result['max_peak_vs_base']:.2f} (target: flat)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
