"""Every benchmark in one run: one dated JSON, a markdown table of the key ratios with the
machine they were measured on, and a plot of those ratios against their targets.

Each benchmark script runs in its own process (as a user would run it) and writes its
JSON into a scratch folder; this script collects them, so a failing benchmark is reported
without stopping the others. Ratios are measured within one script's run (a baseline and
lsdflow on the same machine, one after the other), never across runs.

    python benchmarks/run_all.py [--only NAME ...] [--tiny] [--out-dir DIR]
    make benchmarks

`--tiny` runs each benchmark on a tiny input (minutes in all; its numbers mean nothing:
the test suite uses it to check that every benchmark runs and writes well-formed JSON).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Ratio:
    """A number read off a benchmark's JSON, with the target it should meet."""

    name: str
    read: Callable[[dict], float | None]
    target: float | None = None
    higher_is_better: bool = True

    def meets(self, value: float | None) -> bool | None:
        if value is None or self.target is None:
            return None
        return value >= self.target if self.higher_is_better else value <= self.target


@dataclass(frozen=True)
class Benchmark:
    script: str
    args: list[str] = field(default_factory=list)  # besides --out, for the real run
    tiny: list[str] = field(default_factory=list)  # for --tiny
    ratios: tuple[Ratio, ...] = ()
    extra_outputs: tuple[str, ...] = ()  # options naming other files the script writes
    requires: tuple[Path, str] | None = None  # a file it needs, and how to make it: skipped without it


def _quality(dataset: str) -> Callable[[dict], float | None]:
    """Best model's test VOI sum (threshold from validation) over the raw watershed's (h from validation)."""
    def read(result: dict) -> float | None:
        test = result.get(dataset, {}).get("results", {}).get("test", {})
        models = [v["voi_sum"] for k, v in test.items() if k.endswith(", threshold from validation")]
        watershed = next((v["voi_sum"] for k, v in test.items() if k.endswith("h from validation")), None)
        return min(models) / watershed if models and watershed else None
    return read


def _max_voi(key: str) -> Callable[[dict], float | None]:
    return lambda r: max(x[key] for c in r["results"] for x in c["rows"])


def _gpu_best(network: str) -> Callable[[dict], float | None]:
    def read(result: dict) -> float | None:
        if not result.get("networks") or result.get("tiny"):
            return None
        return result["networks"][network]["best"]["mvox_s"] / result["published_mvox_s_per_rtx2080ti"]
    return read


BENCHMARKS: dict[str, Benchmark] = {
    "predict_throughput": Benchmark(
        "predict_throughput.py", tiny=["--repeat", "1", "--crop", "48", "--set", "prediction.test_time_augmentation=false"],
        ratios=(Ratio("in-memory predict / bare forward", lambda r: r["ratio_lsdflow_to_bare"], 0.9),
                Ratio("blockwise predict / in-memory predict (speed)",
                      lambda r: r.get("ratio_blockwise_to_in_memory"), 0.9),
                Ratio("blockwise predict / bare forward over its tiles", lambda r: r.get("ratio_blockwise_to_bare"),
                      0.9))),
    "segment_throughput": Benchmark(
        "segment_throughput.py", tiny=["--repeat", "1", "--crop", "48"],
        ratios=(Ratio("in-memory segment / one waterz call (speed)", lambda r: r["ratio_lsdflow_to_waterz"]),)),
    "blockwise": Benchmark(
        "blockwise.py", tiny=["--size", "48", "--edges", "20000", "--store-edges", "2000", "--mongo-edges", "200"],
        ratios=(Ratio("blockwise post-processing, 2 workers / one waterz call (speed)",
                      lambda r: r["postprocessing"]["workers"]["2"]["ratio_to_waterz"], 2.0),
                Ratio("relabel of 1 threshold / of 8 (time)",
                      lambda r: r["postprocessing"].get("relabel_one_to_eight_thresholds"), 0.25, False))),
    "blockwise_agreement": Benchmark(
        "blockwise_agreement.py", args=["--dataset", "medulla", "--region", "validation"],
        tiny=["--crop", "48", "--contexts", "8"],
        ratios=(Ratio("blockwise vs in memory, same fragments: max VOI", _max_voi("same_fragments_voi"), 0.01, False),
                Ratio("blockwise vs in memory, whole path: max VOI", _max_voi("whole_path_voi")))),
    "scaling": Benchmark(
        "scaling.py", tiny=["--base", "40", "--factors", "1", "2"],
        ratios=(Ratio("8x the volume: time per voxel / 1x (blockwise stages)",
                      lambda r: r["total_time_per_voxel_vs_base"][1] if len(r["sizes"]) > 1 else None, 1.125, False),
                Ratio("largest peak memory of a stage / its 1x peak", lambda r: r["max_peak_vs_base"], 1.2, False))),
    "orchestration": Benchmark(
        "orchestration.py", tiny=["--size", "32"],
        ratios=(Ratio("Prefect flow / direct calls (time)", lambda r: r["overhead_ratio"], 1.1, False),
                Ratio("cached rerun / first run (time)", lambda r: r["cached_fraction"], 0.1, False))),
    "train_throughput": Benchmark(
        "train_throughput.py", tiny=["--configs", "gala", "--iterations", "2"],
        ratios=(Ratio("gala training / model step alone (speed)",
                      lambda r: next(x["train_per_s"] / x["model_per_s"] for x in r["rows"] if x["config"] == "gala")),)),
    "acquisition_shift": Benchmark(
        "acquisition_shift.py", tiny=["--config", "gala"], extra_outputs=("--picture",)),
    "quality_baselines": Benchmark(
        "quality_baselines.py", tiny=["--config", "gala", "--set", "prediction.test_time_augmentation=false"],
        ratios=(Ratio("gala test: best model / raw watershed (VOI sum)", _quality("gala"), 1.0, False),
                Ratio("medulla test: best model / raw watershed (VOI sum)", _quality("medulla"), 1.0, False))),
    "quality_estimate": Benchmark(
        "quality_estimate.py",
        args=["--model", "gala=data/pretrained/gala_mtlsd.pt:0.15", "--model", "medulla=data/pretrained/medulla_mtlsd.pt:0.2"],
        tiny=["--model", "gala=data/pretrained/gala_mtlsd.pt:0.15", "--datasets", "gala", "--regions", "validation",
              "--crop", "40"],
        ratios=(Ratio("label-free quality estimate: correlation with the true VOI sum",
                      lambda r: r["correlation"]["halves_voi_sum"]),)),
    "peers_volara": Benchmark(
        "peers/volara_compare.py", tiny=["--crop", "40"],
        requires=(ROOT / "benchmarks" / "peers" / ".venv-volara" / "bin" / "python",
                  "volara's own environment: `make peers` creates it"),
        ratios=(Ratio("blockwise post-processing: lsdflow / volara at its best setting (speed)",
                      lambda r: r["ratios"]["lsdflow_speed_vs_volara"], 1.0),
                Ratio("best VOI sum: lsdflow - volara", lambda r: r["ratios"]["lsdflow_voi_minus_volara"], 0.0, False))),
    "gpu": Benchmark(
        "gpu.py", tiny=["--device", "cpu", "--tiny", "--seconds", "0.2", "--batch-sizes", "1", "2"],
        ratios=(Ratio("GPU, gala network: best forward / published MTLSD rate", _gpu_best("gala")),
                Ratio("GPU, fib25 MTLSD: best forward / published rate", _gpu_best("fib25"), 1.0))),
}


def describe_machine() -> dict:
    """What the numbers were measured on."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name"))
        meminfo = Path("/proc/meminfo").read_text()
        kib = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal")))
        info["memory_gib"] = round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    import torch

    info["torch"] = torch.__version__
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


def run_one(name: str, bench: Benchmark, tiny: bool, scratch: Path) -> dict:
    out = scratch / f"{name}.json"
    if bench.requires and not bench.requires[0].exists():
        print(f"== {name}: skipped, {bench.requires[0]} is missing ({bench.requires[1]})", flush=True)
        return {"script": f"benchmarks/{bench.script}", "skipped": f"{bench.requires[0]} is missing ({bench.requires[1]})"}
    command = [sys.executable, str(ROOT / "benchmarks" / bench.script), *(bench.tiny if tiny else bench.args),
               "--out", str(out)]
    for option in bench.extra_outputs:
        command += [option, str(scratch / f"{name}{option.replace('--', '-')}.png")]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    began = time.perf_counter()
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    print(process.stdout, end="", flush=True)
    entry = {"script": f"benchmarks/{bench.script}", "arguments": command[2:], "seconds": round(seconds, 1),
             "returncode": process.returncode}
    if process.returncode != 0 or not out.is_file():
        entry["error"] = process.stderr[-3000:] or "no JSON written"
        print(f"!! {name} failed (exit {process.returncode}):\n{entry['error']}", flush=True)
        return entry
    try:
        entry["result"] = json.loads(out.read_text())
    except json.JSONDecodeError as e:
        entry["error"] = f"{out.name} is not valid JSON: {e}"
        return entry
    entry["ratios"] = {}
    for ratio in bench.ratios:
        try:
            value = ratio.read(entry["result"])
        except (KeyError, StopIteration, TypeError, ValueError, ZeroDivisionError):
            value = None
        entry["ratios"][ratio.name] = {"value": value, "target": ratio.target,
                                       "higher_is_better": ratio.higher_is_better, "meets": ratio.meets(value)}
    return entry


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# lsdflow benchmarks, {report['date']}" + (" (tiny inputs: the numbers mean nothing)" if report["tiny"] else ""),
             "", f"Machine: {m.get('cpu', '?')}, {m['cpus']} CPUs, {m.get('memory_gib', '?')} GiB, GPU: {m['gpu'] or 'none'}; "
             f"Python {m['python']}, torch {m['torch']}; commit {m['commit']}.", "",
             "| benchmark | ratio | value | target | met |", "|---|---|---|---|---|"]
    for name, entry in report["benchmarks"].items():
        if "error" in entry:
            lines.append(f"| {name} | failed (exit {entry['returncode']}) | | | |")
            continue
        if "skipped" in entry:
            lines.append(f"| {name} | skipped: {entry['skipped']} | | | |")
            continue
        for ratio_name, r in entry["ratios"].items():
            value = "n/a" if r["value"] is None else f"{r['value']:.3g}"
            target = "" if r["target"] is None else ("≥ " if r["higher_is_better"] else "≤ ") + f"{r['target']:g}"
            met = {True: "yes", False: "**no**", None: ""}[r["meets"]]
            lines.append(f"| {name} | {ratio_name} | {value} | {target} | {met} |")
    lines += ["", "Seconds per benchmark: " + ", ".join(f"{n} {e['seconds']:g}" for n, e in report["benchmarks"].items()
                                                      if "seconds" in e), ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{name}: {ratio}", r) for name, e in report["benchmarks"].items() for ratio, r in e.get("ratios", {}).items()
            if r["value"] is not None]
    fig, ax = plt.subplots(figsize=(10, 0.55 * max(len(rows), 2) + 1.2))
    for i, (label, r) in enumerate(rows):
        color = {True: "tab:green", False: "tab:red", None: "tab:gray"}[r["meets"]]
        ax.barh(i, r["value"], color=color)
        if r["target"] is not None:
            ax.plot([r["target"]] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.set_yticks(range(len(rows)), [textwrap.fill(label, 48) for label, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (black bar: target; green: met, red: not met, grey: no target)")
    ax.set_title(f"lsdflow key ratios, {report['date']}" + (" (tiny)" if report["tiny"] else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run these benchmarks only")
    parser.add_argument("--tiny", action="store_true", help="tiny inputs, to check that every benchmark runs")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results" / "runs")
    args = parser.parse_args()
    date = datetime.datetime.now().strftime("%Y-%m-%d")
    report = {"date": date, "tiny": args.tiny, "machine": describe_machine(), "benchmarks": {}}
    with tempfile.TemporaryDirectory(prefix="lsdflow-bench-") as scratch:
        for name in args.only or list(BENCHMARKS):
            report["benchmarks"][name] = run_one(name, BENCHMARKS[name], args.tiny, Path(scratch))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / (f"{date}-tiny" if args.tiny else date)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    stem.with_suffix(".md").write_text(markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(markdown(report))
    print(f"wrote {stem}.json, .md and .png")
    failed = [n for n, e in report["benchmarks"].items() if "error" in e]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
