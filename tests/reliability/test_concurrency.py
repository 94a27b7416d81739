"""Two runs on the same acquisition at once produce one correct result: the second waits
for the first (a lock per container and stage), then finds the result complete."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lsdflow.core.blockwise.runner import RunSettings
from lsdflow.core.config import load_config
from lsdflow.core.io.volumes import open_array
from lsdflow.core.segment.blockwise import segment_blockwise

from .conftest import BLOCKS, hidden_leftovers

pytestmark = pytest.mark.slow


def test_two_segmentations_of_one_volume_at_once_give_one_correct_result(gala_copy, tmp_path):
    volume = gala_copy("shared.zarr")
    reference = gala_copy("reference.zarr")
    segment_blockwise(load_config("gala", BLOCKS), reference, graph_url=f"sqlite:///{tmp_path / 'ref.db'}",
                      thresholds=[0.3, 0.5], settings=RunSettings(workers=1, progress=False))
    graph = f"sqlite:///{tmp_path / 'shared.db'}"
    argv = [sys.executable, "-m", "lsdflow.cli", "segment", "gala", str(volume), "--blockwise", "--graph", graph,
            "--thresholds", "0.3", "0.5", "--workers", "1", "--quiet", *[a for s in BLOCKS for a in ("--set", s)]]
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    # each stage ran once: whichever run waited for a stage's lock found it done
    for stage in ("fragments", "agglomerate", "relabel"):
        done = [f"{stage}: up to date" in out for out, _ in outputs]
        assert sorted(done) == [False, True], (stage, [out for out, _ in outputs])
    for threshold in ("0.3", "0.5"):
        ours = open_array(volume, f"volumes/segmentation/hist_quant_50/{threshold}")
        theirs = open_array(reference, f"volumes/segmentation/hist_quant_50/{threshold}")
        assert np.array_equal(ours[ours.roi], theirs[theirs.roi])
    assert hidden_leftovers(volume) == []


def test_two_flows_on_one_acquisition_at_once_give_one_correct_result(prefect_api, tmp_path, gala_test, tiny_model,
                                                                      monkeypatch):
    """Two `process-acquisition` runs on one HDF5 acquisition at the same time (a duplicated
    event, a run started by hand): one conversion, one result equal to a run alone, nothing
    written into the landing directory."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import lsdflow.core.io.convert as conversion
    from lsdflow.core.io.acquisitions import output_dir

    conversions = []
    real_convert = conversion.convert

    def convert(*args, **kwargs):  # the real conversion, counted, slow enough for both runs to meet
        conversions.append(args[0])
        time.sleep(8)
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(conversion, "convert", convert)
    from lsdflow.flows.process_acquisition import process_acquisition

    from .conftest import TINY
    from .test_prefect_caches import _write_hdf5

    results = {}
    for name in ("alone", "shared"):
        landing = tmp_path / name / "landing"
        landing.mkdir(parents=True)
        _write_hdf5(landing / "acquisition.h5", gala_test)
        kwargs = dict(path=str(landing / "acquisition.h5"), config_name="gala", model=str(tiny_model),
                      overrides=[*TINY, *BLOCKS], thresholds=[0.3, 0.5], workspace=str(tmp_path / name / "ws"),
                      data_roots=[str(landing)])
        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(process_acquisition, **kwargs, return_state=True) for _ in range(1 if name == "alone" else 2)]
            states = [run.result() for run in runs]
        assert all(state.is_completed() for state in states), states
        assert sorted(p.name for p in landing.iterdir()) == ["acquisition.h5"]  # outputs went to the workspace
        [result] = {str(state.result()["segmentations"]) + state.result()["volume"] for state in states}
        container = output_dir(tmp_path / name / "ws", landing / "acquisition.h5") / "acquisition.zarr"
        assert states[0].result()["volume"] == str(container)
        results[name] = container
        assert len(conversions) == 1, conversions
        conversions.clear()
        assert hidden_leftovers(container) == []
    for dataset in ("volumes/pred_affs", "volumes/fragments", "volumes/segmentation/hist_quant_50/0.3",
                    "volumes/segmentation/hist_quant_50/0.5"):
        ours, theirs = open_array(results["shared"], dataset), open_array(results["alone"], dataset)
        assert np.array_equal(ours[ours.roi], theirs[theirs.roi]), dataset


def test_processes_starting_on_a_new_workspace_at_once_share_one_mlflow_store(tmp_path, tiny_model):
    """MLflow creates a new SQLite store's tables on first use; processes doing it at once
    (acquisitions processed together on a new workspace) failed in alembic's migration
    ("Online migration expected to match one row"). Four registrations at once: all succeed,
    four versions in one store."""
    workspace = tmp_path / "ws"
    argv = [sys.executable, "-m", "lsdflow.cli", "register", "gala", str(tiny_model), "--workspace", str(workspace)]
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, [err[-1500:] for _, err in outputs]
    from lsdflow.registry.registration import resolve_model

    versions = {resolve_model(f"models:/mtlsd-gala/{v}", workspace).version for v in range(1, 5)}
    assert versions == {"1", "2", "3", "4"}
