"""The `lsdflow` command line."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path

from .config import ConfigError, load_config, shipped_configs
from .blockwise import BlockwiseError
from .input_checks import ModelFileError
from .graphstore import GraphStoreError
from .volumes import VolumeError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config name (e.g. gala) or path to a TOML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config value (TOML syntax), e.g. --set training.iterations=100",
    )
    parser.add_argument("--workspace", help="where checkpoints and outputs go (default ./workspace/<name>)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _config(args):
    return load_config(args.config, args.overrides, args.workspace)


def cmd_config_show(args) -> int:
    config = _config(args)
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
    from .models import build_model, count_parameters

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
    from .convert import convert
    from .volumes import list_datasets, repair_hierarchy

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
    from .volumes import list_datasets, open_array

    print(f"wrote {out}")
    for name in list_datasets(out):
        a = open_array(out, name)
        print(f"  {name:32s} {a.dtype!s:8s} shape {tuple(a.shape)} voxel size {tuple(a.voxel_size)} nm offset {tuple(a.offset)} nm")
    return 0


def cmd_train(args) -> int:
    from .checkpoints import export_model
    from .train import train

    config = _config(args)
    print(f"training {config.name} ({config.model.kind}) in {config.resolved_workspace}")
    result = train(config, iterations=args.iterations, device=args.device, progress=not args.quiet,
                   init_from=args.init_from)
    print(
        f"iteration {result.iteration}: checkpoint {result.checkpoint} "
        f"({result.iterations_per_second:.2f} it/s on {result.device})"
    )
    if args.export:
        out = export_model(result.checkpoint, config, args.export, result.iteration)
        print(f"exported model to {out}")
    from .plots import plot_training_log

    png = plot_training_log(config.resolved_workspace / "training_log.csv")
    if png:
        print(f"loss curve: {png}")
    return 0


def _run_settings(args, config):
    from .blockwise import RunSettings

    bw = config.blockwise
    return RunSettings(
        workers=args.workers if args.workers is not None else bw.workers, retries=bw.retries, block_timeout_s=bw.block_timeout_s,
        launcher=bw.launcher, progress=not getattr(args, "quiet", False),
    )


def _print_stage(summary: dict) -> None:
    if summary.get("up_to_date"):
        print(f"{summary['stage']:>13}: up to date")
        return
    if "blocks" in summary:
        print(
            f"{summary['stage']:>13}: {summary['blocks']} blocks, {summary['processed']} processed, "
            f"{summary['resumed']} resumed, {summary['skipped']} skipped (empty), "
            f"{summary['workers']} worker(s), {summary['seconds']:.1f} s"
        )
    else:
        print(f"{summary['stage']:>13}: " + ", ".join(f"{k} {v}" for k, v in summary.items() if k != "stage"))


def cmd_predict(args) -> int:
    return predict_command(args, _config(args), args.model)


def predict_command(args, config, model_file, extra_attrs: dict | None = None) -> int:
    """`lsdflow predict` with the model already chosen (a file; the platform CLI resolves
    registered models and passes their lineage as `extra_attrs`)."""
    from .predict import predict_volume
    from .volumes import open_array

    dtype = "float32" if args.float32 else None
    if args.blockwise:
        from .blockwise_predict import predict_blockwise

        if args.output:
            raise ConfigError("--output is not supported with --blockwise: outputs go into the volume's container")
        result = predict_blockwise(
            config, args.volume, model_file=model_file, output_dtype=dtype,
            settings=_run_settings(args, config), device=args.device, extra_attrs=extra_attrs,
        )
        _print_stage(result["stage"])
        written = {p.name: p for p in result["written"]}
    else:
        written = predict_volume(
            config, args.volume, model_file=model_file, output=args.output,
            output_dtype=dtype, device=args.device, progress=not args.quiet, extra_attrs=extra_attrs,
        )
    for path in written.values():
        a = open_array(path.parent.parent, f"volumes/{path.name}")
        print(f"wrote {path}: {a.dtype} shape {tuple(a.shape)} voxel size {tuple(a.voxel_size)} nm offset {tuple(a.offset)} nm")
    return 0


def cmd_segment(args) -> int:
    from .segment import segment_volume
    from .threshold_selection import candidate_thresholds, choose_and_record, describe_choice

    config = _config(args)
    seg = config.segmentation
    thresholds = args.thresholds or candidate_thresholds(args.volume, args.affs, config)
    if args.blockwise:
        from .blockwise_segment import segment_blockwise

        result = segment_blockwise(config, args.volume, args.affs, graph_url=args.graph, thresholds=thresholds,
                                   settings=_run_settings(args, config))
        for summary in result["stages"].values():
            _print_stage(summary)
        print(f"region graph: {result['graph']}")
        written = [str(path) for path in result["segmentations"].values()]
    else:
        if args.graph:
            raise ConfigError("--graph needs --blockwise (the in-memory path keeps no region graph)")
        result = segment_volume(
            args.volume, args.affs, thresholds=thresholds,
            merge_function=seg.merge_function, fragments_in_xy=config.fragments_in_xy(),
            min_seed_distance=seg.min_seed_distance, filter_fragments=seg.filter_fragments,
        )
        written = [f"{args.volume}/{dataset}" for dataset in result["written"]]
    for path in written:
        print(f"wrote {path}")
    choice = choose_and_record(args.volume, config, thresholds, args.affs)
    if choice is not None:
        print(describe_choice(choice))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_volume, format_scores

    config = _config(args)
    report = evaluate_volume(
        args.volume, merge_function=config.segmentation.merge_function,
        labels_dataset=config.data.labels_dataset, out_dir=args.out,
    )
    print(format_scores(report))
    print(f"report: {report['json']}")
    for picture in report["pictures"]:
        print(f"picture: {picture}")
    return 0


def run_selection(args, config) -> dict:
    """`select-checkpoint`: score, print the table and what to change in the config."""
    from .checkpoint_selection import candidate_name, format_selection, segmentation_grid, select_checkpoint

    augmentations = {"config": None, "off": (False,), "on": (True,), "both": (False, True)}[args.test_time_augmentation]
    result = select_checkpoint(
        config, args.checkpoints or config.checkpoint_dir,
        grid=segmentation_grid(config, args.merge_functions, args.min_seed_distances),
        first=args.first, every=args.every, out_dir=args.out, progress=not args.quiet, augmentations=augmentations,
        average=args.average,
    )
    print(format_selection(result))
    best = result["best"]
    print(f"best on {result['volume']}: {candidate_name(best)} ({best['checkpoint']}), "
          f"threshold {best['threshold']:g}, VOI sum {best['voi_sum']:.3f}, ARAND {best['arand']:.3f}")
    settings = {
        "prediction.test_time_augmentation": (config.prediction.test_time_augmentation, best["test_time_augmentation"]),
        "segmentation.merge_function": (config.segmentation.merge_function, best["merge_function"]),
        "segmentation.min_seed_distance": (config.segmentation.min_seed_distance, best["min_seed_distance"]),
    }
    changes = [f"{key} = {json.dumps(new)}" for key, (old, new) in settings.items() if old != new]
    if changes:
        print("its settings differ from the config's; set " + ", ".join(changes))
    print(f"report: {result['json']}\npicture: {result['picture']}")
    return result


def cmd_select_checkpoint(args) -> int:
    run_selection(args, _config(args))
    return 0


def cmd_export(args) -> int:
    from .blockwise import RunSettings
    from .ome_zarr_export import export_ome_zarr

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
    import time

    from .neuroglancer_view import open_view, screenshot

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


def cmd_demo(args) -> int:
    from .demo import format_report, run_demo

    config = load_config("gala", args.overrides, args.workspace)
    report = run_demo(config, retrain=args.train, iterations=args.iterations, progress=not args.quiet)
    print(format_report(report))
    return 0


def build_parser(extend=None) -> argparse.ArgumentParser:
    """The core commands; `extend(subparsers, parsers)` lets the platform layer add its own
    commands and replace handlers (flows/cli.py adds the MLflow registry)."""
    parser = argparse.ArgumentParser(
        prog="lsdflow", description="Neuron segmentation of EM volumes with Local Shape Descriptors"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="inspect dataset configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print a resolved config with derived shapes")
    _add_config_args(show)
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

    train = sub.add_parser("train", help="train a model with gunpowder (resumes from the newest checkpoint)")
    _add_config_args(train)
    train.add_argument("--iterations", type=int, help="total iterations (default from config)")
    train.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    train.add_argument("--export", type=Path, help="also write a portable model file here")
    train.add_argument("--init-from", metavar="MODEL",
                       help="start a new run from this model's weights (a model file; with the registry, "
                            "also models:/NAME@ALIAS or @ALIAS), e.g. to fine-tune on new data")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    predict = sub.add_parser("predict", help="predict affinities/LSDs (in memory, or --blockwise for any size)")
    _add_config_args(predict)
    predict.add_argument("volume", type=Path, help="Zarr container with volumes/raw")
    predict.add_argument("--model", help="model file (default: prediction.checkpoint of the config)")
    predict.add_argument("--output", type=Path, help="Zarr container to write to (default: the input)")
    predict.add_argument("--float32", action="store_true", help="write float32 instead of uint8")
    predict.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.add_argument("--blockwise", action="store_true", help="block by block with daisy (any volume size)")
    predict.add_argument("--workers", type=_positive_int, help="daisy workers (default blockwise.workers)")
    predict.set_defaults(func=cmd_predict)

    segment = sub.add_parser("segment", help="fragments + waterz agglomeration (in memory, or --blockwise)")
    _add_config_args(segment)
    segment.add_argument("volume", type=Path, help="Zarr container with predicted affinities")
    segment.add_argument("--affs", default="volumes/pred_affs", help="affinities dataset")
    segment.add_argument("--thresholds", type=float, nargs="+", help="default from the config")
    segment.add_argument("--blockwise", action="store_true", help="block by block with daisy (any volume size)")
    segment.add_argument("--graph", help="region graph URL: sqlite:///path.db (default beside the Zarr) or mongodb://host:port/db")
    segment.add_argument("--workers", type=_positive_int, help="daisy workers (default blockwise.workers)")
    segment.add_argument("--quiet", action="store_true", help="no progress bars")
    segment.set_defaults(func=cmd_segment)

    evaluate = sub.add_parser("evaluate", help="VOI and ARAND of every segmentation against the labels")
    _add_config_args(evaluate)
    evaluate.add_argument("volume", type=Path, help="Zarr container with segmentations and labels")
    evaluate.add_argument("--out", type=Path, help="report directory (default <volume>_evaluation beside it)")
    evaluate.set_defaults(func=cmd_evaluate)

    select = sub.add_parser("select-checkpoint", help="score a run's checkpoints (and segmentation settings) on validation data")
    _add_config_args(select)
    select.add_argument("--checkpoints", type=Path, help="directory of model_checkpoint_N (default: the workspace's)")
    select.add_argument("--first", type=int, default=0, help="skip checkpoints before this iteration")
    select.add_argument("--every", type=int, default=1, help="score every n-th checkpoint (the last one always)")
    select.add_argument("--merge-functions", nargs="+", metavar="NAME", help="alternatives to segmentation.merge_function")
    select.add_argument("--min-seed-distances", type=int, nargs="+", metavar="VOXELS",
                        help="alternatives to segmentation.min_seed_distance")
    select.add_argument("--test-time-augmentation", choices=["config", "off", "on", "both"], default="config",
                        help="predict with/without averaging over mirrorings (default: the config's setting)")
    select.add_argument("--average", type=int, default=0, metavar="N",
                        help="also score each checkpoint's weights averaged with the N-1 before it")
    select.add_argument("--out", type=Path, help="report directory (default <workspace>/checkpoint_selection)")
    select.add_argument("--quiet", action="store_true")
    select.set_defaults(func=cmd_select_checkpoint)

    export = sub.add_parser("export", help="write a container as OME-Zarr (NGFF 0.4): multiscale raw, "
                                           "segmentations under labels/, optionally predictions")
    export.add_argument("volume", type=Path, help="Zarr container (lsdflow's layout) with volumes/raw")
    export.add_argument("output", type=Path, help="OME-Zarr directory to write, e.g. volume.ome.zarr")
    export.add_argument("--segmentation", action="append", metavar="DATASET",
                        help="a segmentation to export (repeatable; default every volumes/segmentation/*/*)")
    export.add_argument("--fragments", action="store_true", help="also export volumes/fragments as a label image")
    export.add_argument("--predictions", action="store_true",
                        help="also export pred_affs and pred_lsds (images predictions/affinities, predictions/lsds)")
    export.add_argument("--levels", type=_positive_int, help="pyramid levels (default: down to ~32 voxels)")
    export.add_argument("--chunk", type=_positive_int, default=64, help="chunk and block edge in voxels (default 64)")
    export.add_argument("--workers", type=_positive_int, default=2, help="daisy workers (default 2)")
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

    demo = sub.add_parser("demo", help="the shipped pretrained MTLSD on the real gala test volume")
    demo.add_argument("--train", action="store_true", help="retrain from scratch first")
    demo.add_argument("--iterations", type=int, help="iterations when retraining (default from config)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    demo.add_argument("--workspace", help="where outputs go (default ./workspace/gala)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
    if extend is not None:
        extend(sub, {"train": train, "predict": predict, "segment": segment, "demo": demo, "select-checkpoint": select})
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or build_parser()).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ConfigError, VolumeError, ModelFileError, FileNotFoundError, GraphStoreError, BlockwiseError) as e:
        print(f"lsdflow: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in STORAGE_ERRORS:
            raise
        # a full disk, a quota, a read-only mount: every write goes beside its output and
        # is renamed in only when complete, so what was there before is intact
        print(f"lsdflow: error: {e.filename or ''}: {e.strerror}; nothing written before was changed",
              file=sys.stderr)
        return 2


STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


if __name__ == "__main__":
    sys.exit(main())
