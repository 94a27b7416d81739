"""Write beside, then rename into place: the one way lsdflow replaces a file or directory.

A result is written under a hidden sibling name (`.<name>.partial-<host>~<thread>-<pid>`) and
renamed into place only when complete, so a reader never sees half of it and the old
version stays until the new one is there. A process killed part-way leaves its partial
behind; the next writer of the same path removes partials (and displaced `.old-`
copies) of processes that are no longer running on this host. Partials of other hosts
(a shared filesystem) are left alone: their writers may still be alive.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOST = socket.gethostname().replace("-", "_")


def _tag() -> str:
    # the thread too: two flows of one process (threads) write the same output at once
    return f"{_HOST}~{threading.get_ident()}-{os.getpid()}"


def partial_path(final: str | os.PathLike) -> Path:
    """The hidden sibling this process writes `final` to."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial-{_tag()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned(final: str | os.PathLike) -> list[Path]:
    """Remove partial and displaced copies of `final` left by dead processes of this host."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for kind in ("partial", "old"):
        for candidate in final.parent.glob(f".{final.name}.{kind}-*"):
            host, _, pid = candidate.name.rsplit(f".{kind}-", 1)[1].rpartition("-")
            if host.split("~")[0] == _HOST and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                _remove(candidate)
                removed.append(candidate)
    return removed


def swap_into_place(partial: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Rename `partial` to `final`; an existing `final` is moved aside first and deleted
    only once the new one is in place (never a moment with neither, for long)."""
    partial, final = Path(partial), Path(final)
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{_tag()}")
        _remove(old)
        os.replace(final, old)
        os.replace(partial, final)
        _remove(old)
    else:
        os.replace(partial, final)
    return final


@contextmanager
def replacing(final: str | os.PathLike) -> Iterator[Path]:
    """`with replacing(path) as tmp:` write `tmp` (file or directory); on success it
    replaces `path`, on any error (or interrupt) it is removed and `path` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(final)
    partial = partial_path(final)
    _remove(partial)
    try:
        yield partial
    except BaseException:
        _remove(partial)
        raise
    swap_into_place(partial, final)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())
