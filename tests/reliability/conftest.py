"""Fixtures of the reliability suite: copies of the real gala volume, ground-truth
affinities, a tiny (untrained, fast) model file, and a subprocess runner that can SIGKILL
lsdflow at a chosen point without any hook in lsdflow itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lsdflow.core.affinities import labels_to_affinities
from lsdflow.core.volumes import open_array, write_array

# 64-voxel blocks: 8 blocks on gala_test, one prediction pass per tile
BLOCKS = ["blockwise.block_size_nm=[640, 640, 640]", "prediction.test_time_augmentation=false"]
TINY = ["model.num_fmaps=4", "model.fmap_inc_factor=2", "model.input_shape=[52, 52, 52]",
        "prediction.input_shape=[76, 76, 76]"]


def with_gt_affinities(container: Path, dataset: str = "volumes/pred_affs") -> Path:
    labels = open_array(container, "volumes/labels/neuron_ids")
    affs = labels_to_affinities(labels[labels.roi], [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
    write_array(container, dataset, labels.roi, labels.voxel_size, (affs * 255).astype(np.uint8))
    return container


@pytest.fixture
def gala_copy(tmp_path, gala_test):
    def make(name: str = "vol.zarr", source: Path | None = None, gt_affs: bool = True) -> Path:
        container = tmp_path / name
        container.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source or gala_test, container)
        return with_gt_affinities(container) if gt_affs else container

    return make


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained tiny MTLSD as a model file: its outputs still depend on the input."""
    import torch

    from lsdflow.core.checkpoints import write_model_file
    from lsdflow.core.config import load_config
    from lsdflow.core.models import build_model

    config = load_config("gala", TINY)
    torch.manual_seed(0)
    return write_model_file(build_model(config.model).state_dict(), config,
                            tmp_path_factory.mktemp("model") / "tiny.pt", 0)


def run_killed(prelude: str, argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `lsdflow ARGV` in a new process group with `prelude` (Python that patches
    lsdflow to SIGKILL the whole group, `kill_all()`, or itself at some point). The
    prelude is a `sitecustomize` module on PYTHONPATH, so it runs in every process of
    the run, daisy's worker subprocesses included. Returns the finished process."""
    import tempfile

    hooks = Path(tempfile.mkdtemp(prefix="lsdflow-kill-", dir=cwd))
    (hooks / "sitecustomize.py").write_text(textwrap.dedent("""
        import os, signal, sys
        def kill_all():
            os.killpg(os.getpgid(0), signal.SIGKILL)
    """) + textwrap.dedent(prelude))
    script = f"import sys\nfrom lsdflow.core.cli import main\nsys.exit(main({argv!r}))\n"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))}
    try:
        return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, start_new_session=True, env=env)
    finally:
        shutil.rmtree(hooks, ignore_errors=True)


def hidden_leftovers(container: Path) -> list[str]:
    """Partial or displaced copies left anywhere in a container."""
    return sorted(str(p.relative_to(container)) for p in container.rglob("*")
                  if ".partial-" in p.name or ".old-" in p.name)
