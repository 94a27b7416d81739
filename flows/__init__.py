"""Prefect flows composing the tasks (see the Prefect platform issue)."""
