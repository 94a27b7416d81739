"""Progress of a blockwise stage as a Prefect progress artifact (daisy observer)."""

from __future__ import annotations

import time
from pathlib import Path

from ..core.blockwise.runner import RunSettings
from .artifacts import volume_key


class PrefectProgress:
    """A daisy progress observer that keeps a Prefect progress artifact (keyed by stage and
    volume, so it is listed on the Artifacts page) at the share of blocks done, with the
    block counts in its description (updated at most every `every` seconds)."""

    def __init__(self, stage: str, volume: str = "", every: float = 2.0):  # volume: its container's path
        self.stage = stage
        self.volume = volume
        self.every = every
        self._artifact = None
        self._last = 0.0

    @staticmethod
    def _counts(states) -> tuple[int, int, int]:
        total = sum(int(s.total_block_count) for s in states.values())
        done = sum(int(s.completed_count) for s in states.values())
        failed = sum(int(s.failed_count) for s in states.values())
        return done, total, failed

    def _percent(self, states) -> float:
        done, total, _ = self._counts(states)
        return 100.0 * done / total if total else 100.0

    def _description(self, states) -> str:
        done, total, failed = self._counts(states)
        where = f" of {Path(self.volume).name}" if self.volume else ""
        return (f"**{self.stage}**{where}: {self._percent(states):.0f} % — {done} of {total} blocks done"
                + (f", {failed} failed" if failed else ""))

    def on_start(self, states):
        from prefect.artifacts import create_progress_artifact

        try:
            self._artifact = create_progress_artifact(self._percent(states), description=self._description(states),
                                                      key=volume_key(f"progress-{self.stage}", self.volume))
        except Exception:  # noqa: BLE001 - outside a Prefect run there is nothing to show
            self._artifact = None

    def on_progress(self, states):
        now = time.monotonic()
        if self._artifact is not None and now - self._last >= self.every:
            self._update(states)
            self._last = now

    def on_finish(self, states):
        if self._artifact is not None:
            self._update(states)

    def _update(self, states):
        from prefect.artifacts import update_progress_artifact

        try:
            update_progress_artifact(self._artifact, self._percent(states), description=self._description(states))
        except Exception:  # noqa: BLE001 - progress is best effort, never fails a stage
            pass


def blockwise_settings(config, stage: str, volume: str = ""):
    """The config's run settings, reporting progress to the Prefect UI."""
    return RunSettings.from_config(config, progress=PrefectProgress(stage, volume))
