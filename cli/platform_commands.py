"""Commands of the platform: `run` (a flow, here), `serve` (every deployment), `demo`."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.config import load_config
from ..core.demo import format_report, run_demo
from ..core.io.graphstore import credentials_to_environment
from ..registry.promotion import record_validation_scores
from ..registry.registration import CHAMPION, expand_model_reference, shipped_champion


def cmd_demo(args) -> int:
    """The demo shows the whole loop: the shipped model is the local registry's champion."""
    config = load_config("gala", args.overrides, args.workspace)
    workspace = config.resolved_workspace
    model_file, lineage = None, None
    if not args.train:
        uri = expand_model_reference(f"@{CHAMPION}", config)
        registered, message = shipped_champion(config, workspace)
        if message:
            print(message)
        model_file, lineage = registered.file, {**registered.lineage(), "model_uri": uri}
    report = run_demo(config, retrain=args.train, iterations=args.iterations, progress=not args.quiet,
                      model_file=model_file, model_attrs=lineage)
    validation = report.get("segmentation", {}).get("validation_best")
    if not args.train and validation is not None and message:  # the champion shows its scores
        record_validation_scores(registered, validation, validation["validation"], workspace,
                                 "lsdflow demo: gala_test segmented whole, scored on its validation half")
    print(format_report(report))
    return 0


def cmd_run(args) -> int:
    """Run a flow directly (an ephemeral Prefect API is started when none is configured)."""
    # a password given on the command line moves into this process's environment: the
    # flow run's parameters (stored by Prefect, shown in its UI) get the URL without it
    graph = credentials_to_environment(args.graph) if args.graph else None
    # the flows (and Prefect with them) are imported by the commands that run them: importing
    # Prefect takes seconds, which every other command would pay
    if args.flow == "process-acquisition":
        from ..flows.process_acquisition import process_acquisition

        # run by hand, the path the user typed is the data root unless they name others
        roots = args.data_roots or [str(Path(args.path).resolve().parent)]
        result = process_acquisition(path=str(args.path), config_name=args.config, model=args.model,
                                     thresholds=args.thresholds, graph_url=graph, overrides=args.overrides,
                                     workspace=args.workspace, data_roots=roots)
    elif args.flow == "watch-acquisitions":
        from ..flows.watch_acquisitions import watch_acquisitions

        result = watch_acquisitions(landing=str(args.path), settle_seconds=args.settle_seconds, config_name=args.config)
    else:
        from ..flows.segment import segment

        result = [r.model_dump() for r in segment(config_name=args.config, volume=str(args.path),
                                                  thresholds=args.thresholds, graph_url=graph,
                                                  overrides=args.overrides)]
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_serve(args) -> int:
    from prefect import serve

    from ..deployments.serve import deployments

    serve(*deployments(landing=str(args.landing) if args.landing else None, config_name=args.config,
                       watch_minutes=args.watch_minutes))
    return 0


def add_commands(sub) -> None:
    run = sub.add_parser("run", help="run a flow directly: process-acquisition PATH, watch-acquisitions LANDING, segment VOLUME")
    run.add_argument("flow", choices=["process-acquisition", "watch-acquisitions", "segment"])
    run.add_argument("path", type=Path, help="the acquisition, the landing directory or the volume")
    run.add_argument("--config", default="gala")
    run.add_argument("--model", help="model file or models:/ URI (default: prediction.model of the config)")
    run.add_argument("--thresholds", type=float, nargs="+")
    run.add_argument("--graph", help="region graph URL (default SQLite beside the Zarr)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    run.add_argument("--workspace")
    run.add_argument("--data-roots", nargs="+", help="process-acquisition: directories the acquisition must lie in "
                     "(default: the directory holding it)")
    run.add_argument("--settle-seconds", type=float, default=60.0, help="watch-acquisitions: unchanged for this long")
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="serve every deployment from this process (single machine)")
    serve.add_argument("--landing", type=Path, help="landing directory to watch for new acquisitions")
    serve.add_argument("--config", default="gala")
    serve.add_argument("--watch-minutes", type=float, default=5.0)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="the shipped pretrained MTLSD on the real gala test volume")
    demo.add_argument("--train", action="store_true", help="retrain from scratch first")
    demo.add_argument("--iterations", type=int, help="iterations when retraining (default from config)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    demo.add_argument("--workspace", help="where outputs go (default ./workspace/gala)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
