"""One blockwise runner for every large-volume stage, on daisy 2.

A stage is a small unit: its geometry (the ROI to write, block size and context, in nm)
and a picklable `process_block(block)` callable that reads, computes and writes one
block. Everything else is here, once: the daisy task, local worker processes (or
workers started by a cluster launcher that connect back with `daisy.Client`), retries,
a block timeout, block tracking so that a rerun skips finished blocks, progress, and a
summary that fails the stage loudly when any block failed or was orphaned.

A `process_block` object is unpickled once per worker process, so state it builds on
its first block (a model on its GPU, an open graph store) lives for the worker's life.

Cluster launchers: `launcher` is a shell command template run once per worker, with
`{command}` (the worker command, shell-quoted as one word), `{stage}` and `{worker_id}`,
for example::

    sbatch --wait -J lsdflow-{stage} -p gpu --gres=gpu:1 --wrap {command}
    bsub -K -J lsdflow-{stage} -gpu num=1 {command}

The command runs `python -m lsdflow.core.blockwise PAYLOAD --context CONTEXT` on the
node; PAYLOAD (the pickled stage) lies beside the block tracking, so it must be on a
filesystem the nodes share, as the Zarr containers are.
"""

from __future__ import annotations

import logging
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

logger = logging.getLogger(__name__)


class BlockwiseError(RuntimeError):
    """A stage ended with failed or orphaned blocks."""


@dataclass(frozen=True)
class RunSettings:
    """How a stage runs (the `[blockwise]` config section, minus geometry)."""

    workers: int = 2
    retries: int = 2
    block_timeout_s: float = 600.0
    launcher: str | None = None
    progress: object = True  # a bar, False, or a daisy progress observer (on_start/on_progress/on_finish)


@dataclass
class Stage:
    """A blockwise stage: which blocks, and what to do with one."""

    name: str
    total_roi: Roi  # the region written, nm
    block_size: Coordinate  # write block, nm
    context: Coordinate  # read margin on each side, nm
    process_block: Callable  # process_block(block) -> None; picklable
    tracking_dir: Path  # block-done markers live here
    skip_mask: np.ndarray | None = None  # per block, 1 = nothing to do (e.g. empty raw)
    log_dir: Path | None = None  # worker logs; default <tracking_dir>/logs


def block_index(block_write_roi: Roi, total_roi: Roi, block_size: Coordinate) -> int:
    """Linear index of a block in the stage's grid: small, stable ids for a block
    (daisy's own block ids grow cubically with the grid position)."""
    grid = tuple(-(-s // b) for s, b in zip(total_roi.shape, block_size))
    position = (block_write_roi.offset - total_roi.offset) / block_size
    return int(np.ravel_multi_index(tuple(position), grid))


def grid_blocks(total_roi: Roi, block_size: Coordinate) -> list[Roi]:
    """Write ROIs of all blocks in grid order, the last ones shrunk to the total ROI."""
    grid = tuple(-(-s // b) for s, b in zip(total_roi.shape, block_size))
    rois = []
    for position in np.ndindex(*grid):
        offset = total_roi.offset + Coordinate(position) * block_size
        rois.append(Roi(offset, block_size).intersect(total_roi))
    return rois


class BlockProcessor:
    """Base of every stage's `process_block`: `setup()` opens arrays, models and stores
    on the first block a worker process gets; attributes named `_h_*` hold those
    handles and are never pickled."""

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_h_")}
        state["_open"] = False
        return state

    def setup(self) -> None:
        raise NotImplementedError

    def process(self, block) -> None:
        raise NotImplementedError

    bad_input_file: str | None = None  # set by run_stage: where a bad-input error is recorded

    def __call__(self, block) -> None:
        from .config import ConfigError
        from .input_checks import ModelFileError
        from .volumes import VolumeError

        marker = Path(self.bad_input_file) if self.bad_input_file else None
        if marker is not None and marker.is_file():
            # bad input fails the same way on every block: do not compute it again
            raise VolumeError(marker.read_text())
        try:
            if not getattr(self, "_open", False):
                self.setup()
                self._open = True
            self.process(block)
        except (VolumeError, ConfigError, ModelFileError) as e:
            if marker is not None:
                marker.write_text(str(e))
            raise


class _LaunchedWorker:
    """A zero-argument daisy worker function: starts one worker through the launcher
    template and waits for it; the started process connects back to this run."""

    def __init__(self, template: str, payload: Path, stage: str):
        self.template = template
        self.payload = str(payload)
        self.stage = stage

    def __call__(self, *, context=None):
        import daisy

        context = context if context is not None else daisy.Context.from_env()
        command = shlex.join(
            [sys.executable, "-m", "lsdflow.core.blockwise", self.payload, "--context", context.to_env()]
        )
        line = self.template.format(command=shlex.quote(command), stage=self.stage, worker_id=context["worker_id"])
        subprocess.run(line, shell=True, check=True)


def _worker_main(argv: list[str] | None = None) -> None:
    """Entry point of a launched worker: acquire, process, release until done."""
    import argparse

    import daisy

    parser = argparse.ArgumentParser(prog="python -m lsdflow.core.blockwise")
    parser.add_argument("payload")
    parser.add_argument("--context", required=True)
    args = parser.parse_args(argv)
    os.environ[daisy.Context.ENV_VARIABLE] = args.context
    with open(args.payload, "rb") as f:
        process_block = pickle.load(f)
    client = daisy.Client()
    while True:
        with client.acquire_block() as block:
            if block is None:
                return
            process_block(block)


def _raise_bad_input(stage: Stage, record: Path) -> None:
    """Bad input met in a block is reported as bad input (VolumeError), not as a failed
    stage, so that neither the CLI nor Prefect retries it."""
    if record.is_file():
        from .volumes import VolumeError

        message = record.read_text()
        record.unlink(missing_ok=True)
        raise VolumeError(f"stage {stage.name!r}: {message}")


def run_stage(stage: Stage, settings: RunSettings = RunSettings()) -> dict:
    """Run every block of `stage` not done yet; raise BlockwiseError if any block fails.

    Returns a summary: blocks total / processed / resumed (done in an earlier run) /
    skipped (nothing to do) / failed / orphaned, and seconds."""
    import daisy
    import daisy.logging as daisy_logging

    stage.tracking_dir.mkdir(parents=True, exist_ok=True)
    log_dir = stage.log_dir or stage.tracking_dir / "logs"
    daisy_logging.set_log_basedir(log_dir)
    task_id = stage.name
    tracking = stage.tracking_dir / "blocks"
    # a grid or a skip mask from another run means other blocks: start over
    layout = f"{stage.total_roi}|{stage.block_size}|{stage.context}"
    layout_file = stage.tracking_dir / "layout.txt"
    if layout_file.exists() and layout_file.read_text() != layout:
        shutil.rmtree(tracking, ignore_errors=True)
    layout_file.write_text(layout)

    workers = max(1, settings.workers)
    process = stage.process_block
    bad_input = stage.tracking_dir / "bad_input.txt"
    bad_input.unlink(missing_ok=True)
    if isinstance(process, BlockProcessor):
        process.bad_input_file = str(bad_input)
    if settings.launcher:
        payload = stage.tracking_dir / "stage.pkl"
        with open(payload, "wb") as f:
            pickle.dump(stage.process_block, f)
        process = _LaunchedWorker(settings.launcher, payload, stage.name)
    context = Coordinate(stage.context)
    task = daisy.Task(
        task_id,
        total_roi=stage.total_roi.grow(context, context),
        read_roi=Roi((0,) * len(context), stage.block_size).grow(context, context),
        write_roi=Roi((0,) * len(context), stage.block_size),
        process_function=process,
        read_write_conflict=False,
        fit="shrink",
        max_workers=workers,
        max_retries=settings.retries,
        timeout=settings.block_timeout_s,
        tracking_path=str(tracking),
        skip_mask=stage.skip_mask,
    )
    start = time.perf_counter()
    logger.info("%s: %s blocks of %s nm, %d worker(s)", stage.name, task.block_grid_shape, stage.block_size, workers)
    try:
        try:
            states = daisy.run_blockwise([task], progress=settings.progress, return_states=True, summary=False)
        except RuntimeError as e:
            if "different task layout" not in str(e):
                raise
            # tracking from another block layout describes other blocks: start over
            logger.warning("%s: block tracking from another layout; starting over", stage.name)
            shutil.rmtree(tracking, ignore_errors=True)
            states = daisy.run_blockwise([task], progress=settings.progress, return_states=True, summary=False)
    except RuntimeError as e:  # daisy abandons a task whose workers keep dying
        _raise_bad_input(stage, bad_input)
        raise BlockwiseError(f"stage {stage.name!r} abandoned: {e}") from e
    state = states[task_id]
    skipped_empty = int(stage.skip_mask.sum()) if stage.skip_mask is not None else 0
    summary = {
        "stage": stage.name,
        "blocks": state.total_block_count,
        "processed": state.completed_count - state.skipped_count,
        "resumed": state.skipped_count - skipped_empty,
        "skipped": skipped_empty,
        "failed": state.failed_count,
        "orphaned": state.orphaned_count,
        "workers": workers,
        "seconds": round(time.perf_counter() - start, 3),
        "logs": str(log_dir),
    }
    _raise_bad_input(stage, bad_input)
    if state.failed_count or state.orphaned_count or state.completed_count < state.total_block_count:
        error = state.first_worker_error or state.last_worker_error or "(no error reported; see the logs)"
        raise BlockwiseError(
            f"stage {stage.name!r}: {state.failed_count} block(s) failed, {state.orphaned_count} orphaned, "
            f"{state.completed_count}/{state.total_block_count} done; worker logs in {summary['logs']}\n"
            f"first error:\n{error}"
        )
    return summary


if __name__ == "__main__":
    _worker_main()
