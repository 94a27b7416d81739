"""Conversion to Zarr as a Prefect task, cached on the source files' sizes and times."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from prefect import task

from ..core.convert import convert
from .references import ArrayRef
from .retry import retry_transient


def source_fingerprint(path) -> str:
    """Names, sizes and modification times of every file of an acquisition."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.relative_to(path.parent)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@task(name="convert", persist_result=True, timeout_seconds=24 * 3600, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=retry_transient,
      cache_key_fn=lambda ctx, p: f"convert-{source_fingerprint(p['source'])}-{p['output']}-{p.get('voxel_size')}")
def convert_acquisition(source: str, output: str, voxel_size: list[int] | None = None) -> ArrayRef:
    """`source` (HDF5, TIFF, N5 or Zarr) → `output` Zarr in lsdflow's layout."""
    convert(source, output, voxel_size=voxel_size, overwrite=os.path.exists(output), progress=False)
    return ArrayRef.of(output, "volumes/raw")
