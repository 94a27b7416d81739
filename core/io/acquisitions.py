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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from .atomic import write_text
from .layout import LABELS_MASK, MITO_IDS, NEURON_IDS, RAW
from .output_lock import file_lock

SUFFIXES = (".zarr", ".n5", ".h5", ".hdf5", ".hdf", ".tif", ".tiff")


@dataclass(frozen=True)
class Acquisition:
    path: Path
    fingerprint: str
    newest_change: float  # seconds since the epoch
    files: int = 0  # input files found; none: not an acquisition yet (still arriving)


# the input datasets of a Zarr acquisition: what lsdflow writes into the container
# (predictions, fragments, segmentations, luts, .lsdflow/) is not part of its identity
INPUT_DATASETS = (RAW, NEURON_IDS, LABELS_MASK, MITO_IDS)


def _files(path: Path, datasets: tuple[str, ...] | None = INPUT_DATASETS) -> list[Path]:
    """The files that make an acquisition (`datasets=None`: every file)."""
    if path.is_file():
        return [path]
    if path.suffix.lower() == ".zarr" and datasets is not None:  # lsdflow writes its outputs into a Zarr acquisition only
        files = [p for p in path.iterdir() if p.is_file()]  # root metadata
        for dataset in datasets:
            if (path / dataset).is_dir():
                files += [p for p in (path / dataset).rglob("*") if p.is_file()]
        return sorted(files)
    return sorted(p for p in path.rglob("*") if p.is_file())


def describe(path: str | os.PathLike, datasets: tuple[str, ...] | None = INPUT_DATASETS) -> Acquisition:
    """An acquisition's identity: names, sizes and mtimes of its input files only, so
    that lsdflow's own outputs written into a Zarr acquisition never announce it again."""
    path = Path(path)
    digest = hashlib.sha256()
    newest = 0.0
    files = _files(path, datasets)
    for f in files:
        stat = f.stat()
        newest = max(newest, stat.st_mtime)
        digest.update(f"{f.relative_to(path.parent)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    # a container's root metadata alone is not data yet
    data_files = sum(1 for f in files if path.is_file() or f.parent != path)
    return Acquisition(path.resolve(), digest.hexdigest()[:16], newest, data_files)


def candidates(landing: str | os.PathLike) -> list[Path]:
    landing = Path(landing)
    found = []
    for entry in sorted(landing.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.suffix.lower() in SUFFIXES or (entry.is_dir() and any(entry.glob("*.tif*"))):
            found.append(entry)
    return found


def default_record(landing: str | os.PathLike, workspace: str | os.PathLike) -> Path:
    """Where the watcher remembers what it announced: in the workspace, never in the
    landing directory (which belongs to the microscope's data transfer)."""
    key = hashlib.sha256(str(Path(landing).resolve()).encode()).hexdigest()[:12]
    return Path(workspace) / "acquisitions" / f"announced-{key}.json"


def output_dir(workspace: str | os.PathLike, source: str | os.PathLike) -> Path:
    """Where processing an acquisition writes what does not belong inside a Zarr container
    (a Zarr converted from HDF5/TIFF/N5, the region graph, the evaluation report):
    `<workspace>/acquisitions/<name>-<hash of its resolved path>/`, never the landing directory."""
    source = Path(source).resolve()
    key = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    return Path(workspace).resolve() / "acquisitions" / f"{source.name.split('.')[0] or 'acquisition'}-{key}"


def new_acquisitions(landing: str | os.PathLike, record: str | os.PathLike, settle_seconds: float = 60.0,
                     now: float | None = None) -> list[Acquisition]:
    """Complete acquisitions whose content differs from the record (new or changed)."""
    now = time.time() if now is None else now
    seen = _read(record)
    ready = []
    for path in candidates(landing):
        acquisition = describe(path)
        if not acquisition.files or now - acquisition.newest_change < settle_seconds:
            continue  # still being written
        if seen.get(str(acquisition.path)) != acquisition.fingerprint:
            ready.append(acquisition)
    return ready


def announce_new(landing: str | os.PathLike, record: str | os.PathLike, emit: Callable[[Acquisition], None],
                 settle_seconds: float = 60.0) -> list[Acquisition]:
    """`emit` each complete acquisition that is new or changed, then record it; all under
    a lock on the record, so that two scans at once (a slow scan overlapping the next
    scheduled one, two watchers on one landing directory) never announce one twice."""
    record = Path(record)
    with file_lock(record.with_suffix(".lock"), f"acquisition record {record}"):
        announced = []
        for acquisition in new_acquisitions(landing, record, settle_seconds):
            emit(acquisition)
            mark_announced(record, acquisition)
            announced.append(acquisition)
        return announced


def mark_announced(record: str | os.PathLike, acquisition: Acquisition) -> None:
    """Remember `acquisition` as announced (written to a temporary file, renamed in)."""
    seen = _read(record)
    seen[str(acquisition.path)] = acquisition.fingerprint
    record = Path(record)
    record.parent.mkdir(parents=True, exist_ok=True)
    write_text(record, json.dumps(seen, indent=2, sort_keys=True))


def _read(record) -> dict[str, str]:
    record = Path(record)
    return json.loads(record.read_text()) if record.is_file() else {}


def data_roots(values: list[str] | None = None, environ: dict | None = None) -> list[Path]:
    """The data roots: `values` (each entry may hold several, `:`-separated, as a
    deployment template renders `$LSDFLOW_DATA_ROOTS`), else `LSDFLOW_DATA_ROOTS`.

    Fails closed: no roots, an empty entry (an unset variable rendered as ""), a relative
    or missing directory are refused, so that no path is accepted by accident (an empty
    root would resolve to the worker's working directory)."""
    environ = os.environ if environ is None else environ
    entries = list(values) if values else [environ.get("LSDFLOW_DATA_ROOTS", "")]
    roots = []
    for entry in entries:
        for part in str(entry).split(os.pathsep):
            if not part.strip():
                raise ConfigError(
                    f"data roots {entries!r}: an empty entry; set LSDFLOW_DATA_ROOTS (or the data_roots "
                    f"parameter) to the absolute directories acquisitions may come from, ':'-separated"
                )
            root = Path(part)
            if not root.is_absolute():
                raise ConfigError(f"data root {part!r}: expected an absolute directory")
            if not root.is_dir():
                raise ConfigError(f"data root {part!r}: no such directory")
            roots.append(root.resolve())
    return roots


def check_inside_roots(path: str | os.PathLike, roots: list[str | os.PathLike]) -> Path:
    """`path` resolved (symlinks and `..` too), or ConfigError when it lies outside every
    data root (event payloads come from outside: a path must not point anywhere else on
    the machine). No roots: refused, never 'anything goes'."""
    if not roots:
        raise ConfigError(f"{path}: no data roots configured (LSDFLOW_DATA_ROOTS); refusing to read it")
    resolved = Path(path).resolve()
    for root in roots:
        if resolved.is_relative_to(Path(root).resolve()):
            return resolved
    raise ConfigError(f"{path}: outside the configured data roots {[str(r) for r in roots]}")
