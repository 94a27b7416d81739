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

from .volumes import create_array, dataset_exists

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

    def complete(self) -> bool:
        """All outputs exist as final datasets made with this key."""
        for output in self.outputs:
            if not dataset_exists(self.container, output.dataset):
                return False
            attrs = zarr.open(str(self.container / output.dataset), mode="r").attrs
            if attrs.get(KEY_ATTR) != (output.key or self.key):
                return False
        return True

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
            if not dataset_exists(self.container, name):
                shutil.rmtree(self.container / name, ignore_errors=True)
                create_array(
                    self.container, name, output.roi, output.voxel_size, output.dtype,
                    num_channels=output.num_channels, chunk_shape=output.chunk_shape,
                    attrs={**output.attrs, KEY_ATTR: output.key or self.key}, fill_value=output.fill_value,
                )
            partials[output.dataset] = name
        return partials

    def commit(self) -> list[Path]:
        """Rename every partial dataset into place (replacing what was there)."""
        written = []
        for output in self.outputs:
            final = self.container / output.dataset
            partial = self.container / self.partial(output)
            shutil.rmtree(partial / ".blocks", ignore_errors=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            written.append(final)
        return written
