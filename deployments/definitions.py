"""Every lsdflow deployment, defined once: `serve.py` serves them from one process, and
`deployments/prefect.yaml` (work pools on a cluster) is generated from them:

    python -m lsdflow.deployments.definitions > deployments/prefect.yaml

(a test fails when the file and these definitions disagree)."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field

import yaml

from ..flows.watch_acquisitions import EVENT

PROMOTED = "lsdflow.model.promoted"
WATCH_MINUTES = 5.0


@dataclass(frozen=True)
class Trigger:
    """An automation: the event that starts a run, and the run's parameters from it."""

    name: str
    description: str
    event: str
    parameters: dict = field(default_factory=dict)
    enabled_on_a_cluster: bool = True


@dataclass(frozen=True)
class Deployment:
    name: str
    flow: str  # module:function under lsdflow.flows
    pool: str  # "gpu" (training, prediction, whole acquisitions) or "cpu"
    description: str
    # which of the platform's settings it takes: config_name, data_roots, landing
    settings: tuple[str, ...] = ("config_name",)
    concurrency_limit: int | None = None
    watch: bool = False  # scheduled every WATCH_MINUTES (the watcher)
    trigger: Trigger | None = None
    needs_landing: bool = False  # served only with a landing directory
    opt_in: bool = False  # served only when asked (reprocessing on promotion)

    @property
    def entrypoint(self) -> str:
        return f"lsdflow.flows.{self.flow}"


DEPLOYMENTS = (
    Deployment(
        "process-acquisition", "process_acquisition:process_acquisition", "gpu",
        "convert → predict with the champion → fragments → agglomerate → find segments → relabel → threshold "
        "→ quality estimate → evaluate",
        settings=("config_name", "data_roots"), concurrency_limit=1,  # one GPU
        trigger=Trigger("new acquisition: process it",
                        f"The watcher's {EVENT} event (an acquisition complete in the landing directory) starts one "
                        "process-acquisition run for its path.",
                        EVENT, {"path": "{{ event.payload.path }}"})),
    Deployment(
        "watch-acquisitions", "watch_acquisitions:watch_acquisitions", "cpu",
        "one scan of the landing directory; an event for each new acquisition that has stopped changing",
        settings=("landing", "config_name"), watch=True, needs_landing=True),
    Deployment(
        "reprocess-acquisitions", "reprocess_acquisitions:reprocess_acquisitions", "gpu",
        "after a promotion, reprocess the announced acquisitions with the new champion",
        settings=("landing", "data_roots", "config_name"), needs_landing=True, opt_in=True,
        trigger=Trigger("new champion: reprocess acquisitions",
                        f"A {PROMOTED} event (a model became champion) reprocesses every announced acquisition.",
                        PROMOTED, enabled_on_a_cluster=False)),
    Deployment("train", "models:train", "gpu",
               "train (resuming from the newest checkpoint), tracked in MLflow; the model registered as @challenger",
               concurrency_limit=1),
    Deployment("predict", "predict:predict", "gpu",
               "affinities and LSDs for a Zarr volume, block by block, with the champion (or a given model)",
               concurrency_limit=1),
    Deployment("segment", "segment:segment", "cpu",
               "fragments, agglomeration, segments and relabelling of predicted affinities, block by block"),
    Deployment("evaluate", "models:evaluate", "cpu",
               "score a registered model on validation data; the scores recorded with its version"),
    Deployment("promote", "models:promote", "cpu",
               "evaluate @challenger on validation data and make it @champion only if it wins"),
)

# on a cluster, the settings come from the workers' environment
CLUSTER_SETTINGS = {"config_name": "gala", "data_roots": ["{{ $LSDFLOW_DATA_ROOTS }}"],
                    "landing": "{{ $LSDFLOW_LANDING }}"}

HEADER = """\
# lsdflow deployments on work pools: `gpu` (training, prediction, whole acquisitions) and
# `cpu` (segmentation, evaluation, the watcher). Generated from deployments/definitions.py
# (`python -m lsdflow.deployments.definitions > deployments/prefect.yaml`); edit those.
# From the repository root:
#   prefect work-pool create gpu --type process
#   prefect work-pool set-concurrency-limit gpu <number of GPUs>
#   prefect work-pool create cpu --type process
#   prefect deploy --all --prefect-file deployments/prefect.yaml
#   prefect worker start --pool gpu     # on each GPU node (one run per GPU)
#   prefect worker start --pool cpu     # on CPU nodes
# Results, caches and the region graph must be on a filesystem every node shares:
# set PREFECT_LOCAL_STORAGE_PATH there, and point LSDFLOW_* paths at it.
# Entrypoints are module paths: workers need lsdflow installed (`pip install -e .` of this
# repository on every node); nothing is pulled from git.
"""


def prefect_yaml() -> str:
    """deployments/prefect.yaml, as generated from DEPLOYMENTS."""
    entries = []
    for d in DEPLOYMENTS:
        entry = {"name": d.name, "entrypoint": d.entrypoint, "description": d.description,
                 "work_pool": {"name": d.pool}}
        if d.concurrency_limit:
            entry["concurrency_limit"] = d.concurrency_limit
        entry["parameters"] = {s: copy.deepcopy(CLUSTER_SETTINGS[s]) for s in d.settings}
        if d.watch:
            entry["schedules"] = [{"interval": int(WATCH_MINUTES * 60)}]
        if d.trigger:
            trigger = {"type": "event", "name": d.trigger.name, "description": d.trigger.description,
                       "enabled": d.trigger.enabled_on_a_cluster, "match": {}, "expect": [d.trigger.event]}
            if d.trigger.parameters:
                trigger["parameters"] = dict(d.trigger.parameters)
            entry["triggers"] = [trigger]
        entries.append(entry)
    body = yaml.safe_dump({"name": "lsdflow", "prefect-version": "3.9.1", "pull": [], "deployments": entries},
                          sort_keys=False, allow_unicode=True, width=120)
    return HEADER + body


if __name__ == "__main__":
    sys.stdout.write(prefect_yaml())
