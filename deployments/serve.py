"""Serve every lsdflow deployment from one process (a single machine, no work pools):
`lsdflow serve` or `python -m lsdflow.deployments.serve`.

Settings come from the environment:
- LSDFLOW_LANDING: the landing directory the watcher scans (required for the watcher);
- LSDFLOW_DATA_ROOTS: directories event paths must lie in (default: the landing directory);
- LSDFLOW_CONFIG: the dataset config (default gala);
- LSDFLOW_WATCH_MINUTES: how often the watcher scans (default 5);
- LSDFLOW_PROCESS_CONCURRENCY: acquisitions processed at the same time (default 1: one GPU);
- LSDFLOW_REPROCESS_ON_PROMOTION: "1" to reprocess announced acquisitions with a new champion.
"""

from __future__ import annotations

import importlib
import os
from datetime import timedelta
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import EntrypointType
from prefect.events import DeploymentEventTrigger

from ..core.io.acquisitions import data_roots as acquisition_roots
from .definitions import DEPLOYMENTS, WATCH_MINUTES


def _flow(entrypoint: str):
    module, _, name = entrypoint.partition(":")
    return getattr(importlib.import_module(module), name)


def deployments(landing: str | None = None, config_name: str | None = None, watch_minutes: float | None = None,
                data_roots: list[str] | None = None, reprocess_on_promotion: bool | None = None) -> list:
    """The deployments of `definitions.DEPLOYMENTS`, with this machine's settings."""
    landing = landing or os.environ.get("LSDFLOW_LANDING")
    config_name = config_name or os.environ.get("LSDFLOW_CONFIG", "gala")
    watch_minutes = watch_minutes or float(os.environ.get("LSDFLOW_WATCH_MINUTES", str(WATCH_MINUTES)))
    if data_roots or os.environ.get("LSDFLOW_DATA_ROOTS"):
        roots = [str(r) for r in acquisition_roots(data_roots)]
    else:
        roots = [str(acquisition_roots([str(Path(landing).resolve())])[0])] if landing else []
    if reprocess_on_promotion is None:
        reprocess_on_promotion = os.environ.get("LSDFLOW_REPROCESS_ON_PROMOTION", "0") == "1"
    settings = {"config_name": config_name, "data_roots": roots, "landing": landing}
    result = []
    for d in DEPLOYMENTS:
        if (d.needs_landing and not landing) or (d.opt_in and not reprocess_on_promotion):
            continue
        options = {"parameters": {s: settings[s] for s in d.settings}, "description": d.description}
        if d.concurrency_limit:
            options["concurrency_limit"] = d.concurrency_limit
        if d.name == "process-acquisition":
            options["concurrency_limit"] = int(os.environ.get("LSDFLOW_PROCESS_CONCURRENCY", d.concurrency_limit))
        if d.watch:
            options["interval"] = timedelta(minutes=watch_minutes)
        if d.trigger:
            options["triggers"] = [DeploymentEventTrigger(
                name=d.trigger.name, description=d.trigger.description, expect={d.trigger.event},
                parameters=dict(d.trigger.parameters) or None)]
        # flows are loaded by module path (lsdflow.flows.*): they use package-relative imports
        result.append(_flow(d.entrypoint).to_deployment(d.name, entrypoint_type=EntrypointType.MODULE_PATH,
                                                        **options))
    return result


def main() -> None:
    serve(*deployments())


if __name__ == "__main__":
    main()
