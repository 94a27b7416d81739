"""Progress of a blockwise stage as a Prefect progress artifact (daisy observer)."""

from __future__ import annotations

import time


class PrefectProgress:
    """A daisy progress observer that keeps a Prefect progress artifact at the share of
    blocks done (updated at most every `every` seconds)."""

    def __init__(self, description: str, every: float = 2.0):
        self.description = description
        self.every = every
        self._artifact = None
        self._last = 0.0

    def _percent(self, states) -> float:
        total = sum(int(s.total_block_count) for s in states.values())
        done = sum(int(s.completed_count) for s in states.values())
        return 100.0 * done / total if total else 100.0

    def on_start(self, states):
        from prefect.artifacts import create_progress_artifact

        try:
            self._artifact = create_progress_artifact(self._percent(states), description=self.description)
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
            update_progress_artifact(self._artifact, self._percent(states))
        except Exception:  # noqa: BLE001 - progress is best effort, never fails a stage
            pass


def blockwise_settings(config, stage: str):
    """The config's run settings, reporting progress to the Prefect UI."""
    from ..core.blockwise import RunSettings

    bw = config.blockwise
    return RunSettings(bw.workers, bw.retries, bw.block_timeout_s, bw.launcher,
                       progress=PrefectProgress(f"{stage}: share of blocks done"))
