"""The `lsdflow` command: the core commands plus the MLflow model registry.

`train` is tracked in MLflow and registers its model as the `challenger`; `predict` takes
`--model models:/<name>@<alias>` (default: `prediction.model` of the config) and records the
model's lineage; `register`, `evaluate-model` and `promote` manage versions; `demo` registers
the shipped model as `champion` of the local registry and predicts with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..core import cli as core_cli
from ..core.graphstore import credentials_to_environment
from .registry import CHAMPION, RegistryError, _model_uri, default_model_name, resolve_prediction_model, tracking_uri


def _workspace(config) -> Path:
    return config.resolved_workspace


def _init_from(reference: str | None, config) -> Path | None:
    """A model file for `train --init-from`: a path, or a registered version's file."""
    return Path(resolve_prediction_model(reference, config)[0]) if reference else None


def cmd_train(args) -> int:
    from ..core.checkpoints import export_model
    from ..core.plots import plot_training_log
    from ..core.train import train
    from .registry import TrainingRun, register_model

    config = core_cli._config(args)
    workspace = _workspace(config)
    print(f"training {config.name} ({config.model.kind}) in {workspace}; MLflow: {tracking_uri(workspace)}")
    with TrainingRun(config, workspace) as run:
        result = train(config, iterations=args.iterations, device=args.device, progress=not args.quiet,
                       on_log=run.on_log, init_from=_init_from(args.init_from, config))
        png = plot_training_log(workspace / "training_log.csv")
        run.finish(result, png)
        print(f"iteration {result.iteration}: checkpoint {result.checkpoint} "
              f"({result.iterations_per_second:.2f} it/s on {result.device}); MLflow run {run.run_id}")
        model_file = export_model(result.checkpoint, config, args.export or workspace / "model.pt", result.iteration)
        print(f"exported model to {model_file}")
        if png:
            print(f"loss curve: {png}")
        import json

        (workspace / "last_training.json").write_text(json.dumps(
            {"run_id": run.run_id, "model_file": str(model_file), "iteration": result.iteration}))
        if not args.no_register:
            registered = register_model(model_file, config, workspace, run_id=run.run_id, name=args.model_name)
            print(f"registered {registered.uri} as @challenger "
                  f"(evaluate with `lsdflow evaluate-model models:/{registered.name}@challenger --volume VALIDATION.zarr`)")
    return 0


def cmd_register(args) -> int:
    from .registry import register_model

    config = core_cli._config(args)
    registered = register_model(args.model_file, config, _workspace(config), name=args.model_name, alias=args.alias)
    print(f"registered {registered.uri} ({args.model_file}) as @{args.alias}")
    return 0


def cmd_select_checkpoint(args) -> int:
    """core's select-checkpoint; with --register the best checkpoint becomes @challenger,
    its validation scores recorded (under the winning settings)."""
    from ..core.checkpoint_selection import candidate_name, with_settings
    from .model_evaluation import evaluate_model
    from .registry import register_model

    config = core_cli._config(args)
    result = core_cli.run_selection(args, config)
    if args.register:
        best = result["best"]
        registered = register_model(best["checkpoint"], config, _workspace(config), name=args.model_name)
        evaluate_model(registered.uri, config.data.validation[0], with_settings(config, best), _workspace(config))
        print(f"registered {registered.uri} ({candidate_name(best)}) as @challenger with its validation "
              f"scores; `lsdflow promote {config.name}` makes it champion if it beats the champion")
    return 0


def cmd_evaluate_model(args) -> int:
    from ..core.evaluate import format_scores
    from .model_evaluation import evaluate_model

    config = core_cli._config(args)
    volume = args.volume or (config.data.validation[0] if config.data.validation else None)
    if volume is None:
        raise RegistryError(f"{config.source}: no --volume given and data.validation is empty")
    report = evaluate_model(_model_uri(args.model, config), volume, config, _workspace(config), progress=not args.quiet)
    print(f"{report['model_uri']} on {volume}:")
    print(format_scores(report))
    print(f"best threshold {report['best']['threshold']:g} (VOI sum {report['best']['voi_sum']:.3f}) recorded "
          f"with the model version; report: {report['json']}")
    return 0


def cmd_promote(args) -> int:
    from .registry import promote

    config = core_cli._config(args)
    name = args.name or default_model_name(config)
    decision = promote(name, _workspace(config), margin=args.margin)
    verb = "promoted" if decision["promoted"] else "not promoted"
    print(f"{name} v{decision['challenger']} {verb}: {decision['reason']}")
    print(f"decision log: {decision['log']}")
    return 0


def cmd_predict(args) -> int:
    config = core_cli._config(args)
    model_file, lineage, described = resolve_prediction_model(args.model, config)
    print(f"model: {described}")
    return core_cli.predict_command(args, config, model_file, lineage)


def cmd_demo(args) -> int:
    """The demo shows the whole loop: the shipped model is the local registry's champion."""
    from ..core.config import load_config
    from ..core.demo import format_report, run_demo
    from .registry import shipped_champion

    config = load_config("gala", args.overrides, args.workspace)
    workspace = _workspace(config)
    model_file, lineage = None, None
    if not args.train:
        uri = _model_uri(f"@{CHAMPION}", config)
        registered, message = shipped_champion(config, workspace)
        if message:
            print(message)
        model_file, lineage = registered.file, {**registered.lineage(), "model_uri": uri}
    report = run_demo(config, retrain=args.train, iterations=args.iterations, progress=not args.quiet,
                      model_file=model_file, model_attrs=lineage)
    validation = report.get("segmentation", {}).get("validation_best")
    if not args.train and validation is not None and message:  # the champion shows its scores
        from .registry import record_validation_scores

        record_validation_scores(registered, validation, validation["validation"], workspace,
                                 "lsdflow demo: gala_test segmented whole, scored on its validation half")
    print(format_report(report))
    return 0


def cmd_run(args) -> int:
    """Run a flow directly (an ephemeral Prefect API is started when none is configured)."""
    import json

    # a password given on the command line moves into this process's environment: the
    # flow run's parameters (stored by Prefect, shown in its UI) get the URL without it
    graph = credentials_to_environment(args.graph) if args.graph else None
    if args.flow == "process-acquisition":
        from .process_acquisition import process_acquisition

        # run by hand, the path the user typed is the data root unless they name others
        roots = args.data_roots or [str(Path(args.path).resolve().parent)]
        result = process_acquisition(path=str(args.path), config_name=args.config, model=args.model,
                                     thresholds=args.thresholds, graph_url=graph, overrides=args.overrides,
                                     workspace=args.workspace, data_roots=roots)
    elif args.flow == "watch-acquisitions":
        from .watch_acquisitions import watch_acquisitions

        result = watch_acquisitions(landing=str(args.path), settle_seconds=args.settle_seconds, config_name=args.config)
    else:
        from .segment import segment

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


def _extend(sub, parsers) -> None:
    parsers["train"].set_defaults(func=cmd_train)
    parsers["train"].add_argument("--no-register", action="store_true", help="do not register the trained model")
    parsers["train"].add_argument("--model-name", help="registered model name (default mtlsd-<config>)")
    parsers["predict"].set_defaults(func=cmd_predict)
    parsers["predict"].set_defaults()
    for action in parsers["predict"]._actions:
        if action.dest == "model":
            action.help = ("model file, or registered model: models:/<name>@<alias>, models:/<name>/<version>, "
                           "@champion (default: prediction.model, else prediction.checkpoint of the config)")
    parsers["demo"].set_defaults(func=cmd_demo)
    parsers["select-checkpoint"].set_defaults(func=cmd_select_checkpoint)
    parsers["select-checkpoint"].add_argument("--register", action="store_true",
                                              help="register the best checkpoint as @challenger with its scores")
    parsers["select-checkpoint"].add_argument("--model-name", help="registered model name (default mtlsd-<config>)")

    register = sub.add_parser("register", help="register a model file as a new version (alias challenger)")
    core_cli._add_config_args(register)
    register.add_argument("model_file", type=Path)
    register.add_argument("--model-name", help="registered model name (default mtlsd-<config>)")
    register.add_argument("--alias", default="challenger")
    register.set_defaults(func=cmd_register)

    evaluate = sub.add_parser("evaluate-model", help="score a registered model on a validation volume, recorded with the version")
    core_cli._add_config_args(evaluate)
    evaluate.add_argument("model", help="models:/<name>@<alias>, models:/<name>/<version> or @challenger")
    evaluate.add_argument("--volume", type=Path, help="validation volume with labels (default data.validation[0])")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate_model)

    promote = sub.add_parser("promote", help="move @champion to @challenger if it wins on validation data")
    core_cli._add_config_args(promote)
    promote.add_argument("--name", help="registered model name (default mtlsd-<config>)")
    promote.add_argument("--margin", type=float, default=0.0, help="VOI sum the challenger must win by")
    promote.set_defaults(func=cmd_promote)

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


def build_parser():
    return core_cli.build_parser(extend=_extend)


def main(argv: list[str] | None = None) -> int:
    try:
        return core_cli.main(argv, parser=build_parser())
    except RegistryError as e:
        print(f"lsdflow: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
