"""Prefect tasks whose cache is true to content and identity, and to their outputs.

A stage task's cache key is its core stage's key: every input's content fingerprint, the
container's identity, the parameters and the code version. That alone would hand back a
cached result whose data was since deleted or replaced (a reconverted container, a
cleaned-up directory). So before each call the task asks its stage whether the outputs
that key describes are committed; when they are not, the call runs with Prefect's
`refresh_cache`: the stage runs (resuming, or finding its outputs complete at once) and
its cache record is overwritten under the same key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.tasks import MaterializingTask, Task
from prefect.utilities.callables import get_call_parameters

# parameters -> fingerprint of the committed outputs, or None when they must be (re)made
Committed = Callable[[dict[str, Any]], "str | None"]


class _RefreshWhenOutputsMissing:
    committed_fn: Committed | None = None

    def outputs_committed(self, args, kwargs) -> bool:
        if self.committed_fn is None:
            return True
        return self.committed_fn(get_call_parameters(self.fn, args, kwargs)) is not None

    def __call__(self, *args, **kwargs):
        if not self.outputs_committed(args, kwargs):
            return self.with_options(refresh_cache=True)(*args, **kwargs)
        return super().__call__(*args, **kwargs)


class StageTask(_RefreshWhenOutputsMissing, Task):
    """A Prefect task that refreshes its cache record when its outputs are not committed."""


class StageMaterializingTask(_RefreshWhenOutputsMissing, MaterializingTask):
    """The same, declared to materialize assets (see `assets.materializing`)."""


def stage_task(*, committed: Committed, **options) -> Callable[[Callable], StageTask]:
    """`@stage_task(committed=fn, name=..., cache_key_fn=..., ...)`: like `@task`."""

    def decorate(fn: Callable) -> StageTask:
        made = StageTask(fn=fn, **options)
        made.committed_fn = committed
        return made

    return decorate
