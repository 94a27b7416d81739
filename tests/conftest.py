"""Shared fixtures: the shipped real EM volumes (gala, 10 nm FIB-SEM) and small configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsdflow.core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
GALA = ROOT / "data" / "gala"


@pytest.fixture(scope="session")
def gala_train() -> Path:
    return GALA / "gala_train.zarr"


@pytest.fixture(scope="session")
def gala_test() -> Path:
    return GALA / "gala_test.zarr"


# a network small enough for a few iterations per second on 2 CPU cores
TINY_NET = [
    "model.num_fmaps=4",
    "model.fmap_inc_factor=2",
    "model.input_shape=[52, 52, 52]",
    "training.precache_workers=1",
    "training.precache_size=2",
]


@pytest.fixture
def tiny_gala_config(tmp_path):
    def make(*overrides: str):
        return load_config("gala", [*TINY_NET, *overrides], workspace=tmp_path / "ws")

    return make
