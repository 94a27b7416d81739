"""The one runner of every blockwise stage (core/blockwise/stage.py), on daisy 2.

`run_stage` takes a stage through its lifecycle (key → complete? → prepare outputs → run
blocks → finish → commit); `run_blocks` is the daisy part, written once: local worker
processes (or workers started by a cluster launcher that connect back with
`daisy.Client`), retries, a block timeout, block tracking so that a rerun skips finished
blocks, progress, and a summary that fails the stage loudly when any block failed or was
orphaned. Each worker rebuilds the stage from its JSON description and opens what it
needs once (`stage.opened()`), for its whole life.

Cluster launchers: `launcher` is a shell command template run once per worker, with
`{command}` (the worker command, shell-quoted as one word), `{stage}` and `{worker_id}`,
for example::

    sbatch --wait -J lsdflow-{stage} -p gpu --gres=gpu:1 --wrap {command}
    bsub -K -J lsdflow-{stage} -gpu num=1 {command}

The command runs `python -m lsdflow.core.blockwise.runner STAGE.json --bad-input FILE
--context CONTEXT` on the node; STAGE.json (the stage's description) lies beside the block
tracking, so it must be on a filesystem the nodes share, as the Zarr containers are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from funlib.geometry import Roi

from ..config import ConfigError
from ..io.input_checks import ModelFileError
from ..io.output_lock import output_lock
from ..io.volumes import VolumeError
from .grid import block_index, grid_blocks  # noqa: F401 - the grid of a stage's blocks
from .outputs import ArrayOutput, stage_key
from .stage import BlockwiseStage, load_stage
from .worker_pool import worker_pool

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
    # the blocks in this process, in order, without daisy or workers: the small-volume path
    # and validation (one block covering the volume), so that they run the deployed code
    in_process: bool = False
    # local workers run in processes kept between stages (worker_pool.py): no interpreter
    # start and imports per stage and worker
    reuse_workers: bool = True

    @classmethod
    def from_config(cls, config, **changes) -> "RunSettings":
        """The config's `[blockwise]` settings, with `changes` (e.g. workers, progress)."""
        bw = config.blockwise
        return replace(cls(bw.workers, bw.retries, bw.block_timeout_s, bw.launcher), **changes)


class StageWorker:
    """One worker's life (a daisy worker function, run in its own process): the stage is
    rebuilt from its JSON description, opened once (`stage.opened()`), given blocks until
    none are left, and closed. Bad input (the same on every block) is recorded in
    `bad_input_file` once and fails every later block without computing it again."""

    def __init__(self, description: str, bad_input_file: str):
        self.description = description
        self.bad_input_file = bad_input_file

    def __call__(self, *, context=None):
        import daisy

        if context is not None:
            os.environ[daisy.Context.ENV_VARIABLE] = context.to_env()
        marker = Path(self.bad_input_file)
        client = daisy.Client()
        stage = load_stage(self.description)
        try:
            with stage.opened() as worker:
                while True:
                    with client.acquire_block() as block:
                        if block is None:
                            return
                        if marker.is_file():
                            raise VolumeError(marker.read_text())
                        worker.process(block)
        except (VolumeError, ConfigError, ModelFileError) as e:
            marker.write_text(str(e))
            raise


class _LaunchedWorker:
    """A daisy worker function that starts one worker through the launcher template and
    waits for it; the started process reads the stage's description and connects back."""

    def __init__(self, template: str, description_file: Path, bad_input_file: Path, stage: str):
        self.template = template
        self.description_file = str(description_file)
        self.bad_input_file = str(bad_input_file)
        self.stage = stage

    def __call__(self, *, context=None):
        import daisy

        context = context if context is not None else daisy.Context.from_env()
        command = shlex.join([sys.executable, "-m", "lsdflow.core.blockwise.runner", self.description_file,
                              "--bad-input", self.bad_input_file, "--context", context.to_env()])
        line = self.template.format(command=shlex.quote(command), stage=self.stage, worker_id=context["worker_id"])
        subprocess.run(line, shell=True, check=True)


def _worker_main(argv: list[str] | None = None) -> None:
    """Entry point of a launched worker."""
    import argparse

    import daisy

    parser = argparse.ArgumentParser(prog="python -m lsdflow.core.blockwise.runner")
    parser.add_argument("description", help="the stage as JSON (BlockwiseStage.describe)")
    parser.add_argument("--bad-input", required=True)
    parser.add_argument("--context", required=True)
    args = parser.parse_args(argv)
    os.environ[daisy.Context.ENV_VARIABLE] = args.context
    StageWorker(Path(args.description).read_text(), args.bad_input)()


def _raise_bad_input(name: str, record: Path) -> None:
    """Bad input met in a block is reported as bad input (VolumeError), not as a failed
    stage, so that neither the CLI nor Prefect retries it."""
    if record.is_file():
        message = record.read_text()
        record.unlink(missing_ok=True)
        raise VolumeError(f"stage {name!r}: {message}")


def run_stage(stage: BlockwiseStage, settings: RunSettings = RunSettings()) -> dict:
    """The one lifecycle of every stage: key → complete? → prepare the outputs → run the
    blocks not done yet → `finish` → commit the outputs (their records of completion last).

    With every output complete for this key the stage is up to date; otherwise its outputs
    are made again, all of them, or only the missing ones for a stage whose outputs are
    independent (the thresholds of a relabel). Raises BlockwiseError
    if any block fails. Returns a summary: blocks total / processed / resumed (done in an
    earlier run) / skipped (nothing to do) / failed / orphaned, and seconds."""
    lock = output_lock(stage.container, stage.lock) if stage.lock else contextlib.nullcontext()
    with lock:
        key = stage.key()
        outputs = stage.outputs()
        for output in outputs:
            output.container = stage.container
        todo = [o for o in outputs if not o.complete(key)]
        if todo and not stage.independent_outputs:
            todo = outputs  # made together: one missing output means making them all again
        if outputs and not todo:
            return {"stage": stage.name, "up_to_date": True, "key": key}
        stage.check()  # bad input fails here, before any output is touched
        writing = {}
        for output in todo:
            placed = output.prepare(key)
            if placed is not None:
                writing[output.dataset] = placed
        arrays = [o for o in todo if isinstance(o, ArrayOutput)]
        if arrays:  # the blocks done are recorded inside the first partial dataset, gone with it
            tracking = arrays[0].tracking_dir(key)
        elif outputs:  # graph tables: beside, under the key, removed on commit
            tracking = Path(stage.container) / ".lsdflow" / "blocks" / f"{stage.name}-{key}"
            for stale in tracking.parent.glob(f"{stage.name}-*"):
                if stale != tracking:
                    shutil.rmtree(stale, ignore_errors=True)
        else:  # no outputs of its own (export): where the stage says
            tracking = stage.tracking_dir()
        if any(getattr(o, "fresh", False) for o in todo):  # a table started afresh voids the blocks done
            shutil.rmtree(tracking / "blocks", ignore_errors=True)
        stage = stage.model_copy(update={"writing": writing, "scratch": str(tracking)})
        stage.prepare()
        summary = stage.finish(run_in_process(stage, settings) if settings.in_process else run_blocks(stage, settings))
        for output in todo:
            output.commit(key)
        if outputs and not arrays:
            shutil.rmtree(tracking, ignore_errors=True)
        return {**summary, "key": key}


def committed(stage: BlockwiseStage) -> str | None:
    """A fingerprint of what `stage` has committed for its current key, or None when it must
    run (a cache layer puts it into its records, so that a cached result whose outputs were
    since deleted, replaced or rewritten is never handed back)."""
    key = stage.key()
    parts = []
    for output in stage.outputs():
        output.container = stage.container
        fingerprint = output.fingerprint(key)
        if fingerprint is None:
            return None
        parts.append(fingerprint)
    return stage_key(parts=parts)


def run_in_process(stage: BlockwiseStage, settings: RunSettings) -> dict:
    """Every block of `stage` in this process (`stage.process_roi`): no block tracking, no
    retries; an error propagates as raised (bad input stays bad input)."""
    start = time.perf_counter()
    counts = stage.process_roi(progress=settings.progress is True)
    return {"stage": stage.name, **counts, "resumed": 0, "failed": 0, "orphaned": 0, "workers": 0,
            "seconds": round(time.perf_counter() - start, 3)}


def _run_task(task, name: str, settings: RunSettings, tracking: Path):
    import daisy

    try:
        return daisy.run_blockwise([task], progress=settings.progress, return_states=True, summary=False)
    except RuntimeError as e:
        if "different task layout" not in str(e):
            raise
        # tracking from another block layout describes other blocks: start over
        logger.warning("%s: block tracking from another layout; starting over", name)
        shutil.rmtree(tracking, ignore_errors=True)
        return daisy.run_blockwise([task], progress=settings.progress, return_states=True, summary=False)


def run_blocks(stage: BlockwiseStage, settings: RunSettings) -> dict:
    """Every block of `stage` not done yet, with daisy; raises BlockwiseError on failures."""
    import daisy
    import daisy.logging as daisy_logging

    tracking_dir = stage.tracking_dir()
    tracking_dir.mkdir(parents=True, exist_ok=True)
    log_dir = stage.log_dir()
    daisy_logging.set_log_basedir(log_dir)
    total_roi, block_size, context = stage.total_roi(), stage.block_size(), stage.context()
    skip_mask = stage.skip_mask()
    tracking = tracking_dir / "blocks"
    # a grid or a skip mask from another run means other blocks: start over
    layout = f"{total_roi}|{block_size}|{context}"
    layout_file = tracking_dir / "layout.txt"
    if layout_file.exists() and layout_file.read_text() != layout:
        shutil.rmtree(tracking, ignore_errors=True)
    layout_file.write_text(layout)

    workers = max(1, settings.workers)
    bad_input = tracking_dir / "bad_input.txt"
    bad_input.unlink(missing_ok=True)
    description = stage.describe()
    pool = None
    if settings.launcher:
        description_file = tracking_dir / "stage.json"
        description_file.write_text(description)
        worker = _LaunchedWorker(settings.launcher, description_file, bad_input, stage.name)
    elif settings.reuse_workers and stage.pooled_workers:
        pool = worker_pool()
        worker = pool.worker(description, str(bad_input))
    else:
        worker = StageWorker(description, str(bad_input))
    task = daisy.Task(
        stage.name,
        total_roi=total_roi.grow(context, context),
        read_roi=Roi((0,) * len(context), block_size).grow(context, context),
        write_roi=Roi((0,) * len(context), block_size),
        process_function=worker,
        read_write_conflict=False,
        fit="shrink",
        max_workers=workers,
        max_retries=settings.retries,
        timeout=settings.block_timeout_s,
        tracking_path=str(tracking),
        skip_mask=skip_mask,
    )
    start = time.perf_counter()
    logger.info("%s: %s blocks of %s nm, %d worker(s)", stage.name, task.block_grid_shape, block_size, workers)
    if pool is not None:
        pool.reserve(workers)
    try:
        states = _run_task(task, stage.name, settings, tracking)
    except RuntimeError as e:  # daisy abandons a task whose workers keep dying
        _raise_bad_input(stage.name, bad_input)
        raise BlockwiseError(f"stage {stage.name!r} abandoned: {e}") from e
    finally:
        if pool is not None:
            pool.release(workers)
    state = states[stage.name]
    skipped_empty = int(skip_mask.sum()) if skip_mask is not None else 0
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
    _raise_bad_input(stage.name, bad_input)
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
