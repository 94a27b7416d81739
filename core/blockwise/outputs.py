"""What a blockwise stage writes, and its record of completion: Zarr datasets written beside
their place and renamed in when complete, and tables of the region graph store.

A blockwise stage writes block by block for a long time. Writing into the final dataset
would leave a half-new, half-old array whenever a run stops part-way. Instead each output
is written to a hidden `.<name>.partial-<key>` dataset (key = what the stage depends on),
the stage's block tracking lives inside it, and only a complete run renames it in. So:

- a rerun with the same key resumes the partial dataset and its tracking;
- a rerun with another key (new model, new parameters) starts a fresh partial dataset
  and leaves the old result in place until the new one is complete;
- a final dataset carrying the same key is complete: the stage has nothing to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import zarr
from funlib.geometry import Coordinate, Roi

from ..io.atomic import partial_path, remove_abandoned, swap_into_place
from ..io.graphstore import open_graph_store
from ..io.volumes import create_array, dataset_exists, dataset_fingerprint

KEY_ATTR = "lsdflow_stage_key"


def stage_key(**inputs) -> str:
    """A short hash of everything a stage's result depends on (JSON-serialisable)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ArrayOutput:
    """A Zarr dataset a stage writes. It is written as `.<name>.partial-<key>` beside its
    place and renamed in only when complete, carrying the key in its attributes (written
    with its metadata, in one rename): its record of completion."""

    dataset: str
    roi: Roi
    voxel_size: Coordinate
    dtype: str
    chunk_shape: tuple[int, int, int]  # voxels; blocks must be unions of chunks
    num_channels: int | None = None
    attrs: dict = field(default_factory=dict)
    fill_value: int | float = 0
    key: str | None = None  # this output's own key, when outputs of one run differ
    container: str = ""  # set by the runner

    def record_key(self, key: str) -> str:
        return self.key or key

    def partial(self, key: str) -> str:
        final = Path(self.dataset)
        return str(final.parent / f".{final.name}.partial-{key}")

    def tracking_dir(self, key: str) -> Path:
        return Path(self.container) / self.partial(key) / ".blocks"

    def _has_key(self, dataset: str, key: str) -> bool:
        if not dataset_exists(self.container, dataset):
            return False
        try:
            attrs = zarr.open(str(Path(self.container) / dataset), mode="r").attrs.asdict()
        except (ValueError, KeyError, OSError):  # unreadable metadata: not ours, not complete
            return False
        return attrs.get(KEY_ATTR) == key

    def complete(self, key: str) -> bool:
        """The final dataset exists, made with this key. The final name is only ever reached
        by renaming a finished partial (`commit`), so a killed run can never satisfy this."""
        return self._has_key(self.dataset, self.record_key(key))

    def prepare(self, key: str) -> str:
        """Create (or keep, to resume) the partial dataset; remove partials of other keys.
        Returns the partial's name: what the stage writes."""
        container = Path(self.container)
        final = container / self.dataset
        final.parent.mkdir(parents=True, exist_ok=True)
        name = self.partial(key)
        for stale in final.parent.glob(f".{final.name}.partial-*"):
            if stale.name != Path(name).name:
                shutil.rmtree(stale, ignore_errors=True)
        if not self._has_key(name, self.record_key(key)):
            # created under a temporary name and renamed in: a kill part-way through
            # never leaves a partial dataset without its metadata and key
            shutil.rmtree(container / name, ignore_errors=True)
            remove_abandoned(container / name)
            creating = partial_path(container / name)
            create_array(
                container, str(creating.relative_to(container)), self.roi, self.voxel_size,
                self.dtype, num_channels=self.num_channels, chunk_shape=self.chunk_shape,
                attrs={**self.attrs, KEY_ATTR: self.record_key(key)}, fill_value=self.fill_value,
            )
            os.replace(creating, container / name)
        return name

    def commit(self, key: str) -> Path:
        """Rename the partial into place (replacing what was there)."""
        partial = Path(self.container) / self.partial(key)
        shutil.rmtree(partial / ".blocks", ignore_errors=True)
        return swap_into_place(partial, Path(self.container) / self.dataset)

    def fingerprint(self, key: str) -> str | None:
        return committed_fingerprint(self.container, {self.dataset: self.record_key(key)})


@dataclass
class GraphOutput:
    """A table of the region graph store (`nodes`, `edges/<merge function>`): rows are
    written block by block; `<table>_key` in the store's meta says which key the rows belong
    to (set when a new key starts the table afresh), `<table>_complete` is its record of
    completion, written last. Starting a table afresh clears the tables derived from it."""

    graph_url: str
    sample: str
    table: str  # "nodes" or "edges/<merge function>"
    derived: tuple[str, ...] = ()  # tables cleared with this one ("edges/*": every merge function)
    container: str = ""
    fresh: bool = False  # set by `prepare` when the table was started afresh: blocks done before are void

    def _store(self):
        return open_graph_store(self.graph_url, self.sample)

    def complete(self, key: str) -> bool:
        with self._store() as store:
            return store.get_meta(f"{self.table}_complete") == key

    def prepare(self, key: str) -> None:
        with self._store() as store:
            self.fresh = store.get_meta(f"{self.table}_key") != key
            if self.fresh:
                for table in (self.table, *self.derived):
                    _clear(store, table)
                store.set_meta(f"{self.table}_complete", None)
                store.set_meta(f"{self.table}_key", key)

    def commit(self, key: str) -> None:
        with self._store() as store:
            store.set_meta(f"{self.table}_complete", key)  # last: a killed stage is redone

    def fingerprint(self, key: str) -> str | None:
        return key if self.complete(key) else None


def _clear(store, table: str) -> None:
    if table == "nodes":
        store.clear_nodes()
    elif table == "statistics":
        store.clear_statistics()
    elif table == "edges/*":
        for merge_function in store.merge_functions():
            store.clear_edges(merge_function)
            store.set_meta(f"edges/{merge_function}_complete", None)
            store.set_meta(f"edges/{merge_function}_key", None)
    elif table.startswith("edges/"):
        store.clear_edges(table.split("/", 1)[1])
    else:
        raise ValueError(f"unknown region graph table {table!r}")


def committed_fingerprint(container: str | os.PathLike, outputs: dict[str, str | None]) -> str | None:
    """A fingerprint of the committed datasets `outputs` (dataset -> the key it must have
    been made with, or None for any), or None when any is missing, partial or from another
    key. Cache layers add
    it to their keys, so that a cached result whose outputs were since deleted, replaced
    or rewritten is never handed back."""
    container = Path(container)
    parts = []
    for dataset, key in sorted(outputs.items()):
        if not dataset_exists(container, dataset):
            return None
        try:
            attrs = zarr.open(str(container / dataset), mode="r").attrs.asdict()
        except (ValueError, KeyError, OSError):
            return None
        if key is not None and attrs.get(KEY_ATTR) != key:
            return None
        parts.append(f"{dataset}:{dataset_fingerprint(container, dataset)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
