"""Conversion to Zarr as a Prefect task, cached on the source files' sizes and times."""

from __future__ import annotations

import os

from ..core.blockwise.outputs import committed_fingerprint, stage_key
from ..core.io.acquisitions import describe
from ..core.io.convert import convert_if_changed
from ..core.io.layout import RAW
from .cache_keys import stage_task
from .references import ArrayRef
from .retry import retry_transient
from .run_names import logged_stage, task_run_name, volume_name


def source_fingerprint(path) -> str:
    """Names, sizes and modification times of every file of an acquisition."""
    return describe(path, None).fingerprint


def _key(ctx, p) -> str:
    """The source's content and the output's identity."""
    key = stage_key(source=source_fingerprint(p["source"]), output=os.path.abspath(p["output"]),
                    voxel_size=p.get("voxel_size"))
    return f"convert-{key}"


@stage_task(name="convert", persist_result=True, timeout_seconds=24 * 3600, retries=2, retry_delay_seconds=[10, 60],
            retry_condition_fn=retry_transient, cache_key_fn=_key,
            committed=lambda p: committed_fingerprint(os.path.abspath(p["output"]), {RAW: None}),
            task_run_name=task_run_name("convert", lambda p: volume_name(p["source"])))
def convert_acquisition(source: str, output: str, voxel_size: list[int] | None = None) -> ArrayRef:
    """`source` (HDF5, TIFF, N5 or Zarr) → `output` Zarr in lsdflow's layout."""
    with logged_stage("convert", source=source, output=output):
        convert_if_changed(source, output, voxel_size=voxel_size, progress=False)
    return ArrayRef.of(output, RAW)
