"""The shape of the code: imports run one way (core ← registry ← tasks ← flows ← cli /
deployments), core/ knows neither Prefect nor MLflow, lsdflow's own imports sit at module
level (the few exceptions say why), and a new blockwise stage is one class."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

LAYERS = {"core": 0, "registry": 1, "tasks": 2, "flows": 3, "cli": 4, "deployments": 4}
FORBIDDEN = {"core": {"prefect", "mlflow"}, "registry": {"prefect"}, "deployments": {"cli"}}
# function-level imports of lsdflow modules, each with its reason
DEFERRED = {
    ("cli/data_commands.py", "core.view.neuroglancer_view"): "neuroglancer starts a server when imported",
    ("cli/platform_commands.py", "flows.process_acquisition"): "Prefect takes seconds to import",
    ("cli/platform_commands.py", "flows.watch_acquisitions"): "Prefect takes seconds to import",
    ("cli/platform_commands.py", "flows.segment"): "Prefect takes seconds to import",
    ("cli/platform_commands.py", "deployments.serve"): "Prefect takes seconds to import",
    ("core/blockwise/worker_pool.py", "core.blockwise.runner"):
        "the relay daisy spawns imports this module and must stay light; runner imports the pool",
}


def _imports():
    """(file, layer, imported module relative to lsdflow or absolute, at module level?)"""
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT)
            module = ".".join(rel.with_suffix("").parts)
            package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
            tree = ast.parse(path.read_text())
            top_level = {id(node) for node in tree.body}
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        parts = package.split(".")
                        base = parts[: len(parts) - (node.level - 1)]
                        targets = [".".join(base + ([node.module] if node.module else []))]
                    else:
                        targets = [node.module.removeprefix("lsdflow.")]
                elif isinstance(node, ast.Import):
                    targets = [alias.name.removeprefix("lsdflow.") for alias in node.names]
                else:
                    continue
                for target in targets:
                    yield str(rel), layer, target, id(node) in top_level


def test_imports_run_one_way():
    wrong = [(f, t) for f, layer, t, _ in _imports()
             if t.split(".")[0] in LAYERS and LAYERS[t.split(".")[0]] > LAYERS[layer]]
    assert not wrong, f"imports against the layers (core ← registry ← tasks ← flows ← cli / deployments): {wrong}"


def test_core_knows_neither_prefect_nor_mlflow():
    wrong = [(f, t) for f, layer, t, _ in _imports() if t.split(".")[0] in FORBIDDEN.get(layer, ())]
    assert not wrong, wrong


def test_lsdflow_imports_are_at_module_level_unless_they_say_why():
    deferred = {(f, t) for f, _, t, top in _imports() if not top and t.split(".")[0] in LAYERS}
    assert deferred <= set(DEFERRED), f"function-level imports without a reason: {sorted(deferred - set(DEFERRED))}"


def test_the_checks_see_a_wrong_import(tmp_path, monkeypatch):
    """The checks themselves: a core module importing a flow is found."""
    import tests.test_architecture as this

    fake = tmp_path / "core"
    fake.mkdir()
    (fake / "bad.py").write_text("from ..flows.segment import segment\n")
    monkeypatch.setattr(this, "ROOT", tmp_path)
    monkeypatch.setattr(this, "LAYERS", {"core": 0, "flows": 3})
    assert [(f, t) for f, _, t, _ in this._imports()] == [("core/bad.py", "flows.segment")]


def _docs_example() -> tuple[str, str]:
    """The stage file and the registration line of docs/architecture.md's example."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "architecture.md").read_text(), re.S)
    stage = next(b for b in blocks if "class RawMaskStage" in b)
    line = next(b for b in blocks if "blockwise_task(RawMaskStage" in b)
    return stage, line


def test_a_new_stage_is_one_file_and_a_line_of_registration(tmp_path, gala_test, monkeypatch):
    """docs/architecture.md's example, run as written: the stage in a file of its own, run by
    the one runner with two worker processes (which import it by name), resumed as up to
    date, and made a Prefect task, cached on its key, by the registration line."""
    import importlib
    import shutil
    import sys

    import numpy as np

    from lsdflow.core.blockwise.runner import RunSettings, committed, run_stage
    from lsdflow.core.io.volumes import open_array

    stage_file, registration = _docs_example()
    (tmp_path / "raw_mask_example.py").write_text(stage_file)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{ROOT}")  # daisy's worker processes import it too
    example = importlib.import_module("raw_mask_example")
    container = shutil.copytree(gala_test, tmp_path / "acq.zarr")
    raw = open_array(container, "volumes/raw", mode="r+")
    raw[raw.roi] = np.where(np.arange(raw.shape[-1]) < 50, 0, raw[raw.roi])  # no data at the left margin

    stage = example.RawMaskStage(container=str(container), block_voxels=32)
    summary = run_stage(stage, RunSettings(workers=2, progress=False))
    assert summary["blocks"] == 2 * 4 * 7 and summary["processed"] == summary["blocks"]
    mask = open_array(container, example.MASK)
    assert mask.roi == raw.roi and np.array_equal(mask[mask.roi], (raw[raw.roi] != 0).astype(np.uint8))
    assert run_stage(stage, RunSettings(workers=1, progress=False)).get("up_to_date")

    from lsdflow.tasks.stage_tasks import blockwise_task

    namespace = {"blockwise_task": blockwise_task, "RawMaskStage": example.RawMaskStage}
    exec(registration, namespace)
    task = namespace["raw_mask"]
    assert task.name == "raw-mask"
    assert task.cache_key_fn(None, {"container": str(container), "block_voxels": 32}) == f"raw-mask-{stage.key()}"
    assert task.committed_fn({"container": str(container), "block_voxels": 32}) == committed(stage) is not None
    del sys.modules["raw_mask_example"]


def test_stage_names_are_unique_and_every_stage_describes_itself_as_json():
    from lsdflow.core.blockwise.stage import BlockwiseStage
    from lsdflow.core.io.ome_zarr_export import ExportLevel
    from lsdflow.core.predict.blockwise import PredictStage
    from lsdflow.core.segment.blockwise import AgglomerateStage, FragmentsStage, RelabelStage

    stages = [PredictStage, FragmentsStage, AgglomerateStage, RelabelStage, ExportLevel]
    assert all(issubclass(s, BlockwiseStage) for s in stages)
    assert len({s.name for s in stages}) == len(stages)
    assert not Path(ROOT / "core" / "test_time_augmentation.py").exists()  # no test_ prefix outside tests/
