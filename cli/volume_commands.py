"""Commands on one volume: `predict`, `segment`, `evaluate`."""

from __future__ import annotations

from pathlib import Path

from ..core.evaluate.scores import evaluate_volume, format_scores
from ..core.io.volumes import open_array
from ..core.predict.blockwise import predict_blockwise, predict_volume
from ..core.segment.blockwise import segment_blockwise, segment_volume
from ..core.segment.threshold_selection import (
    candidate_thresholds,
    choose_and_record,
    describe_choice,
)
from .arguments import (
    add_config_args,
    config_of,
    positive_int,
    print_stage,
    resolve_model_reference,
    run_settings,
)


def cmd_predict(args) -> int:
    config = config_of(args)
    model_file, lineage, described = resolve_model_reference(args.model, config)
    print(f"model: {described}")
    dtype = "float32" if args.float32 else None
    if args.blockwise:
        result = predict_blockwise(
            config, args.volume, model_file=model_file, output_dtype=dtype,
            settings=run_settings(args, config), device=args.device, extra_attrs=lineage, output=args.output,
        )
        print_stage(result["stage"])
        written = {p.name: p for p in result["written"]}
    else:
        written = predict_volume(
            config, args.volume, model_file=model_file, output=args.output,
            output_dtype=dtype, device=args.device, progress=not args.quiet, extra_attrs=lineage,
        )
    for path in written.values():
        a = open_array(path.parent.parent, f"volumes/{path.name}")
        print(f"wrote {path}: {a.dtype} shape {tuple(a.shape)} voxel size {tuple(a.voxel_size)} nm offset {tuple(a.offset)} nm")
    return 0


def cmd_segment(args) -> int:
    config = config_of(args)
    thresholds = args.thresholds or candidate_thresholds(args.volume, args.affs, config)
    if args.blockwise:
        result = segment_blockwise(config, args.volume, args.affs, graph_url=args.graph, thresholds=thresholds,
                                   settings=run_settings(args, config))
    else:  # the same stages, the volume as one block, in this process
        result = segment_volume(config, args.volume, args.affs, thresholds, graph_url=args.graph)
    for summary in result["stages"].values():
        print_stage(summary)
    print(f"region graph: {result['graph']}")
    for path in result["segmentations"].values():
        print(f"wrote {path}")
    choice = choose_and_record(args.volume, config, thresholds, args.affs)
    if choice is not None:
        print(describe_choice(choice))
    return 0


def cmd_evaluate(args) -> int:
    config = config_of(args)
    report = evaluate_volume(
        args.volume, merge_function=config.segmentation.merge_function,
        labels_dataset=config.data.labels_dataset, out_dir=args.out,
    )
    print(format_scores(report))
    print(f"report: {report['json']}")
    for picture in report["pictures"]:
        print(f"picture: {picture}")
    return 0


def add_commands(sub) -> None:
    predict = sub.add_parser("predict", help="predict affinities/LSDs (in memory, or --blockwise for any size)")
    add_config_args(predict)
    predict.add_argument("volume", type=Path, help="Zarr container with volumes/raw")
    predict.add_argument("--model", help="model file, or registered model: models:/<name>@<alias>, models:/<name>/<version>, "
                         "@champion (default: prediction.model, else prediction.checkpoint of the config)")
    predict.add_argument("--output", type=Path, help="Zarr container to write to (default: the input)")
    predict.add_argument("--float32", action="store_true", help="write float32 instead of uint8")
    predict.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.add_argument("--blockwise", action="store_true", help="block by block with daisy (any volume size)")
    predict.add_argument("--workers", type=positive_int, help="daisy workers (default blockwise.workers)")
    predict.set_defaults(func=cmd_predict)

    segment = sub.add_parser("segment", help="fragments + agglomeration (in this process, or --blockwise with daisy workers)")
    add_config_args(segment)
    segment.add_argument("volume", type=Path, help="Zarr container with predicted affinities")
    segment.add_argument("--affs", default="volumes/pred_affs", help="affinities dataset")
    segment.add_argument("--thresholds", type=float, nargs="+", help="default from the config")
    segment.add_argument("--blockwise", action="store_true", help="block by block with daisy (any volume size)")
    segment.add_argument("--graph", help="region graph URL: sqlite:///path.db or mongodb://host:port/db "
                         "(default: beside the Zarr; with --blockwise, blockwise.graph of the config first)")
    segment.add_argument("--workers", type=positive_int, help="daisy workers (default blockwise.workers)")
    segment.add_argument("--quiet", action="store_true", help="no progress bars")
    segment.set_defaults(func=cmd_segment)

    evaluate = sub.add_parser("evaluate", help="VOI and ARAND of every segmentation against the labels")
    add_config_args(evaluate)
    evaluate.add_argument("volume", type=Path, help="Zarr container with segmentations and labels")
    evaluate.add_argument("--out", type=Path, help="report directory (default <volume>_evaluation beside it)")
    evaluate.set_defaults(func=cmd_evaluate)
