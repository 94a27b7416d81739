"""New acquisitions in a landing directory: which are complete and not yet processed.

An acquisition is a top-level entry of the landing directory (a `.zarr`/`.n5` directory,
an HDF5 file, a TIFF file or a directory of TIFF sections). It counts as complete when its
files have not changed for `settle_seconds` (still being copied otherwise), and as new when
its content fingerprint (names, sizes, modification times of its files) is not the one
recorded when it was last announced. The record is a JSON file, so nothing is announced
twice across runs unless its content changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".zarr", ".n5", ".h5", ".hdf5", ".hdf", ".tif", ".tiff")


@dataclass(frozen=True)
class Acquisition:
    path: Path
    fingerprint: str
    newest_change: float  # seconds since the epoch


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def describe(path: str | os.PathLike) -> Acquisition:
    path = Path(path)
    digest = hashlib.sha256()
    newest = 0.0
    for f in _files(path):
        stat = f.stat()
        newest = max(newest, stat.st_mtime)
        digest.update(f"{f.relative_to(path.parent)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return Acquisition(path.resolve(), digest.hexdigest()[:16], newest)


def candidates(landing: str | os.PathLike) -> list[Path]:
    landing = Path(landing)
    found = []
    for entry in sorted(landing.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.suffix.lower() in SUFFIXES or (entry.is_dir() and any(entry.glob("*.tif*"))):
            found.append(entry)
    return found


def new_acquisitions(landing: str | os.PathLike, record: str | os.PathLike, settle_seconds: float = 60.0,
                     now: float | None = None) -> list[Acquisition]:
    """Complete acquisitions whose content differs from the record (new or changed)."""
    now = time.time() if now is None else now
    seen = _read(record)
    ready = []
    for path in candidates(landing):
        acquisition = describe(path)
        if now - acquisition.newest_change < settle_seconds:
            continue  # still being written
        if seen.get(str(acquisition.path)) != acquisition.fingerprint:
            ready.append(acquisition)
    return ready


def mark_announced(record: str | os.PathLike, acquisition: Acquisition) -> None:
    """Remember `acquisition` as announced (written to a temporary file, renamed in)."""
    seen = _read(record)
    seen[str(acquisition.path)] = acquisition.fingerprint
    record = Path(record)
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_name(f".{record.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(seen, indent=2, sort_keys=True))
    os.replace(partial, record)


def _read(record) -> dict[str, str]:
    record = Path(record)
    return json.loads(record.read_text()) if record.is_file() else {}


def check_inside_roots(path: str | os.PathLike, roots: list[str | os.PathLike]) -> Path:
    """`path` resolved, or ValueError when it lies outside every data root (event payloads
    come from outside: a path must not point anywhere else on the machine)."""
    resolved = Path(path).resolve()
    for root in roots:
        if resolved.is_relative_to(Path(root).resolve()):
            return resolved
    raise ValueError(f"{path}: outside the configured data roots {[str(r) for r in roots]}")
