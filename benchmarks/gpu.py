"""Prediction speed on a GPU: what a lab's card does with lsdflow's networks.

For the gala network (the shipped model) and the published isotropic MTLSD (fib25 config,
196^3 -> 72^3 voxels, ~94 M parameters, untrained weights: speed does not depend on them),
measures output voxels/s of the forward pass in float32 and under autocast (bfloat16,
float16) for several batch sizes, how far autocast's affinities are from float32's on the
same input, and the data loading rate (input tiles read from a chunked Zarr, z-scored,
copied to the device) in the same output voxels/s, so that one reads off whether loading
keeps up with the network. The published rate is about 0.9 Mvox/s per RTX 2080 Ti.

On a machine without CUDA it says "no GPU" and writes a JSON that says so. `--device cpu
--tiny` runs the same measurements on small networks on the CPU (for the test suite).

    python benchmarks/gpu.py [--batch-sizes 1 2 4 8] [--seconds 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lsdflow.core.model.checkpoints import load_model
from lsdflow.core.config import load_config
from lsdflow.core.model.networks import build_model, count_parameters

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def networks(tiny: bool) -> dict:
    """name -> (model, input shape, output shape). `tiny`: 2 feature maps, the smallest
    input whose output has 8 voxels per axis."""
    result = {}
    for name in ("gala", "fib25"):
        config = load_config(name)
        if tiny:
            shape = list(config.model.geometry.smallest_input(8))
            config = load_config(name, ["model.num_fmaps=2", "model.fmap_inc_factor=2", f"model.input_shape={shape}",
                                        f"prediction.input_shape={shape}"])
        input_shape, output_shape = config.prediction_shapes
        if name == "gala" and not tiny:
            model, _ = load_model(config.prediction.checkpoint)
        else:
            model = build_model(config.model)
        result[name] = (model.eval(), tuple(input_shape), tuple(output_shape))
    return result


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_rate(model, input_shape, output_shape, batch_size: int, precision: str, device: str,
                 seconds: float, reference: np.ndarray | None = None) -> dict:
    """Output Mvox/s of `model` on random input, and the largest difference of its affinities
    from `reference` (float32's on the same input)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 1, *input_shape, generator=generator).to(device)
    dtype = PRECISIONS[precision]
    autocast = (torch.autocast(device_type=device.split(":")[0], dtype=dtype) if dtype is not None
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        affs = model(x)[model.outputs.index("affs")]  # warm up (cuDNN picks its algorithms here)
        synchronize(device)
        runs, began = 0, time.perf_counter()
        while runs < 3 or time.perf_counter() - began < seconds:
            model(x)
            runs += 1
        synchronize(device)
        elapsed = time.perf_counter() - began
    affs = affs[:1].float().cpu().numpy()
    row = {"batch_size": batch_size, "precision": precision, "runs": runs,
           "mvox_s": runs * batch_size * float(np.prod(output_shape)) / elapsed / 1e6,
           "max_abs_diff_to_float32": None if reference is None else float(np.abs(affs - reference).max())}
    if device.startswith("cuda"):
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        torch.cuda.reset_peak_memory_stats()
    return row, affs


def loading_rate(input_shape, output_shape, device: str, seconds: float, workdir: Path) -> dict:
    """Output Mvox/s at which input tiles come from a chunked Zarr to the device: read,
    scaled and z-scored as lsdflow's prediction does, pinned host copy (on CUDA), transfer."""
    import zarr

    from lsdflow.core.io.intensity import Normalization

    shape = tuple(2 * s for s in input_shape)
    store = zarr.open(str(workdir / "raw.zarr"), mode="w", shape=shape, chunks=(64, 64, 64), dtype=np.uint8)
    store[:] = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    normalization = Normalization(0.5, 0.29)  # uniform intensities; the statistics are computed once per volume
    rng = np.random.default_rng(1)
    tiles, began = 0, time.perf_counter()
    while tiles < 3 or time.perf_counter() - began < seconds:
        start = [int(rng.integers(0, s - i + 1)) for s, i in zip(shape, input_shape)]
        tile = normalization(store[tuple(slice(s, s + i) for s, i in zip(start, input_shape))] / 255.0)
        tensor = torch.from_numpy(tile)
        if device.startswith("cuda"):
            tensor = tensor.pin_memory()
        tensor.to(device, non_blocking=True)
        tiles += 1
    synchronize(device)
    elapsed = time.perf_counter() - began
    return {"tiles": tiles, "mvox_s": tiles * float(np.prod(output_shape)) / elapsed / 1e6}


def machine(device: str) -> dict:
    info = {"device": device, "torch": torch.__version__}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=props.total_memory / 1e9, cuda=torch.version.cuda,
                    bf16_supported=torch.cuda.is_bf16_supported())
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else None,
                        help="default: cuda when there is one, else report 'no GPU'")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=10.0, help="time per measurement")
    parser.add_argument("--tiny", action="store_true", help="small networks (to check the script on a CPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.device is None:
        print("no GPU: torch sees no CUDA device; nothing measured")
        args.out.write_text(json.dumps({"gpu": None, "reason": "no CUDA device"}, indent=2))
        print(f"wrote {args.out}")
        return
    precisions = ["float32", "bfloat16"] if args.device == "cpu" else list(PRECISIONS)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    report = {"machine": machine(args.device), "tiny": args.tiny, "networks": {}}
    print(f"{'network':8s} {'precision':9s} {'batch':>5s} {'Mvox/s':>8s} {'max |d aff|':>11s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, input_shape, output_shape) in networks(args.tiny).items():
            model = model.to(args.device)
            rows, reference = [], None
            for precision in precisions:
                for batch_size in args.batch_sizes:
                    try:
                        row, affs = forward_rate(model, input_shape, output_shape, batch_size, precision,
                                                 args.device, args.seconds, reference)
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        rows.append({"batch_size": batch_size, "precision": precision, "out_of_memory": True})
                        print(f"{name:8s} {precision:9s} {batch_size:5d} out of memory")
                        break
                    if precision == "float32" and batch_size == args.batch_sizes[0]:
                        reference = affs
                    rows.append(row)
                    diff = row["max_abs_diff_to_float32"]
                    print(f"{name:8s} {precision:9s} {batch_size:5d} {row['mvox_s']:8.3f} "
                          f"{'' if diff is None else f'{diff:11.4f}'}")
            loading = loading_rate(input_shape, output_shape, args.device, args.seconds, Path(tmp))
            best = max((r for r in rows if "mvox_s" in r), key=lambda r: r["mvox_s"])
            print(f"{name:8s} data loading (Zarr -> {args.device}): {loading['mvox_s']:.3f} Mvox/s; best forward "
                  f"{best['mvox_s']:.3f} ({best['precision']}, batch {best['batch_size']})")
            report["networks"][name] = {
                "input_shape": list(input_shape), "output_shape": list(output_shape),
                "parameters": count_parameters(model), "forward": rows, "loading": loading,
                "best": {k: best[k] for k in ("precision", "batch_size", "mvox_s")},
                "ratio_loading_to_best_forward": loading["mvox_s"] / best["mvox_s"],
            }
            model.cpu()
    report["published_mvox_s_per_rtx2080ti"] = 0.9
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
