"""Graph-store credentials for flows: from a Prefect Secret block or the worker's
environment, never from a flow parameter (Prefect stores parameters in its database and
shows them in the UI)."""

from __future__ import annotations

import os

from ..core.config import ConfigError
from ..core.io.graphstore import PASSWORD_ENV, USER_ENV, has_password


def use_graph_credentials(graph_url: str | None, secret_block: str | None = None, user: str | None = None) -> None:
    """Refuse a password inside `graph_url`; load the password of `secret_block` (a
    Prefect `Secret`) into this process's environment, where the graph store and the
    daisy workers find it."""
    if has_password(graph_url):
        raise ConfigError(
            "graph_url: a password inside the URL would be stored with the flow run's parameters; pass the "
            f"URL without it and give the password as a Prefect Secret block (graph_secret) or as {PASSWORD_ENV} "
            f"(with {USER_ENV}) in the worker's environment"
        )
    if secret_block:
        from prefect.blocks.system import Secret

        os.environ[PASSWORD_ENV] = Secret.load(secret_block).get()
        if user:
            os.environ[USER_ENV] = user
