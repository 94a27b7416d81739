"""Segmentation quality against the number of labelled sections a model was fine-tuned on,
from a `quality_baselines.py` report: VOI sum on each dataset's test region at the
threshold chosen on its validation region, next to the raw-intensity watershed (h from
validation). Writes a PNG and prints the points.

    python benchmarks/plot_label_budget.py REPORT.json [REPORT.json ...] --sections "gala champion=0" \\
        --sections ft-5=5 --sections ft-20=20 --sections ft-all=100 [--out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WATERSHED = "raw watershed (scikit-image), h from validation"


def points(report: dict, sections: dict[str, int]) -> dict[str, list[tuple[int, float, str]]]:
    """Per dataset: (labelled sections, VOI sum on test, model name), by sections."""
    out = {}
    for dataset, result in report.items():
        if "results" not in result:  # e.g. the training times
            continue
        rows = result["results"]["test"]
        out[dataset] = sorted(
            (n, rows[f"{name}, threshold from validation"]["voi_sum"], name)
            for name, n in sections.items() if f"{name}, threshold from validation" in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, nargs="+", help="reports (a model scored in several: the last wins)")
    parser.add_argument("--sections", action="append", default=[], metavar="MODEL=N",
                        help="a model of the report and the labelled sections it was fine-tuned on (0: zero-shot)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "medulla_quality_vs_sections.png")
    args = parser.parse_args()
    report: dict = {}
    for path in args.report:  # models scored in separate runs: merge their test rows per dataset
        for dataset, result in json.loads(path.read_text()).items():
            if "results" not in result:
                continue
            merged = report.setdefault(dataset, {"results": {"test": {}}})
            merged["results"]["test"].update(result["results"]["test"])
    sections = {name: int(n) for name, n in (s.rsplit("=", 1) for s in args.sections)}
    curves = points(report, sections)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for colour, (dataset, curve) in zip(("tab:blue", "tab:orange"), curves.items()):
        if not curve:
            continue
        xs, ys, names = zip(*curve)
        ax.plot(xs, ys, "o-", color=colour, label=f"{dataset} test region")
        for x, y, name in curve:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            print(f"{dataset:8s} {name:20s} {x:4d} sections  VOI sum {y:.3f}")
        watershed = report[dataset]["results"]["test"].get(WATERSHED)
        if watershed:
            ax.axhline(watershed["voi_sum"], color=colour, ls="--", lw=1,
                       label=f"{dataset}: raw watershed, h from validation")
    ax.set_xscale("symlog", linthresh=5)
    ax.set_xlabel("labelled medulla sections fine-tuned on (0 = zero-shot gala model)")
    ax.set_ylabel("VOI sum on test (threshold from validation)")
    ax.set_title("quality against labelled sections")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
