"""Thin Prefect tasks, one per core stage (see the Prefect platform issue)."""
