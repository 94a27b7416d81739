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

import os
from datetime import timedelta

from pathlib import Path

from prefect import serve
from prefect.deployments.runner import EntrypointType
from prefect.events import DeploymentEventTrigger

from ..core.io.acquisitions import data_roots as acquisition_roots
from ..flows.model_flows import evaluate, promote, train
from ..flows.predict import predict
from ..flows.process_acquisition import process_acquisition
from ..flows.reprocess_acquisitions import reprocess_acquisitions
from ..flows.segment import segment
from ..flows.watch_acquisitions import EVENT, watch_acquisitions

PROMOTED = "lsdflow.model.promoted"


def deployments(landing: str | None = None, config_name: str | None = None, watch_minutes: float | None = None,
                data_roots: list[str] | None = None, reprocess_on_promotion: bool | None = None) -> list:
    landing = landing or os.environ.get("LSDFLOW_LANDING")
    config_name = config_name or os.environ.get("LSDFLOW_CONFIG", "gala")
    watch_minutes = watch_minutes or float(os.environ.get("LSDFLOW_WATCH_MINUTES", "5"))
    if data_roots or os.environ.get("LSDFLOW_DATA_ROOTS"):
        roots = [str(r) for r in acquisition_roots(data_roots)]
    else:
        roots = [str(acquisition_roots([str(Path(landing).resolve())])[0])] if landing else []
    if reprocess_on_promotion is None:
        reprocess_on_promotion = os.environ.get("LSDFLOW_REPROCESS_ON_PROMOTION", "0") == "1"
    # flows are loaded by module path (lsdflow.flows.*): they use package-relative imports
    module = {"entrypoint_type": EntrypointType.MODULE_PATH}
    result = [
        process_acquisition.to_deployment(
            "process-acquisition", **module,
            parameters={"config_name": config_name, "data_roots": roots},
            triggers=[DeploymentEventTrigger(
                name="new acquisition: process it",
                description=f"The watcher's {EVENT} event (an acquisition complete in the landing directory) "
                            "starts one process-acquisition run for its path.",
                expect={EVENT}, parameters={"path": "{{ event.payload.path }}"},
            )],
            concurrency_limit=int(os.environ.get("LSDFLOW_PROCESS_CONCURRENCY", "1")),  # default: one GPU
        ),
        train.to_deployment("train", **module, parameters={"config_name": config_name}, concurrency_limit=1),
        predict.to_deployment("predict", **module, parameters={"config_name": config_name}, concurrency_limit=1),
        segment.to_deployment("segment", **module, parameters={"config_name": config_name}),
        evaluate.to_deployment("evaluate", **module, parameters={"config_name": config_name}),
        promote.to_deployment("promote", **module, parameters={"config_name": config_name}),
    ]
    if landing:
        result.append(watch_acquisitions.to_deployment(
            "watch-acquisitions", **module, interval=timedelta(minutes=watch_minutes),
            parameters={"landing": landing, "config_name": config_name},
        ))
        if reprocess_on_promotion:
            result.append(reprocess_acquisitions.to_deployment(
                "reprocess-acquisitions", **module,
                parameters={"landing": landing, "config_name": config_name, "data_roots": roots},
                triggers=[DeploymentEventTrigger(
                    name="new champion: reprocess acquisitions",
                    description=f"A {PROMOTED} event (a model became champion) reprocesses every announced acquisition.",
                    expect={PROMOTED})],
            ))
    return result


def main() -> None:
    serve(*deployments())


if __name__ == "__main__":
    main()
