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
        assert flow.name == deployment["name"] and flow.description, deployment["name"]


def test_deployments_and_automations_are_named_and_described(tmp_path):
    """What the Deployments and Automations pages show: a description for every deployment
    (served and in prefect.yaml) and a named, described trigger on each automation."""
    from pathlib import Path

    import yaml

    from lsdflow.deployments.serve import deployments

    served = deployments(landing=str(tmp_path), reprocess_on_promotion=True)
    assert all(d.description for d in served), [d.name for d in served if not d.description]
    triggers = [t for d in served for t in (d.triggers or [])]
    assert {t.name for t in triggers} == {"new acquisition: process it", "new champion: reprocess acquisitions"}
    assert all(t.description for t in triggers)
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml").read_text())
    assert all(d.get("description") for d in spec["deployments"])
    assert all(t.get("name") and t.get("description") for d in spec["deployments"] for t in d.get("triggers", []))


def test_prefect_yaml_is_generated_from_the_one_definition():
    """Deployments are defined once (deployments/definitions.py): the cluster's prefect.yaml
    is that definition written out, and `lsdflow serve` serves the same deployments."""
    from pathlib import Path

    from lsdflow.deployments.definitions import DEPLOYMENTS, prefect_yaml
    from lsdflow.deployments.serve import deployments

    written = (Path(__file__).resolve().parents[1] / "deployments" / "prefect.yaml").read_text()
    assert written == prefect_yaml(), "regenerate: python -m lsdflow.deployments.definitions > deployments/prefect.yaml"
    served = {d.name: d for d in deployments(landing="/tmp", reprocess_on_promotion=True)}
    assert set(served) == {d.name for d in DEPLOYMENTS}
    for d in DEPLOYMENTS:
        assert served[d.name].description == d.description
        assert served[d.name].entrypoint == d.entrypoint.replace(":", ".")  # a module path
