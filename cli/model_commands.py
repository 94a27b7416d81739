"""Commands on models and the MLflow registry: `train`, `register`, `select-checkpoint`,
`evaluate-model`, `promote`.

`train` is tracked in MLflow and registers its model as the `challenger`; `register`,
`evaluate-model` and `promote` manage versions; a model becomes `champion` only when it wins
on validation data.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.evaluate.checkpoint_selection import (
    candidate_name,
    format_selection,
    segmentation_grid,
    select_checkpoint,
    with_settings,
)
from ..core.evaluate.scores import format_scores
from ..core.model.checkpoints import export_model
from ..core.train.training import train
from ..core.view.plots import plot_training_log
from ..registry.model_evaluation import evaluate_model
from ..registry.promotion import promote
from ..registry.registration import (
    default_model_name,
    expand_model_reference,
    register_model,
)
from ..registry.tracking import RegistryError, TrainingRun, tracking_uri
from .arguments import add_config_args, config_of, resolve_model_reference


def cmd_train(args) -> int:
    config = config_of(args)
    workspace = config.resolved_workspace
    init_from = resolve_model_reference(args.init_from, config)[0] if args.init_from else None
    print(f"training {config.name} ({config.model.kind}) in {workspace}; MLflow: {tracking_uri(workspace)}")
    with TrainingRun(config, workspace) as run:
        result = train(config, iterations=args.iterations, device=args.device, progress=not args.quiet,
                       on_log=run.on_log, init_from=init_from)
        png = plot_training_log(workspace / "training_log.csv")
        run.finish(result, png)
        print(f"iteration {result.iteration}: checkpoint {result.checkpoint} "
              f"({result.iterations_per_second:.2f} it/s on {result.device}); MLflow run {run.run_id}")
        model_file = export_model(result.checkpoint, config, args.export or workspace / "model.pt", result.iteration)
        print(f"exported model to {model_file}")
        if png:
            print(f"loss curve: {png}")
        trained = {"run_id": run.run_id, "model_file": str(model_file), "iteration": result.iteration}
        if not args.no_register:
            registered = register_model(model_file, config, workspace, run_id=run.run_id, name=args.model_name)
            trained["model_uri"] = registered.uri
            print(f"registered {registered.uri} as @challenger "
                  f"(evaluate with `lsdflow evaluate-model models:/{registered.name}@challenger --volume VALIDATION.zarr`)")
    if args.json:  # the last line, for a caller that runs training in a subprocess (tasks/models.py)
        print(json.dumps(trained))
    return 0


def cmd_register(args) -> int:
    config = config_of(args)
    registered = register_model(args.model_file, config, config.resolved_workspace, name=args.model_name, alias=args.alias)
    print(f"registered {registered.uri} ({args.model_file}) as @{args.alias}")
    return 0


def run_selection(args, config) -> dict:
    """`select-checkpoint`: score, print the table and what to change in the config."""
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
    """Score the checkpoints; with --register the best becomes @challenger, its validation
    scores recorded (under the winning settings)."""
    config = config_of(args)
    result = run_selection(args, config)
    if args.register:
        best = result["best"]
        workspace = config.resolved_workspace
        registered = register_model(best["checkpoint"], config, workspace, name=args.model_name)
        evaluate_model(registered.uri, config.data.validation[0], with_settings(config, best), workspace)
        print(f"registered {registered.uri} ({candidate_name(best)}) as @challenger with its validation "
              f"scores; `lsdflow promote {config.name}` makes it champion if it beats the champion")
    return 0


def cmd_evaluate_model(args) -> int:
    config = config_of(args)
    volume = args.volume or (config.data.validation[0] if config.data.validation else None)
    if volume is None:
        raise RegistryError(f"{config.source}: no --volume given and data.validation is empty")
    report = evaluate_model(expand_model_reference(args.model, config), volume, config, config.resolved_workspace,
                            progress=not args.quiet)
    print(f"{report['model_uri']} on {volume}:")
    print(format_scores(report))
    print(f"best threshold {report['best']['threshold']:g} (VOI sum {report['best']['voi_sum']:.3f}) recorded "
          f"with the model version; report: {report['json']}")
    return 0


def cmd_promote(args) -> int:
    config = config_of(args)
    name = args.name or default_model_name(config)
    decision = promote(name, config.resolved_workspace, margin=args.margin)
    verb = "promoted" if decision["promoted"] else "not promoted"
    print(f"{name} v{decision['challenger']} {verb}: {decision['reason']}")
    print(f"decision log: {decision['log']}")
    return 0


def add_commands(sub) -> None:
    train = sub.add_parser("train", help="train a model with gunpowder (resumes from the newest checkpoint)")
    add_config_args(train)
    train.add_argument("--iterations", type=int, help="total iterations (default from config)")
    train.add_argument("--device", help="torch device (default cuda when available, else cpu)")
    train.add_argument("--export", type=Path, help="also write a portable model file here")
    train.add_argument("--init-from", metavar="MODEL",
                       help="start a new run from this model's weights (a model file, models:/NAME@ALIAS "
                            "or @ALIAS), e.g. to fine-tune on new data")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--no-register", action="store_true", help="do not register the trained model")
    train.add_argument("--model-name", help="registered model name (default mtlsd-<config>)")
    train.add_argument("--json", action="store_true", help="end with one JSON line: MLflow run, model file, iteration")
    train.set_defaults(func=cmd_train)

    select = sub.add_parser("select-checkpoint", help="score a run's checkpoints (and segmentation settings) on validation data")
    add_config_args(select)
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
    select.add_argument("--register", action="store_true",
                        help="register the best checkpoint as @challenger with its scores")
    select.add_argument("--model-name", help="registered model name (default mtlsd-<config>)")
    select.set_defaults(func=cmd_select_checkpoint)

    register = sub.add_parser("register", help="register a model file as a new version (alias challenger)")
    add_config_args(register)
    register.add_argument("model_file", type=Path)
    register.add_argument("--model-name", help="registered model name (default mtlsd-<config>)")
    register.add_argument("--alias", default="challenger")
    register.set_defaults(func=cmd_register)

    evaluate = sub.add_parser("evaluate-model", help="score a registered model on a validation volume, recorded with the version")
    add_config_args(evaluate)
    evaluate.add_argument("model", help="models:/<name>@<alias>, models:/<name>/<version> or @challenger")
    evaluate.add_argument("--volume", type=Path, help="validation volume with labels (default data.validation[0])")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate_model)

    promote_parser = sub.add_parser("promote", help="move @champion to @challenger if it wins on validation data")
    add_config_args(promote_parser)
    promote_parser.add_argument("--name", help="registered model name (default mtlsd-<config>)")
    promote_parser.add_argument("--margin", type=float, default=0.0, help="VOI sum the challenger must win by")
    promote_parser.set_defaults(func=cmd_promote)
