"""Commands on data: `config`, `convert`, `export`, `view`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..core.blockwise.runner import RunSettings
from ..core.config import load_config, shipped_configs
from ..core.io.convert import convert
from ..core.io.ome_zarr_export import export_ome_zarr
from ..core.io.volumes import VolumeError, list_datasets, open_array, repair_hierarchy
from ..core.model.networks import build_model, count_parameters
from .arguments import add_config_args, config_of, positive_int


def cmd_config_show(args) -> int:
    config = config_of(args)
    if args.json:
        print(json.dumps({"config": config.model_dump(mode="json"), "derived": config.derived()}, indent=2))
        return 0
    print(f"# {config.name}: {config.description}")
    print(f"# source: {config.source}")
    print(f"# fingerprint: {config.fingerprint()}")
    for section in ("data", "model", "training", "prediction", "segmentation", "blockwise"):
        print(f"\n[{section}]")
        values = getattr(config, section).model_dump(mode="json")
        if section == "training":
            values["augment"] = config.augment.model_dump(mode="json")
        for key, value in values.items():
            print(f"{key} = {json.dumps(value)}")
    d = config.derived()
    params = count_parameters(build_model(config.model))
    print("\n# derived from the network")
    print(f"voxel size (nm)        {d['voxel_size_nm']}   anisotropic: {d['anisotropic']}")
    print(f"input  (voxels | nm)   {d['input_shape_voxels']} | {d['input_size_nm']}")
    print(f"output (voxels | nm)   {d['output_shape_voxels']} | {d['output_size_nm']}")
    print(f"context (voxels | nm)  {d['context_voxels']} | {d['context_nm']}  (per side)")
    print(f"LSD sigma (voxels)     {tuple(round(s, 2) for s in d['lsd_sigma_voxels'])}")
    print(f"parameters             {params:,} ({params * 4 / 2**20:.1f} MiB float32)")
    return 0


def cmd_config_list(args) -> int:
    for name in shipped_configs():
        config = load_config(name)
        print(f"{name:12s} {config.data.voxel_size} nm  {config.description}")
    return 0


def cmd_convert(args) -> int:
    if args.repair:  # `lsdflow convert --repair CONTAINER`: the one path is the container
        if args.output is not None:
            raise VolumeError("--repair takes one path, the Zarr container to repair")
        if not (args.source.suffix == ".zarr" or (args.source / ".zgroup").is_file()) or not list_datasets(args.source):
            raise VolumeError(f"{args.source}: not a Zarr container with arrays (expected a .zarr directory)")
        added = repair_hierarchy(args.source)
        print(f"{args.source}: added {len(added)} missing group(s)" + "".join(f"\n  {p.parent}" for p in added))
        return 0
    if args.output is None:
        raise VolumeError("convert needs an output .zarr container (or --repair CONTAINER)")
    out = convert(
        args.source,
        args.output,
        labels=args.labels,
        voxel_size=args.voxel_size,
        offset=args.offset,
        chunk_shape=tuple(args.chunk_shape),
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote {out}")
    for name in list_datasets(out):
        a = open_array(out, name)
        print(f"  {name:32s} {a.dtype!s:8s} shape {tuple(a.shape)} voxel size {tuple(a.voxel_size)} nm offset {tuple(a.offset)} nm")
    return 0


def cmd_export(args) -> int:
    summary = export_ome_zarr(
        args.volume, args.output, segmentation_datasets=args.segmentation, fragments=args.fragments,
        predictions=args.predictions, levels=args.levels, chunk=args.chunk, overwrite=args.overwrite,
        settings=RunSettings(workers=args.workers, progress=not args.quiet),
    )
    print(f"wrote {summary['output']} (OME-Zarr 0.4, {summary['levels']} level(s): "
          + ", ".join(f"{'x'.join(map(str, s))} at {'x'.join(map(str, v))} nm"
                      for s, v in zip(summary["shapes"], summary["voxel_sizes"])) + ")")
    for path, dataset in summary["images"].items():
        print(f"  {path:48s} from {dataset}")
    return 0


def cmd_view(args) -> int:
    # neuroglancer starts a web server when imported: only for this command
    from ..core.view.neuroglancer_view import open_view, screenshot

    viewer = open_view(args.volume, segmentation=args.segmentation, bind_address=args.bind, port=args.port)
    if args.screenshot:
        _, layers = screenshot(viewer, args.screenshot)
        print(f"wrote {args.screenshot} (layers: {', '.join(layers)})")
        return 0
    print(f"neuroglancer: {viewer.get_viewer_url()}", flush=True)
    print("serving until interrupted (Ctrl-C)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def add_commands(sub) -> None:
    config = sub.add_parser("config", help="inspect dataset configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print a resolved config with derived shapes")
    add_config_args(show)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_config_show)
    listing = config_sub.add_parser("list", help="list shipped configs")
    listing.set_defaults(func=cmd_config_list)

    convert = sub.add_parser(
        "convert", help="convert HDF5 (CREMI layout), TIFF or N5/Zarr into lsdflow's Zarr layout"
    )
    convert.add_argument("source", type=Path, help=".h5/.hdf5, .zarr, .n5, .tif stack or directory of .tif sections")
    convert.add_argument("output", type=Path, nargs="?", help="output .zarr container")
    convert.add_argument("--labels", type=Path, help="neuron labels in a separate file (TIFF or HDF5/Zarr)")
    convert.add_argument("--voxel-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="nm; required for TIFF")
    convert.add_argument("--offset", type=int, nargs=3, metavar=("Z", "Y", "X"), help="nm; default from the file or 0")
    convert.add_argument("--chunk-shape", type=int, nargs=3, default=(64, 64, 64), metavar=("Z", "Y", "X"))
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output")
    convert.add_argument("--repair", action="store_true",
                         help="make SOURCE, a Zarr container written without group files, a proper zarr 2 "
                              "hierarchy in place (adds the missing .zgroup files; no data is touched)")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.set_defaults(func=cmd_convert)

    export = sub.add_parser("export", help="write a container as OME-Zarr (NGFF 0.4): multiscale raw, "
                                           "segmentations under labels/, optionally predictions")
    export.add_argument("volume", type=Path, help="Zarr container (lsdflow's layout) with volumes/raw")
    export.add_argument("output", type=Path, help="OME-Zarr directory to write, e.g. volume.ome.zarr")
    export.add_argument("--segmentation", action="append", metavar="DATASET",
                        help="a segmentation to export (repeatable; default every volumes/segmentation/*/*)")
    export.add_argument("--fragments", action="store_true", help="also export volumes/fragments as a label image")
    export.add_argument("--predictions", action="store_true",
                        help="also export pred_affs and pred_lsds (images predictions/affinities, predictions/lsds)")
    export.add_argument("--levels", type=positive_int, help="pyramid levels (default: down to ~32 voxels)")
    export.add_argument("--chunk", type=positive_int, default=64, help="chunk and block edge in voxels (default 64)")
    export.add_argument("--workers", type=positive_int, default=2, help="daisy workers (default 2)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output")
    export.add_argument("--quiet", action="store_true", help="no progress bars")
    export.set_defaults(func=cmd_export)

    view = sub.add_parser("view", help="look at a container in neuroglancer: raw, predictions, fragments, "
                                       "segmentations (served from this process; prints the URL)")
    view.add_argument("volume", type=Path, help="Zarr container (lsdflow's layout) with volumes/raw")
    view.add_argument("--segmentation", metavar="DATASET",
                      help="the segmentation shown (default: the one in use: chosen label-free or the model's threshold)")
    view.add_argument("--bind", default="127.0.0.1",
                      help="address to serve on (default 127.0.0.1; 0.0.0.0 to reach it from other machines)")
    view.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    view.add_argument("--screenshot", type=Path, metavar="PNG",
                      help="instead of serving: open the view in headless Chromium, save a PNG and exit")
    view.set_defaults(func=cmd_view)
