"""One writer per output: a stage holds an exclusive lock on its container while it
decides what is left to do, prepares, runs and commits.

Two runs on the same acquisition at once (two flows, a rerun started by hand while the
first is running) would otherwise work on the same partial datasets and race each
other's renames. With the lock, the second waits, then finds the result complete. The
lock is `fcntl.flock` on a file under `<container>/.lsdflow/locks/`: released by the
kernel when its holder dies (a SIGKILL leaves no stale lock), and on NFS v4 and Lustre
honoured across nodes."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


@contextmanager
def output_lock(container: str | os.PathLike, name: str) -> Iterator[None]:
    """The lock of stage `name` writing into `container`."""
    with file_lock(Path(container) / ".lsdflow" / "locks" / f"{name}.lock", f"{container}: {name}"):
        yield


@contextmanager
def file_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if missing) for the block's duration;
    `what` names the guarded thing in the log line of a run that has to wait."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("%s: another lsdflow run holds it; waiting", what)
            began = time.monotonic()
            fcntl.flock(handle, fcntl.LOCK_EX)
            logger.warning("%s: free after %.0f s", what, time.monotonic() - began)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
