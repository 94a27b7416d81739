"""Output arrays of a blockwise stage: written beside their place, renamed in when complete.

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

from .atomic import partial_path, remove_abandoned, swap_into_place
from .volumes import create_array, dataset_exists, dataset_fingerprint

KEY_ATTR = "lsdflow_stage_key"


def stage_key(**inputs) -> str:
    """A short hash of everything a stage's result depends on (JSON-serialisable)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class OutputArray:
    dataset: str
    roi: Roi
    voxel_size: Coordinate
    dtype: str
    chunk_shape: tuple[int, int, int]  # voxels; blocks must be unions of chunks
    num_channels: int | None = None
    attrs: dict = field(default_factory=dict)
    fill_value: int | float = 0
    key: str | None = None  # this output's own key, when outputs of one run differ


class StagedArrays:
    """The output arrays of one stage run, identified by `key`."""

    def __init__(self, container: str | os.PathLike, outputs: list[OutputArray], key: str):
        self.container = Path(container)
        self.outputs = outputs
        self.key = key

    def partial(self, output: OutputArray) -> str:
        final = Path(output.dataset)
        return str(final.parent / f".{final.name}.partial-{self.key}")

    @property
    def tracking_dir(self) -> Path:
        return self.container / self.partial(self.outputs[0]) / ".blocks"

    def _has_key(self, dataset: str, output: OutputArray) -> bool:
        """`dataset` exists, whole (its key attribute is written with its metadata, in
        one rename), and was made for this output's key."""
        if not dataset_exists(self.container, dataset):
            return False
        try:
            attrs = zarr.open(str(self.container / dataset), mode="r").attrs.asdict()
        except (ValueError, KeyError, OSError):  # unreadable metadata: not ours, not complete
            return False
        return attrs.get(KEY_ATTR) == (output.key or self.key)

    def complete(self) -> bool:
        """All outputs exist as final datasets made with this key. The final name is only
        ever reached by renaming a finished partial (`commit`), so a killed run can never
        satisfy this."""
        return all(self._has_key(output.dataset, output) for output in self.outputs)

    def prepare(self) -> dict[str, str]:
        """Create (or keep, to resume) the partial datasets; remove partials of other keys.
        Returns final dataset -> partial dataset."""
        partials = {}
        for output in self.outputs:
            final = self.container / output.dataset
            final.parent.mkdir(parents=True, exist_ok=True)
            name = self.partial(output)
            for stale in final.parent.glob(f".{final.name}.partial-*"):
                if stale.name != Path(name).name:
                    shutil.rmtree(stale, ignore_errors=True)
            if not self._has_key(name, output):
                # created under a temporary name and renamed in: a kill part-way through
                # never leaves a partial dataset without its metadata and key
                shutil.rmtree(self.container / name, ignore_errors=True)
                remove_abandoned(self.container / name)
                creating = partial_path(self.container / name)
                create_array(
                    self.container, str(creating.relative_to(self.container)), output.roi, output.voxel_size,
                    output.dtype, num_channels=output.num_channels, chunk_shape=output.chunk_shape,
                    attrs={**output.attrs, KEY_ATTR: output.key or self.key}, fill_value=output.fill_value,
                )
                os.replace(creating, self.container / name)
            partials[output.dataset] = name
        return partials

    def commit(self) -> list[Path]:
        """Rename every partial dataset into place (replacing what was there). A kill
        between two outputs leaves the stage incomplete: the rerun recomputes it."""
        written = []
        for output in self.outputs:
            final = self.container / output.dataset
            partial = self.container / self.partial(output)
            shutil.rmtree(partial / ".blocks", ignore_errors=True)
            written.append(swap_into_place(partial, final))
        return written


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
