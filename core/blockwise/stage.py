"""The stage contract: what every blockwise stage (predict, fragments, agglomerate, relabel,
export, and any new one) is, in the spirit of volara's `BlockwiseTask` and gunpowder's nodes.

A stage is a pydantic model: its fields are everything it needs (plain, JSON-serialisable
values), so a cluster worker is handed the stage as JSON (`describe()` / `load_stage()`),
never as a pickle. It says

- where it works: `total_roi()`, `block_size()`, `context()` (nm), optionally `skip_mask()`;
- what its result depends on: `key()`;
- what it writes: `outputs()` (core/blockwise/outputs.py), each carrying the stage's key as
  its record of completion, written last;
- what a worker needs for its life: `opened()`, a context manager (arrays, a model on its
  device, a graph store), entered once per worker and closed when the worker ends;
- what one block is: `process(block)`; `process_roi(roi)` runs the same code in this process.

`core/blockwise/runner.py::run_stage` takes every stage through one lifecycle: key →
complete? → prepare outputs → run blocks → `finish()` → commit.
"""

from __future__ import annotations

import importlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
from funlib.geometry import Coordinate, Roi
from pydantic import BaseModel, ConfigDict

from .grid import grid_blocks


class BlockwiseStage(BaseModel):
    """Base of every stage. Subclasses set `name` (and `lock`, the container's output lock
    the stage holds while it runs) and implement the methods below."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str]
    lock: ClassVar[str | None] = None
    # outputs made one by one (a relabel's thresholds): a missing one is made alone
    independent_outputs: ClassVar[bool] = False
    # local workers may run in processes kept between stages (worker_pool.py); a stage whose
    # workers hold much after they end (a model framework) says no, so that the pooled
    # processes stay small for the stages after it
    pooled_workers: ClassVar[bool] = True

    container: str  # the volume's Zarr container (absolute)
    # output name -> the dataset the running stage writes (its partial), set by the runner
    writing: dict[str, str] = {}
    scratch: str | None = None  # the run's own directory (block tracking lives there), set by the runner

    # where it works
    def total_roi(self) -> Roi:
        raise NotImplementedError

    def block_size(self) -> Coordinate:
        raise NotImplementedError

    def context(self) -> Coordinate:
        return Coordinate((0,) * self.total_roi().dims)

    def in_one_block(self) -> bool:
        """The whole volume is one block (the small-volume path): `check` may read all of
        its input, which the block reads anyway."""
        return len(grid_blocks(self.total_roi(), self.block_size())) == 1

    def skip_mask(self) -> np.ndarray | None:
        """Per block in grid order, 1 = nothing to do (e.g. no raw data there)."""
        return None

    # what it depends on and writes
    def key(self) -> str:
        raise NotImplementedError

    def outputs(self) -> list:
        """What the stage writes (`outputs.ArrayOutput`, `outputs.GraphOutput`); none for a
        stage whose result is handled by its caller (export)."""
        return []

    def tracking_dir(self) -> Path:
        """Where a stage without outputs records the blocks done (a stage with outputs has
        them recorded with its first output, by the runner)."""
        return Path(self.scratch) if self.scratch else Path(self.container) / ".lsdflow" / "blocks" / self.name

    def log_dir(self) -> Path:
        return Path(self.container) / ".lsdflow" / "logs" / self.name

    # what it does
    def check(self) -> None:
        """Refuse bad input (raise VolumeError) before any output is touched; under the
        stage's lock, after the completeness check."""

    def prepare(self) -> None:
        """Before the blocks, after the outputs are prepared (e.g. a new graph is started)."""

    @contextmanager
    def opened(self):
        """What a worker needs, opened once for its life and closed at its end; yields an
        object whose `process(block)` the worker calls (usually the stage itself)."""
        yield self

    def process(self, block) -> None:
        raise NotImplementedError

    def finish(self, summary: dict) -> dict:
        """After every block, before the outputs are committed (e.g. merging a whole graph);
        returns the summary, amended."""
        return summary

    def process_roi(self, roi: Roi | None = None, progress: bool = False) -> dict:
        """The same blocks in this process, in order, without daisy (small volumes, validation,
        tests), blocks in `skip_mask` left out; outputs go where `writing` says (the runner's
        partials, or datasets the caller made). Returns the blocks processed and skipped."""
        roi = roi or self.total_roi()
        context = self.context()
        blocks = grid_blocks(roi, self.block_size())
        skip = self.skip_mask() if roi == self.total_roi() else None
        skip = skip.ravel() if skip is not None else np.zeros(len(blocks), dtype=bool)
        todo = [(index, write_roi) for index, write_roi in enumerate(blocks) if not skip[index]]
        if progress and len(todo) > 1:
            from tqdm import tqdm

            todo = tqdm(todo, desc=self.name, unit="block")
        with self.opened() as worker:
            for index, write_roi in todo:
                worker.process(LocalBlock(write_roi.grow(context, context), write_roi, index))
        skipped = int(np.count_nonzero(skip))
        return {"blocks": len(blocks), "processed": len(blocks) - skipped, "skipped": skipped}

    # the stage as JSON, for workers started elsewhere
    def describe(self) -> str:
        return json.dumps({"class": f"{type(self).__module__}:{type(self).__qualname__}",
                           "fields": self.model_dump(mode="json")})


class LocalBlock:
    """A block of `process_roi`: the attributes of a daisy block that stages read."""

    def __init__(self, read_roi: Roi, write_roi: Roi, index: int):
        self.read_roi, self.write_roi = read_roi, write_roi
        self.block_id = (None, index)


def load_stage(description: str) -> BlockwiseStage:
    """The stage `describe()` wrote; its class is imported by name."""
    data = json.loads(description)
    module, _, qualname = data["class"].partition(":")
    cls = getattr(importlib.import_module(module), qualname)
    if not (isinstance(cls, type) and issubclass(cls, BlockwiseStage)):
        raise ValueError(f"not a blockwise stage: {data['class']!r}")
    return cls.model_validate(data["fields"])


def nm(values) -> Coordinate:
    return Coordinate(tuple(int(v) for v in values))


def roi_of(begin_and_shape) -> Roi:
    """A ROI from the `(begin, shape)` pair stages keep in their fields."""
    begin, shape = begin_and_shape
    return Roi(tuple(begin), tuple(shape))


def roi_field(roi: Roi) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(int(v) for v in roi.begin), tuple(int(v) for v in roi.shape)
