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
        if "skipped" in entry:  # only a benchmark that needs an environment of its own
            assert name == "peers_volara" and "make peers" in entry["skipped"]
            continue
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


VOLARA_PYTHON = ROOT / "benchmarks" / "peers" / ".venv-volara" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not VOLARA_PYTHON.exists(), reason="volara's environment is absent (`make peers` creates it)")
def test_volara_peer_runs_both_tools_on_the_same_affinities(tmp_path):
    out = tmp_path / "peers.json"
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers" / "volara_compare.py"), "--crop", "32",
                              "--volara-python", str(VOLARA_PYTHON), "--out", str(out)],
                             capture_output=True, text=True, cwd=ROOT)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"lsdflow", "one waterz call"} <= set(result["results"]) and len(result["results"]) == 4
    for name, tool in result["results"].items():
        assert tool["total_seconds"] > 0 and all(0 <= row["voi_sum"] < 20 for row in tool["rows"]), name
    volara = [tool for name, tool in result["results"].items() if name.startswith("volara")]
    assert all(set(tool["seconds"]) == {"fragments", "agglomerate", "find_segments", "relabel"} for tool in volara)


def test_volara_peer_without_its_environment_says_how_to_make_it(tmp_path):
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers" / "volara_compare.py"),
                              "--volara-python", str(tmp_path / "missing" / "python")],
                             capture_output=True, text=True, cwd=ROOT)
    assert process.returncode != 0
    assert "lsdflow: error:" in process.stderr and "make peers" in process.stderr
