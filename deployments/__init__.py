"""Prefect deployments: prefect.yaml and serve.py (see the Prefect platform issue)."""
