"""Stage outputs as Prefect assets, with lineage to their inputs: Zarr datasets as
`file://` keys, region graphs as `sqlite://` / `mongodb://` keys (without credentials)."""

from __future__ import annotations

import re
from urllib.parse import quote

from prefect.tasks import MaterializingTask, Task

from ..core.io.graphstore import redact
from .cache_keys import StageMaterializingTask
from .references import ArrayRef


def array_asset(container: str, dataset: str) -> str:
    return "file://" + quote(f"{container}/{dataset}", safe="/._-")


def graph_asset(url: str, sample: str) -> str:
    url = redact(url).replace(":***@", "@")
    url = re.sub(r"^[A-Za-z+]+", lambda m: m.group(0).lower(), url)  # scheme in lowercase
    return quote(f"{url}#{sample}".replace("#", "/samples/"), safe=":/._-@")


def ref_asset(ref: ArrayRef) -> str:
    return array_asset(ref.container, ref.dataset)


def materializing(task: Task, assets: list[str], deps: list[str]) -> MaterializingTask:
    """`task` with the same options, declared to materialize `assets` from `deps`."""
    made = StageMaterializingTask(
        fn=task.fn, assets=assets, asset_deps=deps, name=task.name, cache_key_fn=task.cache_key_fn,
        retries=task.retries, retry_delay_seconds=task.retry_delay_seconds,
        retry_condition_fn=task.retry_condition_fn, persist_result=True, timeout_seconds=task.timeout_seconds,
        task_run_name=task.task_run_name,
    )
    made.committed_fn = getattr(task, "committed_fn", None)
    return made
