"""Small references that tasks pass to each other instead of arrays: where a result lives
and a fingerprint of its content, so that a cache key can tell when it changed."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ..core.io.volumes import dataset_exists, dataset_fingerprint, open_array


class ArrayRef(BaseModel):
    """A Zarr dataset: container path, dataset name, ROI (nm) and content fingerprint."""

    model_config = ConfigDict(frozen=True)

    container: str
    dataset: str
    roi: str = ""
    fingerprint: str = ""

    @classmethod
    def of(cls, container, dataset: str) -> ArrayRef:
        array = open_array(container, dataset)
        return cls(container=str(Path(container).resolve()), dataset=dataset, roi=str(array.roi),
                   fingerprint=dataset_fingerprint(container, dataset))

    def current_fingerprint(self) -> str:
        if not dataset_exists(self.container, self.dataset):
            return "missing"
        return dataset_fingerprint(self.container, self.dataset)


class GraphRef(BaseModel):
    """A region graph: store URL (without credentials: those come from the environment)
    and sample; `key` identifies the fragments and agglomeration it holds."""

    model_config = ConfigDict(frozen=True)

    url: str
    sample: str
    key: str = ""


class LutsRef(BaseModel):
    """Fragment → segment lookup tables, one file per threshold."""

    model_config = ConfigDict(frozen=True)

    directory: str
    thresholds: tuple[float, ...]
    key: str
