"""Faults: SIGKILL of a daisy worker and of the whole process at each stage (inside
prepare and commit too); the rerun gives exactly what an uninterrupted run gives and no
partial data is left behind. Defect 4 of the reliability issue."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lsdflow.core.io.graphstore import open_graph_store, sample_name
from lsdflow.core.io.volumes import list_datasets, open_array

from .conftest import BLOCKS, TINY, hidden_leftovers, run_killed, with_gt_affinities

pytestmark = pytest.mark.slow

SEGMENT = ["--thresholds", "0.3", "0.5", "--workers", "2", "--quiet", *[a for s in BLOCKS for a in ("--set", s)]]
KILL_AFTER_BLOCKS = """
import fcntl
from pathlib import Path
import {module} as m
_counter = Path({counter!r})
_real = m.{cls}.process
def process(self, block):
    _real(self, block)
    with open(_counter, "a+") as f:  # blocks done, across worker processes
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write("x"); f.flush()
        f.seek(0); done = len(f.read())
    if done == {after}:
        {kill}
m.{cls}.process = process
"""
KILLS = {"process": "kill_all()", "worker": "os.kill(os.getpid(), signal.SIGKILL)"}
STAGES = {  # stage -> (module, stage class)
    "predict": ("lsdflow.core.predict.blockwise", "PredictStage"),
    "fragments": ("lsdflow.core.segment.blockwise", "FragmentsStage"),
    "agglomerate": ("lsdflow.core.segment.blockwise", "AgglomerateStage"),
    "relabel": ("lsdflow.core.segment.blockwise", "RelabelStage"),
}
# between two outputs' renames into place (predict writes pred_lsds, then pred_affs)
KILL_IN_COMMIT = """
import lsdflow.core.blockwise.outputs as m
_real = m.swap_into_place
_calls = []
def swap(partial, final):
    _calls.append(final)
    if len(_calls) == 2:
        kill_all()
    return _real(partial, final)
m.swap_into_place = swap
"""
# after a dataset's .zarray is written but before its attributes (the defect's kill point)
KILL_IN_PREPARE = """
import zarr
import lsdflow.core.io.volumes as m
def prepare_ds(path, shape, offset=None, voxel_size=None, axis_names=None, units=None, chunk_shape=None,
               dtype=None, mode=None, custom_metadata=None, **kwargs):
    zarr.open(path, mode="w", shape=shape, chunks=chunk_shape, dtype=dtype)
    kill_all()
m.prepare_ds = prepare_ds
"""
KILL_IN_FIND_SEGMENTS = """
import numpy as np
_real = np.savez
_calls = []
def savez(*args, **kwargs):
    _calls.append(1)
    if len(_calls) == 2:
        kill_all()
    return _real(*args, **kwargs)
np.savez = savez
"""


def _argv(stage: str, container: Path, graph: str, model: Path) -> list[str]:
    if stage == "predict":
        return ["predict", "gala", str(container), "--blockwise", "--model", str(model), "--workers", "2", "--quiet",
                *[a for s in [*TINY, *BLOCKS] for a in ("--set", s)]]
    return ["segment", "gala", str(container), "--blockwise", "--graph", graph, *SEGMENT]


def _outputs(stage: str) -> list[str]:
    if stage == "predict":
        return ["volumes/pred_affs", "volumes/pred_lsds"]
    return ["volumes/fragments", "volumes/segmentation/hist_quant_50/0.3", "volumes/segmentation/hist_quant_50/0.5"]


def _graph(url: str, container: Path):
    with open_graph_store(url, sample_name(container)) as store:
        nodes, edges = store.read_nodes(), store.read_edges("hist_quant_50")
    order = np.lexsort((edges.v, edges.u))
    return (np.sort(nodes.ids), np.sort(nodes.sizes), edges.u[order], edges.v[order],
            np.nan_to_num(edges.merge_score[order], nan=-1))


@pytest.fixture(scope="module")
def references(tmp_path_factory, gala_test, tiny_model):
    """Uninterrupted runs, one per stage, made once for the module: stage -> (container, graph URL)."""
    from .conftest import with_gt_affinities

    made = {}

    def get(stage: str):
        stage = "predict" if stage == "predict" else "segment"  # every other stage runs `segment`
        if stage not in made:
            root = tmp_path_factory.mktemp(f"reference-{stage}")
            container = shutil.copytree(gala_test, root / "reference.zarr")
            if stage != "predict":
                with_gt_affinities(container)
            graph = f"sqlite:///{root / 'reference.db'}"
            clean = run_killed("", _argv(stage, container, graph, tiny_model), root)
            assert clean.returncode == 0, clean.stderr
            made[stage] = (container, graph)
        return made[stage]

    return get


def _same_as_reference(stage, container, graph, reference):
    ref_container, ref_graph = reference
    for dataset in _outputs(stage):
        ours, theirs = open_array(container, dataset), open_array(ref_container, dataset)
        assert ours.roi == theirs.roi
        assert np.array_equal(ours[ours.roi], theirs[theirs.roi]), dataset
    if stage != "predict":
        for a, b in zip(_graph(graph, container), _graph(ref_graph, ref_container)):
            assert np.array_equal(a, b)
    assert hidden_leftovers(container) == []
    assert not [d for d in list_datasets(container) if "partial" in d]


def _kill_then_rerun(stage, prelude, gala_copy, tmp_path, tiny_model, references):
    container = gala_copy("killed.zarr", gt_affs=stage != "predict")
    graph = f"sqlite:///{tmp_path / 'killed.db'}"
    killed = run_killed(prelude, _argv(stage, container, graph, tiny_model), tmp_path)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    rerun = run_killed("", _argv(stage, container, graph, tiny_model), tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    _same_as_reference(stage, container, graph, references(stage))


@pytest.mark.parametrize("kill", sorted(KILLS))
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_sigkill_mid_stage_then_rerun_gives_the_uninterrupted_result(stage, kill, gala_copy, tmp_path, tiny_model,
                                                                      references):
    module, cls = STAGES[stage]
    prelude = KILL_AFTER_BLOCKS.format(module=module, cls=cls, counter=str(tmp_path / f"{stage}.count"), after=3,
                                       kill=KILLS[kill])
    if kill == "process":
        _kill_then_rerun(stage, prelude, gala_copy, tmp_path, tiny_model, references)
        return
    # a daisy worker killed: daisy replaces it and retries its block, in the same run
    container = gala_copy("worker.zarr", gt_affs=stage != "predict")
    graph = f"sqlite:///{tmp_path / 'worker.db'}"
    run = run_killed(prelude, _argv(stage, container, graph, tiny_model), tmp_path)
    assert len((tmp_path / f"{stage}.count").read_text()) >= 3  # the worker was killed
    if run.returncode != 0:  # the block was given up: the rerun completes it
        assert "lsdflow: error:" in run.stderr
        run = run_killed("", _argv(stage, container, graph, tiny_model), tmp_path)
    assert run.returncode == 0, run.stderr
    _same_as_reference(stage, container, graph, references(stage))


@pytest.mark.parametrize("stage", ["predict", "fragments"])
def test_sigkill_inside_prepare_then_rerun_gives_the_uninterrupted_result(stage, gala_copy, tmp_path, tiny_model,
                                                                          references):
    _kill_then_rerun(stage, KILL_IN_PREPARE, gala_copy, tmp_path, tiny_model, references)


def test_sigkill_inside_commit_then_rerun_gives_the_uninterrupted_result(gala_copy, tmp_path, tiny_model, references):
    _kill_then_rerun("predict", KILL_IN_COMMIT, gala_copy, tmp_path, tiny_model, references)


def test_sigkill_inside_find_segments_then_rerun_gives_the_uninterrupted_result(gala_copy, tmp_path, tiny_model,
                                                                                references):
    _kill_then_rerun("find_segments", KILL_IN_FIND_SEGMENTS, gala_copy, tmp_path, tiny_model, references)


def test_killed_conversion_and_in_memory_writes_leave_nothing_behind_after_the_next_write(tmp_path, gala_test):
    """A killed process cannot clean up after itself: the next writer of the same path does."""
    h5 = Path(__file__).resolve().parents[2] / "data" / "medulla" / "medulla_dev.h5"
    out = tmp_path / "converted.zarr"
    killed = run_killed("""
import lsdflow.core.io.convert as m
_real = m._copy
def _copy(*args, **kwargs):
    _real(*args, **kwargs)
    kill_all()
m._copy = _copy
""", ["convert", str(h5), str(out), "--quiet"], tmp_path)
    assert killed.returncode == -9
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]  # the kill left one
    done = run_killed("", ["convert", str(h5), str(out), "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []

    container = with_gt_affinities(shutil.copytree(gala_test, tmp_path / "g.zarr"))
    killed = run_killed("""
import lsdflow.core.io.volumes as m
_real = m.create_array
def create_array(*args, **kwargs):
    array = _real(*args, **kwargs)
    kill_all()
m.create_array = create_array
""", ["segment", "gala", str(container), "--thresholds", "0.5"], tmp_path)
    assert killed.returncode == -9
    assert hidden_leftovers(container)
    done = run_killed("", ["segment", "gala", str(container), "--thresholds", "0.5"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert hidden_leftovers(container) == []
