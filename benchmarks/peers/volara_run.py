"""Runs volara's blockwise post-processing on one affinity volume; the peer side of
`benchmarks/peers/volara_compare.py`, which starts it with the interpreter of volara's own
virtual environment (volara 1.0.5 needs daisy 1.x; lsdflow runs on daisy 2).

    python volara_run.py INPUT.npz OUTDIR --block-voxels 64 --workers 2 --biases -0.9 -0.5

INPUT.npz holds `affs` (float32 in [0, 1], channels z, y, x for the offsets (1,0,0),
(0,1,0), (0,0,1)), `voxel_size` and `offset` (nm). The pipeline is the one of volara's
tutorial: ExtractFrags (mutex watershed in each block, bias per offset, seeded like
lsdflow's fragments when --min-seed-distance is given) → AffAgglom (mean affinity
between fragments, stored in SQLite) → GraphMWS (a global mutex watershed on the
fragment graph, one look-up table per bias) → Relabel (one segmentation per bias).
Writes OUTDIR/segmentation_<bias>.npy and OUTDIR/timings.json (seconds per stage).
This file imports nothing from lsdflow.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate
from funlib.persistence import prepare_ds
from volara.blockwise import AffAgglom, ExtractFrags, GraphMWS, Relabel
from volara.datasets import Affs, Labels
from volara.dbs import SQLite
from volara.lut import LUT

NEIGHBORHOOD = [Coordinate(1, 0, 0), Coordinate(0, 1, 0), Coordinate(0, 0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--block-voxels", type=int, default=64)
    parser.add_argument("--context-voxels", type=int, default=2, help="volara's tutorial: 2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fragment-bias", type=float, default=-0.5, help="volara's tutorial: -0.5")
    parser.add_argument("--min-seed-distance", type=int, default=None)
    parser.add_argument("--noise-eps", type=float, default=None,
                        help="noise added before the watershed; volara advises it for affinities stored as uint8")
    parser.add_argument("--sigma-voxels", type=int, default=None, help="smoothing of the affinities before it")
    parser.add_argument("--biases", type=float, nargs="+", default=[-0.5])
    args = parser.parse_args()

    data = np.load(args.input)
    affs, voxel_size, offset = data["affs"], Coordinate(data["voxel_size"]), Coordinate(data["offset"])
    args.outdir.mkdir(parents=True, exist_ok=True)
    store = args.outdir / "volara.zarr"
    array = prepare_ds(str(store / "affs"), affs.shape, offset=offset, voxel_size=voxel_size,
                       axis_names=["offset^", "z", "y", "x"], units=["nm"] * 3, mode="w", dtype=np.float32)
    array[:] = affs

    db = SQLite(path=args.outdir / "graph.sqlite", edge_attrs={"zyx_aff": "float"})
    affinities = Affs(store=store / "affs", neighborhood=NEIGHBORHOOD)
    fragments = Labels(store=store / "fragments")
    block = (args.block_voxels,) * 3
    context = (args.context_voxels,) * 3
    options = {"min_seed_distance": args.min_seed_distance, "noise_eps": args.noise_eps,
               "sigma": (args.sigma_voxels,) * 3 if args.sigma_voxels else None}
    options = {k: v for k, v in options.items() if v is not None}
    roi = (tuple(offset), tuple(voxel_size * Coordinate(affs.shape[1:])))  # GraphMWS reads the whole graph
    timings: dict[str, float] = {}

    def timed(name, task):
        began = time.perf_counter()
        task.run_blockwise(multiprocessing=args.workers > 1)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - began

    timed("fragments", ExtractFrags(db=db, affs_data=affinities, frags_data=fragments, block_size=block,
                                    context=context, bias=[args.fragment_bias] * 3, num_workers=args.workers,
                                    **options))
    timed("agglomerate", AffAgglom(db=db, affs_data=affinities, frags_data=fragments, block_size=block,
                                   context=context, scores={"zyx_aff": NEIGHBORHOOD}, num_workers=args.workers))
    for i, bias in enumerate(args.biases):
        # task names come from the file stems, and are how volara knows a task is done: no dots
        lut = LUT(path=str(args.outdir / f"lut_{i}.npz"))
        timed("find_segments", GraphMWS(db=db, lut=lut, weights={"zyx_aff": (1.0, bias)}, roi=roi))
        segments = Labels(store=store / f"segments_{i}")
        timed("relabel", Relabel(frags_data=fragments, seg_data=segments, lut=lut, block_size=block,
                                 num_workers=args.workers))
        np.save(args.outdir / f"segmentation_{bias:g}.npy", segments.array("r")[:])
    (args.outdir / "timings.json").write_text(json.dumps(timings))


if __name__ == "__main__":
    main()
