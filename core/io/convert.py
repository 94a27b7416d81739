"""Convert HDF5 (CREMI layout), TIFF stacks and N5/Zarr into lsdflow's Zarr layout.

Everything is checked before anything is written; the copy then streams block by block
(never a whole volume in memory) into a temporary container beside the output, which is
renamed into place only when complete. An existing output is kept unless `overwrite`,
and even then it is replaced only after the new one is complete.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import tifffile
import zarr
from funlib.geometry import Coordinate, Roi

from .acquisitions import describe
from .atomic import partial_path, remove_abandoned, swap_into_place
from .input_checks import check_not_constant
from .layout import LABELS_MASK, MITO_IDS, NEURON_IDS, RAW
from .output_lock import file_lock
from .volumes import VolumeError, create_array

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf", ".hdf5")
ROLES = {"raw": RAW, "labels": NEURON_IDS, "labels_mask": LABELS_MASK, "mito": MITO_IDS}
BLOCK_BYTES = 128 * 2**20


@dataclass
class SourceArray:
    """One input dataset: how to read a block of it and where it lies in nm."""

    role: str
    where: str  # "file:dataset", for messages and provenance
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[tuple[slice, ...]], np.ndarray]
    voxel_size: tuple[int, ...] | None = None
    offset: tuple[int, ...] | None = None
    full_planes: bool = False  # TIFF: reading part of a plane costs the whole plane
    attrs: dict = field(default_factory=dict)


def _vec(value, name: str, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    array = np.asarray(value).ravel()
    if array.size != 3:
        raise VolumeError(f"{where}: {name} must have 3 values (z, y, x), got {list(array)}")
    if not np.allclose(array, np.round(array)):
        raise VolumeError(f"{where}: {name} must be whole nm, got {list(array)}")
    return tuple(int(round(v)) for v in array)


# -- readers --------------------------------------------------------------------------


def _hierarchy_sources(path: Path, root, names: dict[str, str], is_array, read_attrs, reader):
    """Sources from an HDF5 file or a Zarr/N5 group: one per dataset name found."""
    found = []
    for role, name in names.items():
        if name not in root:
            continue
        ds = root[name]
        if not is_array(ds):
            raise VolumeError(f"{path}:{name} is a group, expected a 3D dataset")
        where = f"{path}:{name}"
        voxel_size, offset = read_attrs(dict(ds.attrs))
        found.append(
            SourceArray(
                role,
                where,
                tuple(ds.shape),
                ds.dtype,
                reader(name, ds),
                _vec(voxel_size, "voxel size attribute", where),
                _vec(offset, "offset attribute", where),
            )
        )
    return found


def _hdf5_sources(path: Path, names: dict[str, str]) -> list[SourceArray]:
    def reader(name, _ds):
        def read(slices):
            with h5py.File(path, "r") as f:
                return f[name][slices]

        return read

    with h5py.File(path, "r") as f:
        return _hierarchy_sources(
            path, f, names,
            is_array=lambda ds: isinstance(ds, h5py.Dataset),
            read_attrs=lambda attrs: (attrs.get("resolution"), attrs.get("offset")),
            reader=reader,
        )


def _zarr_sources(path: Path, names: dict[str, str]) -> list[SourceArray]:
    is_n5 = path.suffix == ".n5"
    store = zarr.N5FSStore(str(path)) if is_n5 else str(path)

    def read_attrs(attrs):
        voxel_size = attrs.get("voxel_size", attrs.get("resolution"))
        offset = attrs.get("offset")
        if is_n5 and "voxel_size" not in attrs:
            # N5 writers (gunpowder, BigDataViewer) store resolution/offset in x, y, z order
            voxel_size = voxel_size[::-1] if voxel_size is not None else None
            offset = offset[::-1] if offset is not None else None
        return voxel_size, offset

    return _hierarchy_sources(
        path, zarr.open(store, mode="r"), names,
        is_array=lambda ds: isinstance(ds, zarr.Array),
        read_attrs=read_attrs,
        reader=lambda name, ds: lambda slices: ds[slices],
    )


def _tiff_source(path: Path, role: str) -> SourceArray:
    """A multi-page TIFF file or a directory of one-section TIFF files."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)
        if not files:
            raise VolumeError(f"{path}: directory holds no .tif/.tiff files")
        first = tifffile.TiffFile(files[0])
        page = first.pages[0]
        plane_shape, dtype = tuple(page.shape), page.dtype
        first.close()
        if len(plane_shape) != 2:
            raise VolumeError(f"{files[0]}: expected one 2D section per file, found shape {plane_shape}")

        def read(slices):
            z, y, x = slices
            planes = []
            for f in files[z]:
                plane = tifffile.imread(f)
                if plane.shape != plane_shape:
                    raise VolumeError(f"{f}: section shape {plane.shape}, expected {plane_shape} like {files[0].name}")
                planes.append(plane[y, x])
            return np.stack(planes)

        return SourceArray(role, str(path), (len(files), *plane_shape), dtype, read, full_planes=True)
    with tifffile.TiffFile(path) as tif:
        # every page is a section: a page of another size or a second series would
        # otherwise be dropped silently, shifting later sections in z
        first = tuple(tif.pages[0].shape)
        for index, page in enumerate(tif.pages):
            if tuple(page.shape) != first:
                raise VolumeError(
                    f"{path}: page {index} has shape {tuple(page.shape)}, expected {first} like page 0; "
                    f"every page must be one section of the same size"
                )
        if len(tif.series) > 1:
            raise VolumeError(
                f"{path}: {len(tif.series)} image series (shapes {[tuple(s.shape) for s in tif.series]}); "
                f"expected one 3D stack (split the file, or pass a directory of sections)"
            )
        series = tif.series[0]
        shape, dtype = tuple(series.shape), series.dtype
    if len(shape) != 3:
        raise VolumeError(f"{path}: expected a 3D stack (z, y, x), found shape {shape}")

    def read(slices):
        z, y, x = slices
        with tifffile.TiffFile(path) as tif:
            pages = tif.series[0].pages
            return np.stack([pages[i].asarray()[y, x] for i in range(*z.indices(shape[0]))])

    return SourceArray(role, str(path), shape, dtype, read, full_planes=True)


def open_sources(
    source: Path,
    labels: Path | None = None,
    datasets: dict[str, str] | None = None,
) -> list[SourceArray]:
    names = {**ROLES, **(datasets or {})}
    if not source.exists():
        raise VolumeError(f"{source}: no such file or directory")
    suffix = source.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        try:
            found = _hdf5_sources(source, names)
        except OSError as e:
            raise VolumeError(f"{source}: not a readable HDF5 file ({e})") from None
    elif suffix in (".zarr", ".n5"):
        found = _zarr_sources(source, names)
    elif suffix in TIFF_SUFFIXES or source.is_dir():
        found = [_tiff_source(source, "raw")]
    else:
        raise VolumeError(
            f"{source}: unknown format; expected .h5/.hdf5 (CREMI layout), .zarr, .n5, "
            f"a .tif stack or a directory of .tif sections"
        )
    if labels is not None:
        if not labels.exists():
            raise VolumeError(f"{labels}: no such labels file or directory")
        if any(s.role == "labels" for s in found):
            raise VolumeError(f"{source} already holds {names['labels']}; do not also pass --labels")
        if labels.suffix.lower() in TIFF_SUFFIXES or labels.is_dir():
            found.append(_tiff_source(labels, "labels"))
        else:
            extra = open_sources(labels, datasets={"raw": "__none__", **(datasets or {})})
            found += [s for s in extra if s.role == "labels"]
            if not any(s.role == "labels" for s in found):
                raise VolumeError(f"{labels}: dataset {names['labels']!r} not found")
    if not any(s.role == "raw" for s in found):
        raise VolumeError(f"{source}: raw dataset {names['raw']!r} not found (expected CREMI layout)")
    return found


# -- checks ---------------------------------------------------------------------------


@dataclass
class ConversionPlan:
    arrays: list[SourceArray]
    voxel_size: Coordinate
    rois: dict[str, Roi]
    derive_mask: bool


def plan_conversion(
    arrays: list[SourceArray],
    voxel_size: Sequence[int] | None = None,
    offset: Sequence[int] | None = None,
) -> ConversionPlan:
    """Check every input and fix voxel size and ROIs; raises VolumeError on bad input."""
    by_role = {a.role: a for a in arrays}
    raw = by_role["raw"]
    override_vs = _vec(voxel_size, "--voxel-size", "command line")
    override_offset = _vec(offset, "--offset", "command line")
    rois = {}
    common_vs = None
    for a in arrays:
        if len(a.shape) != 3:
            raise VolumeError(f"{a.where}: expected 3 dimensions (z, y, x), found shape {a.shape}")
        if 0 in a.shape:
            raise VolumeError(f"{a.where}: empty dataset (shape {a.shape}); expected voxels along z, y and x")
        if a.role != "raw" and not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise VolumeError(
                f"{a.where}: {a.role} must be an integer label volume, found dtype {a.dtype}"
            )
        if a.role == "raw" and not (np.issubdtype(a.dtype, np.number)):
            raise VolumeError(f"{a.where}: raw must be numeric, found dtype {a.dtype}")
        vs = override_vs or a.voxel_size or (raw.voxel_size if a is not raw else None)
        if vs is None:
            raise VolumeError(
                f"{a.where}: no voxel size (no 'resolution' attribute); pass --voxel-size Z Y X in nm"
            )
        if any(v <= 0 for v in vs):
            raise VolumeError(f"{a.where}: voxel size must be positive in nm, got {vs}")
        if common_vs is not None and vs != common_vs:
            raise VolumeError(
                f"{a.where}: voxel size {vs} differs from raw's {common_vs}; resample first"
            )
        common_vs = vs
        off = override_offset or a.offset or (0, 0, 0)
        if any(o % v for o, v in zip(off, vs)):
            raise VolumeError(f"{a.where}: offset {off} nm is not a multiple of the voxel size {vs}")
        rois[a.role] = Roi(off, Coordinate(a.shape) * Coordinate(vs))
    for role, roi in rois.items():
        if role != "raw" and not rois["raw"].contains(roi):
            raise VolumeError(
                f"{by_role[role].where}: its ROI {roi} (nm) lies outside raw's ROI {rois['raw']}"
            )
    derive = "labels" in by_role and "labels_mask" not in by_role
    if derive:
        rois["labels_mask"] = rois["labels"]
    return ConversionPlan(arrays, Coordinate(common_vs), rois, derive)


# -- copy -----------------------------------------------------------------------------


def _block_shape(shape, chunk, itemsize: int, full_planes: bool) -> tuple[int, ...]:
    """Chunk-aligned blocks of at most BLOCK_BYTES (whole planes for TIFF sources)."""
    block = list(min(c, s) for c, s in zip(chunk, shape))
    if full_planes:
        block[1:] = shape[1:]
        return tuple(block)
    for axis in (2, 1, 0):
        while block[axis] < shape[axis] and np.prod(block) * itemsize * 2 <= BLOCK_BYTES:
            block[axis] = min(block[axis] * 2, shape[axis])
    return tuple(block)


def _out_dtype(a: SourceArray) -> np.dtype:
    if a.role in ("labels", "mito"):
        return np.dtype(np.uint64)
    if a.role == "labels_mask":
        return np.dtype(np.uint8)
    return np.dtype(a.dtype)


def _copy(a: SourceArray, target, block_shape, progress) -> None:
    shape = a.shape
    starts = [range(0, s, b) for s, b in zip(shape, block_shape)]
    low, high = np.inf, -np.inf
    for start in itertools.product(*starts):
        slices = tuple(slice(s, min(s + b, n)) for s, b, n in zip(start, block_shape, shape))
        try:
            data = np.asarray(a.read(slices))
        except VolumeError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError) as e:  # e.g. a corrupt compressed chunk
            where = ", ".join(f"{s.start}:{s.stop}" for s in slices)
            raise VolumeError(f"{a.where}: cannot read voxels [{where}] (z, y, x): {str(e).splitlines()[0]}") from None
        if a.role == "raw" and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            raise VolumeError(f"{a.where}: NaN or infinite intensities near voxel {start}; expected finite values")
        if a.role != "raw" and np.issubdtype(data.dtype, np.signedinteger) and data.min() < 0:
            raise VolumeError(f"{a.where}: negative label ids found near voxel {start}")
        target[slices] = data.astype(_out_dtype(a), copy=False)
        if progress is not None:
            progress.update(int(np.prod([s.stop - s.start for s in slices])))
        if a.role == "raw" and data.size:
            low, high = min(low, float(data.min())), max(high, float(data.max()))
    if a.role == "raw":
        check_not_constant(low, high, a.where)


def convert(
    source: str | os.PathLike,
    output: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    voxel_size: Sequence[int] | None = None,
    offset: Sequence[int] | None = None,
    chunk_shape: Sequence[int] = (64, 64, 64),
    datasets: dict[str, str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert `source` (+ optional separate `labels`) into a Zarr container at `output`."""
    source, output = Path(source), Path(output)
    if output.suffix != ".zarr":
        raise VolumeError(f"{output}: the output must be a .zarr container")
    if output.exists() and not overwrite:
        raise VolumeError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it")
    plan = plan_conversion(open_sources(source, Path(labels) if labels else None, datasets), voxel_size, offset)

    output.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(output)
    partial = partial_path(output)
    shutil.rmtree(partial, ignore_errors=True)
    total = sum(int(np.prod(a.shape)) for a in plan.arrays)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"convert {source.name}", unit="vox", unit_scale=True)
    try:
        zarr.open_group(str(partial), mode="w")
        for a in plan.arrays:
            chunk = tuple(min(c, s) for c, s in zip(chunk_shape, a.shape))
            attrs = {"source": a.where, "converted_by": "lsdflow convert"}
            target = create_array(
                partial, ROLES[a.role], plan.rois[a.role], plan.voxel_size, _out_dtype(a),
                chunk_shape=chunk, attrs=attrs,
            )
            block = _block_shape(a.shape, chunk, _out_dtype(a).itemsize, a.full_planes)
            _copy(a, target._source_data, block, bar)
        if plan.derive_mask:
            roi = plan.rois["labels_mask"]
            shape = tuple(roi.shape / plan.voxel_size)
            # dense ground truth is valid everywhere it is defined: a mask of ones,
            # stored as zarr's fill value (no chunks written)
            create_array(
                partial, LABELS_MASK, roi, plan.voxel_size, np.uint8,
                chunk_shape=tuple(min(c, s) for c, s in zip(chunk_shape, shape)),
                attrs={"derived_from": NEURON_IDS, "converted_by": "lsdflow convert"},
                fill_value=1,
            )
        # what the container was made from: `convert_if_changed` compares it
        zarr.open_group(str(partial), mode="a").attrs[CONVERSION_KEY] = conversion_key(
            source, labels, voxel_size, offset, chunk_shape, datasets)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    swap_into_place(partial, output)
    return output


CONVERSION_KEY = "lsdflow_conversion_key"


def conversion_key(source, labels=None, voxel_size=None, offset=None, chunk_shape=(64, 64, 64),
                   datasets=None) -> str:
    """The sources' content (names, sizes, mtimes of their files) and every setting."""
    import hashlib
    import json

    parts = [describe(source, None).fingerprint, describe(labels, None).fingerprint if labels else None,
             *(list(v) if v is not None else None for v in (voxel_size, offset, chunk_shape)), datasets]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def convert_if_changed(source: str | os.PathLike, output: str | os.PathLike, **kwargs) -> Path:
    """`convert(..., overwrite=True)` unless `output` already holds a conversion of the same
    sources with the same settings. Under a lock beside `output`, so that two runs on one
    acquisition convert it once and neither replaces a container the other works in."""
    output = Path(output)
    with file_lock(output.parent / f".{output.name}.convert.lock", f"converting into {output}"):
        key = conversion_key(source, kwargs.get("labels"), kwargs.get("voxel_size"), kwargs.get("offset"),
                             kwargs.get("chunk_shape", (64, 64, 64)), kwargs.get("datasets"))
        if output.is_dir() and (output / ".zattrs").is_file():
            if zarr.open_group(str(output), mode="r").attrs.get(CONVERSION_KEY) == key:
                return output
        return convert(source, output, overwrite=True, **kwargs)
