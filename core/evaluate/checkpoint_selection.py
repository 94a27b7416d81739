"""Choose a training run's checkpoint, and the post-processing settings, on validation data.

The loss says little about segmentation quality, and checkpoints of one run differ a lot
in VOI; so every checkpoint (or every n-th) is scored on the config's validation volume
or region, under each of a few segmentation settings, and the best (checkpoint, settings,
threshold) by VOI sum wins. The test volume is never looked at here.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

from tqdm import tqdm

from ..config import ConfigError, LsdflowConfig, SegmentationConfig, VolumeRef
from ..model.checkpoint_averaging import averaging_windows, write_averaged_model
from ..model.checkpoints import list_checkpoints
from ..predict.blockwise import predict_volume
from ..view.plots import plot_checkpoint_scores
from .validation import check_labelled_volume, copy_labelled_volume, segment_and_score

logger = logging.getLogger(__name__)


def segmentation_grid(
    config: LsdflowConfig, merge_functions=None, min_seed_distances=None
) -> list[SegmentationConfig]:
    """The config's segmentation settings with each combination of the given alternatives."""
    seg = config.segmentation
    return [
        seg.model_copy(update={"merge_function": mf, "min_seed_distance": msd})
        for mf, msd in itertools.product(merge_functions or [seg.merge_function],
                                         min_seed_distances or [seg.min_seed_distance])
    ]


def with_augmentation(config: LsdflowConfig, augment: bool) -> LsdflowConfig:
    return config.model_copy(update={"prediction": config.prediction.model_copy(update={"test_time_augmentation": augment})})


def with_settings(config: LsdflowConfig, row: dict) -> LsdflowConfig:
    """`config` with the prediction and segmentation settings of a selection row."""
    seg = config.segmentation.model_copy(update={"merge_function": row["merge_function"],
                                                 "min_seed_distance": row["min_seed_distance"]})
    return with_augmentation(config, row["test_time_augmentation"]).model_copy(update={"segmentation": seg})


def select_checkpoint(
    config: LsdflowConfig,
    checkpoint_dir: str | Path,
    volume: VolumeRef | None = None,
    grid: list[SegmentationConfig] | None = None,
    first: int = 0,
    every: int = 1,
    out_dir: str | Path | None = None,
    progress: bool = True,
    augmentations: tuple[bool, ...] | None = None,
    average: int = 0,
) -> dict:
    """Score checkpoints (iteration >= `first`, every `every`-th) on `volume` (default the
    config's first validation entry), predicted with and/or without test-time augmentation
    (`augmentations`, default the config's), under each segmentation setting of `grid`.
    With `average` > 1, each checkpoint's weights averaged with those of the `average - 1`
    checkpoints before it are candidates too (`checkpoint_averaging`).

    Returns {"rows": [...], "best": {...}, "json", "picture"}; a row holds the iteration,
    checkpoint (or averaged model file), the averaged iterations (or None), settings and
    the scores at that setting's best threshold."""
    if volume is None:
        if not config.data.validation:
            raise ConfigError(f"{config.source}: data.validation is empty; name a validation volume or region")
        volume = config.data.validation[0]
    check_labelled_volume(config, volume)
    checkpoints = [(i, p) for i, p in list_checkpoints(checkpoint_dir) if i >= first][::-1][::every][::-1]
    if not checkpoints:
        raise FileNotFoundError(f"{checkpoint_dir}: no training checkpoints (model_checkpoint_N) from iteration {first}")
    grid = grid or [config.segmentation]
    augmentations = augmentations or (config.prediction.test_time_augmentation,)
    out_dir = Path(out_dir) if out_dir else config.resolved_workspace / "checkpoint_selection"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = copy_labelled_volume(config, volume, out_dir / volume.path.name)
    candidates = [(iteration, checkpoint, None) for iteration, checkpoint in checkpoints]
    if average > 1:
        for window in averaging_windows(checkpoint_dir, [i for i, _ in checkpoints], average):
            iterations = [i for i, _ in window]
            averaged = write_averaged_model(
                window, config, out_dir / "averaged" / f"model_average_{iterations[0]}-{iterations[-1]}.pt")
            candidates.append((iterations[-1], averaged, iterations))
    rows = []
    bar = tqdm(candidates, desc="checkpoints", unit="checkpoint", disable=not progress)
    for iteration, checkpoint, averaged_iterations in bar:
        began = time.perf_counter()
        for augment in augmentations:
            predicting = with_augmentation(config, augment)
            predict_volume(predicting, work, model_file=checkpoint, progress=False)
            for seg in grid:
                report = segment_and_score(predicting, work, volume.roi, seg, out_dir / "last_evaluation")
                rows.append({
                    "iteration": iteration, "checkpoint": str(checkpoint), "averaged_iterations": averaged_iterations,
                    "test_time_augmentation": augment,
                    "merge_function": seg.merge_function, "min_seed_distance": seg.min_seed_distance,
                    **report["best"],
                })
        best_here = min((r for r in rows if r["checkpoint"] == str(checkpoint)), key=lambda r: r["voi_sum"])
        line = (f"{candidate_name(best_here)}: VOI sum {best_here['voi_sum']:.3f} (ARAND {best_here['arand']:.3f}) "
                f"in {time.perf_counter() - began:.0f} s")
        logger.info(line)
        bar.set_postfix_str(line)
    best = min(rows, key=lambda r: r["voi_sum"])
    result = {"volume": str(volume), "checkpoint_dir": str(checkpoint_dir), "rows": rows, "best": best}
    title = f"{config.name}: validation " + str(volume).replace(str(volume.path), volume.path.name)
    result["picture"] = str(plot_checkpoint_scores(rows, out_dir / "checkpoint_scores.png", title=title))
    (out_dir / "selection.json").write_text(json.dumps(result, indent=2))
    result["json"] = str(out_dir / "selection.json")
    return result


def candidate_name(row: dict) -> str:
    """'iteration 8750' or 'average of 8000..8750 (4 checkpoints)'."""
    averaged = row.get("averaged_iterations")
    if averaged:
        return f"average of {averaged[0]}..{averaged[-1]} ({len(averaged)} checkpoints)"
    return f"iteration {row['iteration']}"


def format_selection(result: dict) -> str:
    lines = [f"{'iteration':>9s} {'averaged':>14s} {'TTA':>3s} {'merge function':>15s} {'seed dist':>9s} {'threshold':>9s} "
             f"{'VOI split':>9s} {'VOI merge':>9s} {'VOI sum':>8s} {'ARAND':>7s}"]
    for r in result["rows"]:
        mark = "  <- best" if r == result["best"] else ""
        tta = "on" if r["test_time_augmentation"] else "off"
        averaged = r.get("averaged_iterations")
        averaged = f"{averaged[0]}..{averaged[-1]}" if averaged else "-"
        lines.append(f"{r['iteration']:9d} {averaged:>14s} {tta:>3s} {r['merge_function']:>15s} {r['min_seed_distance']:9d} {r['threshold']:9.3g} "
                     f"{r['voi_split']:9.3f} {r['voi_merge']:9.3f} {r['voi_sum']:8.3f} {r['arand']:7.3f}{mark}")
    return "\n".join(lines)
