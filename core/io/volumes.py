"""Zarr volumes in CREMI layout, with voxel size and offset in nm (funlib.persistence).

Every reader in lsdflow opens arrays through `open_array`, so a missing container, a
missing dataset or missing metadata is reported the same way everywhere: naming the
file, the dataset and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds, prepare_ds

from .atomic import partial_path, replacing

AXIS_NAMES = ["z", "y", "x"]
UNITS = ["nm", "nm", "nm"]


class VolumeError(ValueError):
    """Bad input volume: the message names the file, the dataset and what was expected."""


def dataset_exists(container: str | os.PathLike, dataset: str) -> bool:
    path = Path(container) / dataset
    return (path / ".zarray").is_file() or (path / "attributes.json").is_file()


def open_array(container: str | os.PathLike, dataset: str, mode: str = "r") -> Array:
    """Open `container/dataset` with its voxel size and offset, or raise VolumeError."""
    container = Path(container)
    if not container.exists():
        raise VolumeError(f"{container}: no such Zarr container")
    if not dataset_exists(container, dataset):
        raise VolumeError(
            f"{container}: dataset {dataset!r} not found (expected a Zarr array there; "
            f"present: {list_datasets(container)})"
        )
    attrs = zarr.open(str(container / dataset), mode="r").attrs
    if "voxel_size" not in attrs:
        raise VolumeError(
            f"{container}/{dataset}: no 'voxel_size' attribute (nm); convert the volume "
            f"with `lsdflow convert` or add voxel_size and offset attributes"
        )
    return open_ds(str(container / dataset), mode=mode)


def list_datasets(container: str | os.PathLike) -> list[str]:
    """Names of all arrays below a Zarr container."""
    root = Path(container)
    if not root.exists():
        return []
    return sorted(
        str(p.parent.relative_to(root)) for p in root.rglob(".zarray")
    )


ZGROUP = '{\n    "zarr_format": 2\n}'


def ensure_groups(container: str | os.PathLike, dataset: str) -> list[Path]:
    """Make `container` and every folder between it and `dataset` a zarr 2 group
    (a `.zgroup` file), so that readers walking the hierarchy (`zarr.open(...).tree()`,
    napari, ome-zarr tools) find the arrays; returns the groups it added."""
    root = Path(container)
    added = []
    for folder in [root, *(root / p for p in Path(dataset).parents if str(p) != ".")]:
        if not (folder / ".zgroup").is_file() and not (folder / ".zarray").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            # workers may race here: each renames its own copy of the same bytes over the file
            partial = partial_path(folder / ".zgroup")
            partial.write_text(ZGROUP)
            os.replace(partial, folder / ".zgroup")
            added.append(folder / ".zgroup")
    return added


def repair_hierarchy(container: str | os.PathLike) -> list[Path]:
    """Add the `.zgroup` files missing above any array of `container` (containers written
    before lsdflow wrote them, or by other tools); returns the groups it added."""
    added: list[Path] = []
    for dataset in list_datasets(container):
        added += ensure_groups(container, dataset)
    return added


def create_array(
    container: str | os.PathLike,
    dataset: str,
    roi: Roi,
    voxel_size: Coordinate,
    dtype,
    num_channels: int | None = None,
    chunk_shape: tuple[int, ...] | None = None,
    attrs: dict | None = None,
    mode: str = "w",
    **zarr_kwargs,
) -> Array:
    """Create a dataset covering `roi` (nm), optionally with a leading channel axis."""
    voxel_size = Coordinate(voxel_size)
    shape = tuple(roi.shape / voxel_size)
    ensure_groups(container, dataset)
    axis_names = list(AXIS_NAMES)
    if num_channels is not None:
        shape = (num_channels, *shape)
        axis_names = ["c^", *axis_names]
        if chunk_shape is not None and len(chunk_shape) == 3:
            chunk_shape = (num_channels, *chunk_shape)
    array = prepare_ds(
        str(Path(container) / dataset),
        shape=shape,
        offset=roi.offset,
        voxel_size=voxel_size,
        axis_names=axis_names,
        units=list(UNITS),
        chunk_shape=chunk_shape,
        dtype=dtype,
        mode=mode,
        custom_metadata=attrs,
        **zarr_kwargs,
    )
    return array


def voxel_slices(roi: Roi, within: Roi, voxel_size) -> tuple[slice, ...]:
    """Index of `roi` in an array that covers `within` at `voxel_size`."""
    begin = (roi.begin - within.begin) / Coordinate(voxel_size)
    return tuple(slice(b, b + s) for b, s in zip(begin, roi.shape / Coordinate(voxel_size)))


def write_array(
    container: str | os.PathLike,
    dataset: str,
    roi: Roi,
    voxel_size: Coordinate,
    data: np.ndarray,
    attrs: dict | None = None,
    chunk_shape: tuple[int, int, int] = (64, 64, 64),
) -> Path:
    """Write `data` ((c,) z, y, x) as `container/dataset` covering `roi`, all or nothing.

    The array is written under a hidden name beside its place and renamed in, so a
    failure never leaves a half-written dataset and a replaced one is never lost early."""
    container = Path(container)
    final = container / dataset
    with replacing(final) as partial:
        array = create_array(
            container, str(partial.relative_to(container)), roi, voxel_size, data.dtype,
            num_channels=data.shape[0] if data.ndim == 4 else None,
            chunk_shape=chunk_shape, attrs=attrs,
        )
        array[array.roi] = data
    return final


def _stored_entries(directory: str) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every stored file below `directory`, at any
    nesting (chunk keys with dimension_separator "/" are nested directories); hidden
    entries (metadata, lsdflow's partials and block tracking) are left out."""
    found = []
    stack = [""]
    while stack:
        relative = stack.pop()
        with os.scandir(os.path.join(directory, relative)) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                name = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append(name)
                else:
                    stat = entry.stat()
                    found.append((name, stat.st_size, stat.st_mtime_ns))
    return sorted(found)


def dataset_fingerprint(container: str | os.PathLike, dataset: str) -> str:
    """A cheap identity of a dataset's content: its metadata and, for every stored chunk
    at any nesting, the chunk's key, size and modification time (ns).

    Any rewrite of a chunk changes its mtime, so the fingerprint changes without reading
    a voxel; a listing stays cheap where reading would not (a million chunks: one
    directory walk). On an object store the same role falls to the listing's ETag or
    LastModified per key; lsdflow's containers are local or on a shared POSIX filesystem."""
    import hashlib

    path = Path(container) / dataset
    if not path.is_dir():
        raise VolumeError(f"{container}: dataset {dataset!r} not found")
    digest = hashlib.sha256()
    for meta in (".zarray", ".zattrs", "attributes.json"):
        if (path / meta).is_file():
            digest.update(meta.encode() + (path / meta).read_bytes())
    digest.update(repr(_stored_entries(str(path))).encode())
    return digest.hexdigest()[:16]


def container_identity(container: str | os.PathLike) -> str:
    """Which container this is: its resolved path. Two containers with equal names and
    metadata (copies, or the same basename in two directories) never share a key."""
    return str(Path(container).resolve())
