"""Conversion to Zarr as a Prefect task, cached on the source files' sizes and times."""

from __future__ import annotations

import os

from prefect import task

from ..core.acquisitions import describe
from ..core.convert import convert
from .references import ArrayRef
from .retry import retry_transient


def source_fingerprint(path) -> str:
    """Names, sizes and modification times of every file of an acquisition."""
    return describe(path).fingerprint


@task(name="convert", persist_result=True, timeout_seconds=24 * 3600, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=retry_transient,
      cache_key_fn=lambda ctx, p: f"convert-{source_fingerprint(p['source'])}-{p['output']}-{p.get('voxel_size')}")
def convert_acquisition(source: str, output: str, voxel_size: list[int] | None = None) -> ArrayRef:
    """`source` (HDF5, TIFF, N5 or Zarr) → `output` Zarr in lsdflow's layout."""
    convert(source, output, voxel_size=voxel_size, overwrite=os.path.exists(output), progress=False)
    return ArrayRef.of(output, "volumes/raw")
