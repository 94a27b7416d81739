"""Blockwise segmentation against in-memory segmentation of the same affinities, at every
threshold: VOI between the two on the same fragments (the agglomeration) and along the
whole path (fragments computed block by block), per fragments context. Prints a table and
writes JSON.

The affinities are the dataset's prediction model (`prediction.checkpoint` of its config)
on one of its regions, one pass without test-time augmentation:

    python benchmarks/blockwise_agreement.py --dataset gala --region test
    python benchmarks/blockwise_agreement.py --dataset medulla --region validation --contexts 8 20 40
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lsdflow.core.blockwise.runner import RunSettings
from lsdflow.core.config import load_config
from lsdflow.core.evaluate.metrics import segmentation_scores
from lsdflow.core.io.volumes import open_array, write_array
from lsdflow.core.predict.blockwise import predict_volume
from lsdflow.core.segment.blockwise import segment_blockwise
from lsdflow.core.segment.threshold_selection import central_crop
from lsdflow.core.segment.watershed import agglomerate, fragments_from_affinities

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]


def _read(container, dataset):
    a = open_array(container, dataset)
    return a[a.roi]


def predicted_region(dataset: str, region: str, workdir: Path, crop: int | None = None) -> Path:
    """The region's raw and labels (or a centred crop of `crop`^3 voxels) in a container
    of their own, with predicted affinities."""
    config = load_config(dataset, ["prediction.test_time_augmentation=false"])
    source = getattr(config.data, region)[0]
    container = workdir / f"{dataset}_{region}.zarr"
    for name in (config.data.raw_dataset, config.data.labels_dataset):
        array = open_array(source.path, name)
        roi = source.roi or array.roi
        if crop:
            roi = central_crop(roi, array.voxel_size, crop**3)
        write_array(container, name, roi, array.voxel_size, array[roi])
    predict_volume(config, container, progress=False)
    return container


def agreement(dataset: str, container: Path, blocks: int, context_voxels: int, workers: int) -> dict:
    affs = _read(container, "volumes/pred_affs")
    labels = _read(container, "volumes/labels/neuron_ids")
    vs = open_array(container, "volumes/pred_affs").voxel_size
    block_nm = [int(np.ceil(s / blocks)) * v for s, v in zip(affs.shape[1:], vs)]
    config = load_config(dataset, [f"blockwise.block_size_nm={block_nm}",
                                   f"blockwise.fragments_context_nm={[context_voxels * v for v in vs]}"])
    copy = container.parent / f"blockwise-{context_voxels}.zarr"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(container, copy)
    start = time.perf_counter()
    segment_blockwise(config, copy, thresholds=THRESHOLDS, settings=RunSettings(workers=workers, progress=False))
    seconds = time.perf_counter() - start
    fragments = _read(copy, "volumes/fragments")
    in_memory_fragments = fragments_from_affinities(affs, config.fragments_in_xy(), config.segmentation.min_seed_distance)
    in_memory = agglomerate(affs, in_memory_fragments, THRESHOLDS, config.segmentation.merge_function)
    same_fragments = agglomerate(affs, fragments, THRESHOLDS, config.segmentation.merge_function, fill=False)
    labelled, on_fragments = labels > 0, fragments > 0
    rows = []
    for t in THRESHOLDS:
        blockwise = _read(copy, f"volumes/segmentation/{config.segmentation.merge_function}/{t:g}")
        rows.append({
            "threshold": t,
            "same_fragments_voi": segmentation_scores(same_fragments[t][on_fragments], blockwise[on_fragments]).voi_sum,
            "whole_path_voi": segmentation_scores(in_memory[t][labelled], blockwise[labelled]).voi_sum,
            "blockwise_vs_gt": segmentation_scores(labels[labelled], blockwise[labelled]).voi_sum,
            "in_memory_vs_gt": segmentation_scores(labels[labelled], in_memory[t][labelled]).voi_sum,
        })
    shutil.rmtree(copy, ignore_errors=True)
    return {"context_voxels": context_voxels, "block_nm": block_nm, "seconds": round(seconds, 1),
            "fragments_blockwise": int(len(np.unique(fragments)) - 1),
            "fragments_in_memory": int(len(np.unique(in_memory_fragments)) - 1), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="gala")
    parser.add_argument("--region", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--blocks", type=int, default=2, help="blocks per axis (default 2: 8 blocks)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[8, 32], help="fragments context, voxels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crop", type=int, help="a centred crop of N^3 voxels of the region")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        container = predicted_region(args.dataset, args.region, Path(tmp), args.crop)
        results = [agreement(args.dataset, container, args.blocks, c, args.workers) for c in args.contexts]
    print(f"{args.dataset} {args.region}: VOI blockwise vs in memory ({args.blocks ** 3} blocks)")
    print(f"{'context':>8} {'':16}" + "".join(f"{t:>8g}" for t in THRESHOLDS))
    for r in results:
        print(f"{r['context_voxels']:>8} {'same fragments':16}" + "".join(f"{x['same_fragments_voi']:8.3f}" for x in r["rows"]))
        print(f"{'':>8} {'whole path':16}" + "".join(f"{x['whole_path_voi']:8.3f}" for x in r["rows"]))
        print(f"{'':>8} fragments {r['fragments_blockwise']} blockwise, {r['fragments_in_memory']} in memory; {r['seconds']} s")
    out = args.out or ROOT / "benchmarks" / "results" / f"blockwise_agreement_{args.dataset}_{args.region}.json"
    out.write_text(json.dumps({"dataset": args.dataset, "region": args.region, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
