"""Blockwise post-processing: Mvox/s per stage with 1 and 2 workers vs one in-memory
waterz.agglomerate call on the same affinities; graph-store write/read rates; find-segments
on 10 million edges. Prints tables and writes JSON.

The volume is synthetic (neuron-like labels, blurred noisy affinities, 10 nm voxels) so
any size can be measured: 256^3 by default.

    python benchmarks/blockwise.py [--size 256] [--edges 10000000] [--mongodb-url URL] [--out FILE]
        [--affinities CONTAINER.zarr --config NAME]   # real predictions instead of the synthetic volume

Without --mongodb-url, nx-27017 (a MongoDB wire-protocol server) is started on a free
loopback port; its rates are those of that stand-in, not of a real mongod.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import waterz
from funlib.geometry import Roi

from lsdflow.core.blockwise.runner import RunSettings
from lsdflow.core.config import load_config
from lsdflow.core.io.graphstore import Edges, open_graph_store
from lsdflow.core.io.layout import PRED_AFFS
from lsdflow.core.io.volumes import open_array, write_array
from lsdflow.core.segment.blockwise import BlockwiseSegmentation, segment_blockwise
from lsdflow.core.segment.find_segments import segment_luts
from lsdflow.core.segment.watershed import as_float_affinities, quiet_stdout, scoring_function
from lsdflow.core.train.synthetic import synthetic_affinities, synthetic_labels

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]
EXTRA_THRESHOLD = 0.35  # relabelled on its own after the 8


def start_nx27017() -> tuple[str, subprocess.Popen]:
    import pymongo

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    executable = shutil.which("nx-27017") or str(Path(sys.executable).parent / "nx-27017")
    workdir = tempfile.mkdtemp()
    process = subprocess.Popen(
        [executable, "--db", "memory", "-p", str(port), "--log-file", f"{workdir}/log", "--pid-file", f"{workdir}/pid"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"mongodb://127.0.0.1:{port}/benchmark"
    for _ in range(300):
        try:
            pymongo.MongoClient(url, serverSelectionTimeoutMS=200).admin.command("ping")
            return url, process
        except pymongo.errors.PyMongoError:
            time.sleep(0.1)
    raise RuntimeError("nx-27017 did not start")


def postprocessing(size: int, workdir: Path, affinities: Path | None = None, config_name: str = "gala") -> dict:
    """Blockwise post-processing against one waterz call, on a synthetic volume of `size`³
    or on the predicted affinities (volumes/pred_affs) of the container `affinities`."""
    if affinities is None:
        shape = (size, size, size)
        labels = synthetic_labels(shape, max(50, size**3 // 60**3), seed=0)
        affs = synthetic_affinities(labels, noise=0.1, blur=1.0)
        roi, voxel_size = Roi((0, 0, 0), tuple(10 * s for s in shape)), (10, 10, 10)
        stored = (affs * 255).round().astype(np.uint8)
    else:
        array = open_array(affinities, PRED_AFFS)
        roi, voxel_size = array.roi, tuple(array.voxel_size)
        stored = array[roi][:3]
        affs = as_float_affinities(stored)  # what the stages see
        shape = affs.shape[1:]
    voxels = int(np.prod(shape))

    began = time.perf_counter()
    with quiet_stdout():
        for _ in waterz.agglomerate(affs, THRESHOLDS, scoring_function=scoring_function("hist_quant_50"),
                                    discretize_queue=256):
            pass
    t_waterz = time.perf_counter() - began

    source = workdir / "affs.zarr"
    write_array(source, PRED_AFFS, roi, voxel_size, stored)
    rows = {"voxels": voxels, "shape": list(shape), "source": str(affinities or "synthetic"), "config": config_name,
            "waterz_seconds": t_waterz, "waterz_mvox_s": voxels / t_waterz / 1e6, "workers": {}}
    for workers in (1, 2):
        container = workdir / f"w{workers}.zarr"
        shutil.copytree(source, container)
        config = load_config(config_name)
        began = time.perf_counter()
        result = segment_blockwise(config, container, thresholds=THRESHOLDS,
                                   settings=RunSettings(workers=workers, progress=False))
        total = time.perf_counter() - began
        stages = result["stages"]
        rows["workers"][workers] = {
            "blocks": stages["fragments"]["blocks"],
            "total_seconds": total,
            "total_mvox_s": voxels / total / 1e6,
            "ratio_to_waterz": t_waterz / total,
            **{f"{name}_mvox_s": voxels / stages[name]["seconds"] / 1e6 for name in ("fragments", "agglomerate", "relabel")},
            "find_segments_seconds": stages["find_segments"]["seconds"],
            "edges": stages["find_segments"]["edges"],
            "relabel_seconds": stages["relabel"]["seconds"],
        }
    # a threshold chosen later: relabelling one costs what one threshold costs
    job = BlockwiseSegmentation(load_config(config_name), workdir / "w2.zarr", settings=RunSettings(workers=2, progress=False))
    job.find_segments([EXTRA_THRESHOLD])
    began = time.perf_counter()
    job.relabel([EXTRA_THRESHOLD])
    rows["relabel_one_threshold_seconds"] = time.perf_counter() - began
    rows["relabel_one_to_eight_thresholds"] = rows["relabel_one_threshold_seconds"] / rows["workers"][2]["relabel_seconds"]
    return rows


def store_rates(url: str, n_edges: int, block_edges: int = 10_000) -> dict:
    rng = np.random.default_rng(0)
    store = open_graph_store(url, f"bench{rng.integers(1 << 30)}")
    blocks = n_edges // block_edges
    began = time.perf_counter()
    for b in range(blocks):
        u = rng.integers(1, 1 << 40, block_edges).astype(np.uint64)
        store.write_edges("hist_quant_50", b, Edges(u, u + 1, rng.uniform(0, 1, block_edges)))
    write = time.perf_counter() - began
    began = time.perf_counter()
    edges = store.read_edges("hist_quant_50")
    read = time.perf_counter() - began
    assert len(edges) == blocks * block_edges
    store.clear_edges("hist_quant_50")
    store.close()
    return {"edges": blocks * block_edges, "write_edges_s": blocks * block_edges / write,
            "read_edges_s": blocks * block_edges / read}


def find_segments_10m(n_edges: int, workdir: Path) -> dict:
    """find-segments as lsdflow runs it: read every edge from the SQLite store, then
    connected components for 8 thresholds."""
    rng = np.random.default_rng(1)
    n_nodes = n_edges // 3
    ids = np.sort(rng.choice(1 << 40, n_nodes, replace=False).astype(np.uint64) + 1)
    store = open_graph_store(f"sqlite:///{workdir / 'find.db'}", "find")
    per_block = 50_000
    for b in range(n_edges // per_block):
        u = ids[rng.integers(0, n_nodes, per_block)]
        v = ids[rng.integers(0, n_nodes, per_block)]
        scores = rng.uniform(0, 1, per_block)
        scores[::10] = np.nan
        store.write_edges("hist_quant_50", b, Edges(np.minimum(u, v), np.maximum(u, v), scores))
    began = time.perf_counter()
    edges = store.read_edges("hist_quant_50")
    read = time.perf_counter() - began
    luts = segment_luts(ids, edges.u, edges.v, edges.merge_score, THRESHOLDS)
    total = time.perf_counter() - began
    store.close()
    return {"edges": len(edges), "nodes": n_nodes, "thresholds": len(THRESHOLDS), "read_seconds": read,
            "total_seconds": total, "segments_at_0.05": int(luts[0.05].max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge length of the synthetic volume (voxels)")
    parser.add_argument("--edges", type=int, default=10_000_000, help="edges for the find-segments run")
    parser.add_argument("--store-edges", type=int, default=1_000_000, help="edges for the SQLite rate")
    parser.add_argument("--mongo-edges", type=int, default=100_000, help="edges for the MongoDB rate")
    parser.add_argument("--mongodb-url", help="a MongoDB server (default: nx-27017 on a free port)")
    parser.add_argument("--affinities", type=Path,
                        help="a Zarr container whose volumes/pred_affs (real predictions) replace the synthetic volume")
    parser.add_argument("--config", default="gala", help="the config whose segmentation settings and blocks are used")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "blockwise.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lsdflow-bench-"))
    try:
        post = postprocessing(args.size, workdir, args.affinities, args.config)
        what = f"{args.size}^3 synthetic" if args.affinities is None else f"{tuple(post['shape'])} of {args.affinities}"
        print(f"post-processing of {post['voxels'] / 1e6:.1f} Mvox ({what}, 8 thresholds, hist_quant_50)")
        print(f"{'':28s} {'fragments':>10s} {'agglom.':>8s} {'relabel':>8s} {'total':>8s} {'vs waterz':>10s}   (Mvox/s)")
        for workers, row in post["workers"].items():
            print(f"{f'blockwise, {workers} worker(s)':28s} {row['fragments_mvox_s']:10.2f} {row['agglomerate_mvox_s']:8.2f} "
                  f"{row['relabel_mvox_s']:8.2f} {row['total_mvox_s']:8.2f} {row['ratio_to_waterz']:10.2f}")
        print(f"{'one waterz.agglomerate call':28s} {'':10s} {'':8s} {'':8s} {post['waterz_mvox_s']:8.2f} {1.0:10.2f}")
        print(f"relabel, 2 workers: 8 thresholds {post['workers'][2]['relabel_seconds']:.2f} s, one more threshold "
              f"{post['relabel_one_threshold_seconds']:.2f} s (ratio {post['relabel_one_to_eight_thresholds']:.2f})")

        mongo_process = None
        url = args.mongodb_url
        if url is None:
            url, mongo_process = start_nx27017()
        try:
            stores = {
                "sqlite": store_rates(f"sqlite:///{workdir / 'rates.db'}", args.store_edges),
                "mongodb" + ("" if args.mongodb_url else " (nx-27017)"): store_rates(url, args.mongo_edges),
            }
        finally:
            if mongo_process is not None:
                mongo_process.terminate()
        print(f"\n{'graph store':22s} {'edges':>10s} {'write edges/s':>14s} {'read edges/s':>14s}")
        for name, row in stores.items():
            print(f"{name:22s} {row['edges']:10d} {row['write_edges_s']:14,.0f} {row['read_edges_s']:14,.0f}")

        find = find_segments_10m(args.edges, workdir)
        print(f"\nfind-segments: {find['edges']:,} edges, {find['nodes']:,} nodes, {find['thresholds']} thresholds: "
              f"{find['total_seconds']:.1f} s (of which reading the SQLite store {find['read_seconds']:.1f} s)")
        results = {"postprocessing": post, "graph_stores": stores, "find_segments": find}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
