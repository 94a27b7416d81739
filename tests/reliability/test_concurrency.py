"""Two runs on the same acquisition at once produce one correct result: the second waits
for the first (a lock per container and stage), then finds the result complete."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lsdflow.core.blockwise import RunSettings
from lsdflow.core.blockwise_segment import segment_blockwise
from lsdflow.core.config import load_config
from lsdflow.core.volumes import open_array

from .conftest import BLOCKS, hidden_leftovers

pytestmark = pytest.mark.slow


def test_two_segmentations_of_one_volume_at_once_give_one_correct_result(gala_copy, tmp_path):
    volume = gala_copy("shared.zarr")
    reference = gala_copy("reference.zarr")
    segment_blockwise(load_config("gala", BLOCKS), reference, graph_url=f"sqlite:///{tmp_path / 'ref.db'}",
                      thresholds=[0.3, 0.5], settings=RunSettings(workers=1, progress=False))
    graph = f"sqlite:///{tmp_path / 'shared.db'}"
    argv = [sys.executable, "-m", "lsdflow.flows.cli", "segment", "gala", str(volume), "--blockwise", "--graph", graph,
            "--thresholds", "0.3", "0.5", "--workers", "1", "--quiet", *[a for s in BLOCKS for a in ("--set", s)]]
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    # the one that waited found every stage done
    assert any(out.count("up to date") == 3 for out, _ in outputs), [out for out, _ in outputs]
    for threshold in ("0.3", "0.5"):
        ours = open_array(volume, f"volumes/segmentation/hist_quant_50/{threshold}")
        theirs = open_array(reference, f"volumes/segmentation/hist_quant_50/{threshold}")
        assert np.array_equal(ours[ours.roi], theirs[theirs.roi])
    assert hidden_leftovers(volume) == []
