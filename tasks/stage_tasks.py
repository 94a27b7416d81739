"""One factory that turns a blockwise stage into a Prefect task.

`blockwise_task(build, ...)` makes a task whose parameters are those of `build` (a function
from the task's parameters to its stage, e.g. `config, affs, graph_url -> FragmentsStage`):

- cache key: the stage's own key (every input's content, the container, the parameters,
  the code version); a cached result is handed back only while the stage's outputs are
  still committed for that key (`cache_keys.StageTask`);
- the body: the one runner (`run_stage`), with progress in the Prefect UI, start and end
  log lines, and retries of transient failures (bad input is never retried);
- its result: `result(stage, summary)`, e.g. references to the arrays written;
- `assets(stage)`: the stage's outputs as Prefect assets, for the flow to declare.

The stage is built once per call: the cache-key and completeness checks and the body share
it (building one can mean loading a model and sampling the raw data)."""

from __future__ import annotations

import functools
import inspect
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from prefect.utilities.callables import get_call_parameters

from ..core.blockwise.outputs import ArrayOutput, GraphOutput
from ..core.blockwise.runner import RunSettings, committed, run_stage
from ..core.blockwise.stage import BlockwiseStage
from .assets import array_asset, graph_asset
from .cache_keys import StageTask
from .progress import PrefectProgress, blockwise_settings
from .retry import retry_transient
from .run_names import logged_stage, task_run_name, volume_name

RETRIES = dict(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_transient, persist_result=True)


class _Built:
    """Stages built for a call, by the call's parameters; the body takes its stage out, so a
    later call always builds afresh (its inputs may have changed)."""

    def __init__(self, size: int = 64):
        self._stages: OrderedDict[str, BlockwiseStage] = OrderedDict()
        self._lock = threading.Lock()
        self._size = size

    @staticmethod
    def _id(build: Callable, parameters: dict) -> str:
        bound = inspect.signature(build).bind(**parameters)
        bound.apply_defaults()  # the same call with or without its defaults written out
        parameters = dict(bound.arguments)

        def plain(value):
            return value.model_dump(mode="json") if hasattr(value, "model_dump") else str(value)

        return f"{build.__module__}.{build.__qualname__}:" + json.dumps(parameters, sort_keys=True, default=plain)

    def get(self, build: Callable, parameters: dict) -> BlockwiseStage:
        key = self._id(build, parameters)
        with self._lock:
            if key in self._stages:
                return self._stages[key]
        stage = build(**parameters)
        with self._lock:
            self._stages[key] = stage
            while len(self._stages) > self._size:
                self._stages.popitem(last=False)
        return stage

    def take(self, build: Callable, parameters: dict) -> BlockwiseStage:
        with self._lock:
            stage = self._stages.pop(self._id(build, parameters), None)
        return stage if stage is not None else build(**parameters)


_built = _Built()


def assets(stage: BlockwiseStage) -> list[str]:
    """The stage's outputs as Prefect asset keys."""
    keys = []
    for output in stage.outputs():
        if isinstance(output, ArrayOutput):
            keys.append(array_asset(stage.container, output.dataset))
        elif isinstance(output, GraphOutput):
            keys.append(graph_asset(output.graph_url, output.sample)
                        + ("" if output.table == "nodes" else f"/{output.table.split('/')[0]}"))
    return keys


def blockwise_task(build: Callable[..., BlockwiseStage], *, result: Callable[[BlockwiseStage, dict], Any],
                   describe: Callable[[dict], str] | None = None, timeout_seconds: float = 24 * 3600,
                   **options) -> StageTask:
    """A Prefect task running the stage `build(**parameters)` (see the module's docstring):
    `build` is a stage class (the task's parameters are its fields) or a function from the
    task's parameters to a stage. `describe(parameters)` names its runs ("<stage>: <describe>";
    default: the volume)."""
    describe = describe or (lambda p: volume_name(p.get("container", "")))
    name = options.pop("name", None)
    # a stage class builds itself from its fields; a function from the task's parameters
    stage_name = name or (build.name if isinstance(build, type) else build.__name__.removesuffix("_stage"))

    @functools.wraps(build, updated=())
    def run(*args, **kwargs):
        parameters = get_call_parameters(build, args, kwargs)
        stage = _built.take(build, parameters)
        config = parameters.get("config")
        settings = (blockwise_settings(config, stage.name, stage.container) if config is not None
                    else RunSettings(progress=PrefectProgress(stage.name, stage.container)))
        with logged_stage(stage.name, volume=stage.container, ROI=stage.total_roi()) as learned:
            summary = run_stage(stage, settings)
            learned["blocks"] = summary.get("blocks", "up to date")
        return result(stage, summary)

    run.__signature__ = inspect.signature(build)
    task = StageTask(
        fn=run, name=stage_name,
        cache_key_fn=lambda context, parameters: f"{stage_name}-{_built.get(build, parameters).key()}",
        task_run_name=task_run_name(stage_name, describe), timeout_seconds=timeout_seconds,
        **{**RETRIES, **options},
    )
    task.committed_fn = lambda parameters: committed(_built.get(build, parameters))
    task.build_stage = lambda **parameters: _built.get(build, parameters)
    return task


__all__ = ["assets", "blockwise_task", "volume_name"]
