"""`lsdflow demo`: the shipped pretrained MTLSD on the real gala test volume.

Predicts affinities and LSDs for `gala_test`, scores the affinities against the ground
truth next to an untrained network of the same architecture (the chance reference),
segments (seeded watershed + waterz) and evaluates VOI/ARAND per threshold, and writes
pictures. `--train` first retrains the model from scratch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .config import LsdflowConfig, load_config
from .evaluate.scores import evaluate_volume, format_scores
from .evaluate.validation import score_model
from .io.volumes import open_array, voxel_slices
from .model.checkpoints import (
    describe_model,
    export_model,
    input_normalization,
    load_model,
)
from .model.networks import build_model
from .predict.tiling import predict_array
from .train.affinities import affinity_quality
from .train.training import train
from .view.plots import plot_affinity_slices


def run_demo(
    config: LsdflowConfig | None = None,
    retrain: bool = False,
    iterations: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    model_file: str | Path | None = None,
    model_attrs: dict | None = None,
) -> dict:
    """`model_file` (default: the config's checkpoint) and `model_attrs` (its registry
    lineage, recorded with the predictions) let the caller choose the model."""
    config = config or load_config("gala")
    out_dir = Path(out_dir) if out_dir else config.resolved_workspace / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    model_file = model_file or config.prediction.checkpoint
    if retrain:
        result = train(config, iterations=iterations, progress=progress)
        model_file = export_model(result.checkpoint, config, out_dir / "model.pt", result.iteration)
    if model_file is None or not Path(model_file).is_file():
        raise FileNotFoundError(f"{config.source}: prediction.checkpoint {model_file} not found")
    model, meta = load_model(model_file)

    volume = config.data.test[0]
    raw_array = open_array(volume.path, config.data.raw_dataset)
    labels_array = open_array(volume.path, config.data.labels_dataset)
    raw = raw_array[raw_array.roi]
    # scored within the test region (the whole volume unless the config names one); the
    # raw data around it is the network's context
    region = volume.roi if volume.roi is not None else raw_array.roi
    labels = labels_array[region]
    inside = voxel_slices(region, raw_array.roi, raw_array.voxel_size)
    normalization = input_normalization(raw_array, config.prediction.normalization, model_file, meta)
    scale = 255.0 if raw.dtype.kind == "u" and raw.dtype.itemsize == 1 else 1.0
    m = config.model
    input_shape, output_shape = config.prediction_shapes
    report = {"volume": str(volume), "model_file": str(model_file), "iteration": meta.get("iteration"),
              "model": describe_model(meta), "model_uri": (model_attrs or {}).get("model_uri")}
    for name, net in (("pretrained", model), ("untrained", _untrained(config))):
        began = time.perf_counter()
        outputs = predict_array(
            net, raw / scale, input_shape, output_shape, normalization,
            batch_size=config.prediction.batch_size, progress=progress and name == "pretrained",
        )
        affs = outputs[net.outputs.index("affs")][(slice(None),) + inside]
        quality = affinity_quality(affs, labels, m.affinity_neighborhood)
        quality["seconds"] = round(time.perf_counter() - began, 2)
        report[name] = quality
        if name == "pretrained":
            report["picture"] = str(
                plot_affinity_slices(
                    raw[inside], labels, affs, out_dir / "affinities.png",
                    title=f"{config.name}: {volume.path.name}, model {describe_model(meta)}",
                )
            )
    # predict → fragments + agglomeration → VOI/ARAND in the test region, on a copy of the
    # test volume in the workspace (the shipped data stays untouched)
    began = time.perf_counter()
    report["segmentation"] = score_model(
        config, model_file, volume, out_dir / volume.path.name, out_dir=out_dir / "evaluation", model_attrs=model_attrs,
    )
    report["segmentation"]["seconds"] = round(time.perf_counter() - began, 2)
    # a validation region in the same volume is scored from the same segmentation: the
    # threshold a user would pick without looking at the test labels
    validation = next((v for v in config.data.validation if v.path == volume.path and v.roi != volume.roi), None)
    if validation is not None:
        chosen = evaluate_volume(
            out_dir / volume.path.name, config.segmentation.merge_function, config.data.labels_dataset,
            out_dir=out_dir / "validation", roi=validation.roi,
        )["best"]
        test = next(r for r in report["segmentation"]["scores"] if r["threshold"] == chosen["threshold"])
        report["segmentation"]["chosen_on_validation"] = {"validation": str(validation), **test}
        report["segmentation"]["validation_best"] = {"validation": str(validation), **chosen}
    (out_dir / "demo.json").write_text(json.dumps(report, indent=2))
    return report


def _untrained(config: LsdflowConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(config.model).eval()


def format_report(report: dict) -> str:
    lines = [
        f"volume: {report['volume']}",
        f"model:  {report.get('model_uri') or report['model_file']} ({report['model']})",
        "",
        f"{'affinities vs ground truth':28s} {'ROC AUC':>8s} {'bal. acc.':>10s} {'seconds':>8s}",
    ]
    for name in ("pretrained", "untrained"):
        q = report[name]
        lines.append(f"{name:28s} {q['roc_auc']:8.3f} {q['balanced_accuracy']:10.3f} {q['seconds']:8.1f}")
    lines += ["(chance: ROC AUC 0.5, balanced accuracy 0.5)", f"picture: {report['picture']}", ""]
    evaluation = report["segmentation"]
    lines += [
        f"segmentation of the pretrained affinities ({evaluation['merge_function']}, "
        f"{evaluation['seconds']:.0f} s for predict + segment + evaluate):",
        format_scores(evaluation),
    ]
    chosen = evaluation.get("chosen_on_validation")
    if chosen:
        lines.append(
            f"threshold chosen on the validation region: {chosen['threshold']:g} -> VOI sum {chosen['voi_sum']:.3f}, "
            f"ARAND {chosen['arand']:.3f} here"
        )
    lines += [
        f"report: {evaluation['json']}",
        *[f"picture: {p}" for p in evaluation["pictures"]],
    ]
    return "\n".join(lines)
