"""Names a person can read in the Prefect UI: task runs "<stage>: <what it works on>",
flow runs named after the acquisition, its config and the model; and the log lines at the
start and end of every stage."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def volume_name(ref) -> str:
    """An ArrayRef, a path or a string as the name a user knows it by."""
    return Path(str(getattr(ref, "container", ref))).name


def thresholds(values) -> str:
    return ", ".join(f"{float(t):g}" for t in sorted(values))


def task_run_name(stage: str, describe: Callable[[dict], str]) -> Callable[[], str]:
    """A `task_run_name` for Prefect: "<stage>: <describe(parameters)>". The stage comes
    first and alone before the colon, so a run's stage can be read back from its name."""

    def name() -> str:
        from prefect.runtime import task_run

        try:
            detail = describe(task_run.parameters)
        except Exception:  # noqa: BLE001 - a name never fails a run
            detail = ""
        return f"{stage}: {detail}" if detail else stage

    return name


def stage_of(run_name: str) -> str:
    """The stage a task run name starts with (inverse of `task_run_name`)."""
    return run_name.split(":", 1)[0]


def rename_flow_run(name: str) -> None:
    """Rename the current flow run (e.g. once the model version is known)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id is None:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name)
    except Exception:  # noqa: BLE001 - a name never fails a run
        logging.getLogger(__name__).warning("could not rename flow run %s", flow_run.id)


def _logger():
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("lsdflow")


@contextmanager
def logged_stage(stage: str, **facts) -> Iterator[dict]:
    """Log "<stage>: start (facts)" and "<stage>: done in N s (facts added on the way)";
    the yielded dict takes facts learned while running (blocks, segments, ...)."""
    logger = _logger()
    logger.info("%s: start (%s)", stage, ", ".join(f"{k} {v}" for k, v in facts.items()))
    learned: dict = {}
    began = time.perf_counter()
    yield learned
    extra = "".join(f", {k} {v}" for k, v in learned.items())
    logger.info("%s: done in %.1f s%s", stage, time.perf_counter() - began, extra)
