"""Training throughput on this machine: which bounds training, the data or the model?

For every shipped config at reduced size (fewer feature maps, the smallest valid input
whose output is at least 8 voxels per axis, or the config's own shape for gala), on the
real gala pixels presented at that config's voxel size, measure in separate processes:

  pipeline  the gunpowder pipeline alone (augment + LSDs + affinities), batches/s
  model     one optimizer step on tensors of the same shapes (forward + backward + Adam), it/s
  train     both together as `lsdflow train` runs them (PreCache workers + Train node), it/s

and each process's peak resident memory. Prints a table and writes JSON.

    python benchmarks/train_throughput.py [--configs gala cremi] [--iterations 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GALA_TEST = ROOT / "data" / "gala" / "gala_test.zarr"
GALA_TRAIN = ROOT / "data" / "gala" / "gala_train.zarr"


def reduced_config(name: str, workdir: Path):
    """The shipped config at reduced size, trained on gala pixels at its voxel size."""
    from lsdflow.core.config import load_config
    from lsdflow.core.io.convert import convert

    full = load_config(name)
    if name == "gala":
        return load_config(name, ["training.precache_workers=2"], workspace=workdir / name)
    data = workdir / f"gala_at_{name}.zarr"
    if not data.exists():
        convert(GALA_TRAIN, data, voxel_size=full.data.voxel_size, progress=False)
    shape = list(full.model.geometry.smallest_input(8))
    overrides = [
        "model.num_fmaps=4",
        "model.fmap_inc_factor=3",
        f"model.input_shape={shape}",
        f"data.train=['{data}']",
        "training.min_masked=0.05",
        "training.precache_workers=2",
    ]
    return load_config(name, overrides, workspace=workdir / name)


def measure(name: str, mode: str, iterations: int, workdir: Path) -> dict:
    import gunpowder as gp
    import torch

    from lsdflow.core.train.losses import MultiTaskWeightedMSELoss
    from lsdflow.core.model.networks import build_model, count_parameters
    from lsdflow.core.train.training import TrainingKeys, build_training_pipeline, make_request, train

    config = reduced_config(name, workdir)
    result = {
        "config": name,
        "mode": mode,
        "input_shape": list(config.model.input_shape),
        "output_shape": list(config.model.output_shape),
        "num_fmaps": config.model.num_fmaps,
        "parameters": count_parameters(build_model(config.model)),
    }
    if mode == "pipeline":
        import dask

        keys = TrainingKeys.for_outputs(config.model.outputs)
        pipeline = build_training_pipeline(config, keys, precache=False)
        with dask.config.set(scheduler="synchronous"), gp.build(pipeline):
            pipeline.request_batch(make_request(config, keys, 0))  # warm up
            began = time.perf_counter()
            for i in range(iterations):
                pipeline.request_batch(make_request(config, keys, i + 1))
            seconds = time.perf_counter() - began
    elif mode == "model":
        torch.manual_seed(0)
        model = build_model(config.model).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        loss_fn = MultiTaskWeightedMSELoss([1.0] * len(config.model.outputs))
        x = torch.randn(config.training.batch_size, 1, *config.model.input_shape)

        def step():
            optimizer.zero_grad()
            outputs = model(x)
            args = []
            for o in outputs:
                args += [o, torch.rand_like(o), torch.ones_like(o)]
            loss_fn(*args).backward()
            optimizer.step()

        step()
        began = time.perf_counter()
        for _ in range(iterations):
            step()
        seconds = time.perf_counter() - began
    else:
        train(config, iterations=1, progress=False)  # builds, warms up, first checkpoint
        began = time.perf_counter()
        train(config, iterations=1 + iterations, progress=False)
        seconds = time.perf_counter() - began
    result["per_second"] = iterations / seconds
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["iterations"] = iterations
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.json")
    parser.add_argument("--one", nargs=3, metavar=("CONFIG", "MODE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, mode, workdir = args.one
        print(json.dumps(measure(name, mode, args.iterations, Path(workdir))))
        return

    from lsdflow.core.config import shipped_configs

    names = args.configs or shipped_configs()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = {}
            for mode in ("pipeline", "model", "train"):
                out = subprocess.run(
                    [sys.executable, __file__, "--iterations", str(args.iterations), "--one", name, mode, tmp],
                    capture_output=True, text=True, check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                row.update({k: r[k] for k in ("config", "input_shape", "output_shape", "num_fmaps", "parameters")})
                row[f"{mode}_per_s"] = r["per_second"]
                row[f"{mode}_peak_rss_mib"] = r["peak_rss_mib"]
            row["bound_by"] = "data pipeline" if row["pipeline_per_s"] < row["model_per_s"] else "model step"
            rows.append(row)
            print(f"measured {name}", file=sys.stderr)

    import torch

    header = (
        f"{'config':10s} {'input':>15s} {'output':>13s} {'fmaps':>5s} {'params':>8s} "
        f"{'pipeline b/s':>12s} {'model it/s':>10s} {'train it/s':>10s} {'peak MiB (p/m/t)':>18s}  bound by"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        mem = f"{r['pipeline_peak_rss_mib']:.0f}/{r['model_peak_rss_mib']:.0f}/{r['train_peak_rss_mib']:.0f}"
        print(
            f"{r['config']:10s} {str(tuple(r['input_shape'])):>15s} {str(tuple(r['output_shape'])):>13s} "
            f"{r['num_fmaps']:5d} {r['parameters']:8d} {r['pipeline_per_s']:12.2f} {r['model_per_s']:10.2f} "
            f"{r['train_per_s']:10.2f} {mem:>18s}  {r['bound_by']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform(),
                            "torch": torch.__version__, "device": "cpu"},
                "iterations": args.iterations,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
