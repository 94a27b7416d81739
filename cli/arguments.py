"""What every command group shares: the config arguments, the blockwise run settings, the
stage summary line, and the one place a model reference (a file, `models:/NAME@ALIAS`,
`models:/NAME/VERSION`, `@ALIAS`) becomes a model file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.blockwise.runner import RunSettings
from ..core.config import load_config
from ..registry.registration import resolve_prediction_model


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config name (e.g. gala) or path to a TOML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config value (TOML syntax), e.g. --set training.iterations=100",
    )
    parser.add_argument("--workspace", help="where checkpoints and outputs go (default ./workspace/<name>)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def config_of(args):
    return load_config(args.config, args.overrides, args.workspace)


def run_settings(args, config) -> RunSettings:
    changes = {"progress": not getattr(args, "quiet", False)}
    if getattr(args, "workers", None) is not None:
        changes["workers"] = args.workers
    return RunSettings.from_config(config, **changes)


def print_stage(summary: dict) -> None:
    if summary.get("up_to_date"):
        print(f"{summary['stage']:>13}: up to date")
        return
    if "blocks" in summary:
        print(
            f"{summary['stage']:>13}: {summary['blocks']} blocks, {summary['processed']} processed, "
            f"{summary['resumed']} resumed, {summary['skipped']} skipped (empty), "
            f"{summary['workers']} worker(s), {summary['seconds']:.1f} s"
        )
    else:
        print(f"{summary['stage']:>13}: " + ", ".join(f"{k} {v}" for k, v in summary.items() if k != "stage"))


def resolve_model_reference(reference: str | None, config) -> tuple[Path, dict, str]:
    """(model file, lineage attributes, description) of `reference`; without one, the
    config's `prediction.model`, else its `prediction.checkpoint`. Every command that takes a
    model (predict, train --init-from, demo, run) resolves it here."""
    model_file, lineage, described = resolve_prediction_model(reference, config)
    return Path(model_file) if model_file is not None else None, lineage, described
