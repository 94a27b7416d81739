"""Which failures a task retries: transient ones (a lost MongoDB connection, CUDA out of
memory, a Daisy stage whose blocks failed) — never bad input, which fails the same way
every time."""

from __future__ import annotations

from ..core.blockwise.runner import BlockwiseError
from ..core.config import ConfigError
from ..core.io.graphstore import GraphStoreError
from ..core.io.input_checks import ModelFileError
from ..core.io.volumes import VolumeError


def is_transient(error: BaseException) -> bool:
    if isinstance(error, (VolumeError, ConfigError, ModelFileError, FileNotFoundError)):
        return False
    if isinstance(error, BlockwiseError):
        return True
    if isinstance(error, GraphStoreError):
        return "cannot reach" in str(error)
    try:
        import pymongo.errors

        if isinstance(error, (pymongo.errors.AutoReconnect, pymongo.errors.ConnectionFailure)):
            return True
    except ImportError:
        pass
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return isinstance(error, (ConnectionError, TimeoutError))


def retry_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry only transient failures."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)
