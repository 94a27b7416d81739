"""Every benchmark runs on a tiny input and writes well-formed JSON (the numbers are not
checked: benchmarks are scripts, timings do not belong in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import run_all  # noqa: E402


@pytest.mark.slow
def test_every_benchmark_runs_on_a_tiny_input_and_writes_one_dated_report(tmp_path):
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--tiny", "--out-dir", str(tmp_path)],
                             capture_output=True, text=True, cwd=ROOT)
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-4000:]
    (report_file,) = tmp_path.glob("*-tiny.json")
    report = json.loads(report_file.read_text())
    assert set(report["benchmarks"]) == set(run_all.BENCHMARKS)
    assert report["machine"]["cpus"] >= 1 and report["machine"]["torch"] == torch.__version__
    for name, entry in report["benchmarks"].items():
        assert "error" not in entry, (name, entry.get("error"))
        assert isinstance(entry["result"], (dict, list)) and entry["result"], name
        for ratio, value in entry["ratios"].items():
            assert value["value"] is None or value["value"] == value["value"], (name, ratio)  # not NaN
    # the ratios that need no GPU and no second dataset are read from real runs
    assert report["benchmarks"]["predict_throughput"]["ratios"]["in-memory predict / bare forward"]["value"] > 0
    assert report["benchmarks"]["blockwise_agreement"]["ratios"][
        "blockwise vs in memory, same fragments: max VOI"]["value"] < 0.01
    table = report_file.with_suffix(".md").read_text()
    assert "| predict_throughput | in-memory predict / bare forward |" in table and "Machine:" in table
    assert report_file.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_gpu_benchmark_says_no_gpu_without_one(tmp_path):
    out = tmp_path / "gpu.json"
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--out", str(out)],
                             capture_output=True, text=True, cwd=ROOT)
    assert process.returncode == 0, process.stderr
    assert "no GPU" in process.stdout
    assert json.loads(out.read_text()) == {"gpu": None, "reason": "no CUDA device"}
