"""Credentials never reach what lsdflow persists (defect 7): flow-run parameters, task
results, Zarr attributes, the stage description written for cluster workers, logs.
A password arrives in the URL once and travels on only through the environment."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from lsdflow.core.config import ConfigError, load_config
from lsdflow.core.io.graphstore import PASSWORD_ENV, USER_ENV
from lsdflow.core.segment.blockwise import BlockwiseSegmentation

from .conftest import BLOCKS

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def clean_env():
    """These tests put credentials into os.environ (that is the mechanism): remove them
    after, or later MongoDB connections of the session would try to authenticate."""
    saved = {k: os.environ.pop(k) for k in (USER_ENV, PASSWORD_ENV) if k in os.environ}
    yield
    for key in (USER_ENV, PASSWORD_ENV):
        os.environ.pop(key, None)
    os.environ.update(saved)


def test_a_password_in_the_url_moves_to_the_environment_and_out_of_the_worker_payload(gala_copy, clean_env):
    volume = gala_copy()
    job = BlockwiseSegmentation(load_config("gala", BLOCKS), volume,
                                graph_url=f"mongodb://lab:{SECRET}@db.example.org:27017/lsdflow")
    assert SECRET not in job.graph_url and job.graph_url == "mongodb://db.example.org:27017/lsdflow"
    assert os.environ[PASSWORD_ENV] == SECRET and os.environ[USER_ENV] == "lab"
    block = job.fragments_stage  # workers get its JSON description
    assert SECRET.encode() not in pickle.dumps(block)
    assert SECRET not in block.describe()


def test_a_password_in_a_config_is_refused():
    with pytest.raises(ConfigError, match="LSDFLOW_MONGODB_PASSWORD"):
        load_config("gala", [f'blockwise.graph="mongodb://lab:{SECRET}@db:27017/x"'])


def test_flows_refuse_a_password_in_their_parameters(gala_copy, clean_env):
    from lsdflow.flows.segment import segment

    with pytest.raises(ConfigError, match="Secret block"):
        segment.fn(config_name="gala", volume=str(gala_copy()), graph_url=f"mongodb://lab:{SECRET}@db:27017/x")


@pytest.mark.slow
def test_lsdflow_run_keeps_the_password_out_of_prefect_and_the_outputs(prefect_api, gala_copy, tmp_path, clean_env,
                                                                        capsys):
    from prefect.client.orchestration import get_client

    from lsdflow.cli.main import main

    volume = gala_copy()
    # SQLite ignores credentials, so the whole run happens, through the same code path
    url = f"sqlite://lab:{SECRET}@{tmp_path / 'graph.db'}"
    assert main(["run", "segment", str(volume), "--graph", url, "--thresholds", "0.5",
                 *[a for s in BLOCKS for a in ("--set", s)]]) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    assert runs and all(SECRET not in repr(run.parameters) for run in runs)
    storage = os.environ.get("PREFECT_LOCAL_STORAGE_PATH")
    for root in filter(None, [storage, str(volume)]):
        for path in Path(root).rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
