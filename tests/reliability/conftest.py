"""Fixtures of the reliability suite: copies of the real gala volume, ground-truth
affinities, and a subprocess runner that can SIGKILL lsdflow at a chosen point without
any hook in lsdflow itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lsdflow.core.io.volumes import open_array, write_array
from lsdflow.core.train.affinities import labels_to_affinities

from ..conftest import TINY  # noqa: F401  (the tiny_model fixture comes from tests/conftest.py)

# 64-voxel blocks: 8 blocks on gala_test, one prediction pass per tile
BLOCKS = ["blockwise.block_size_nm=[640, 640, 640]", "prediction.test_time_augmentation=false"]


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
    script = f"import sys\nfrom lsdflow.cli.main import main\nsys.exit(main({argv!r}))\n"
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
