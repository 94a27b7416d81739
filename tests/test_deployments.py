"""Deployment definitions load. The served platform end to end (a real `prefect server`,
acquisitions dropped into the landing directory, the watcher, the automation, the
triggered runs and their outputs) is tested in tests/reliability/test_burst_end_to_end.py."""

from __future__ import annotations


def test_prefect_yaml_entrypoints_load():
    """Every deployment of deployments/prefect.yaml points at a flow that loads."""
    from pathlib import Path

    import yaml
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in spec["deployments"]}
    assert pools == {"gpu", "cpu"}
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert flow.name == deployment["name"] or deployment["name"] in ("train", "evaluate", "promote")
