"""Worker processes kept between stages: a stage's workers start warm.

daisy 2 runs every worker of every task in a fresh interpreter (it cannot fork), and a
stage worker imports numpy, scipy, zarr, funlib.persistence and lsdflow before its first
block: about 1.4 s per worker and stage on a 2-core machine, paid by each of the three
segmentation stages, more than the fragments of a 100³ volume take. Here the worker
function that daisy spawns is a thin relay (`PooledWorker`; this module imports only the
standard library): it hands the stage's description and its daisy context to one of a
few long-lived processes of this driver (`WorkerPool`), which imported lsdflow once, runs
the stage's ordinary worker loop there (`runner.StageWorker`: its own daisy client, block
timeouts, bad-input record) and reports how it ended; the relay then exits as that worker
would have. A pooled process that dies (a block timeout hard-exits it) is replaced; one
idle for `IDLE_EXIT_S` exits.

Pooled processes are started as `python -m lsdflow.core.blockwise.worker_pool` and connect
back (not with multiprocessing's spawn, which re-imports the driver's main script). Only
local workers are pooled; a cluster launcher's workers are processes of their own on other
machines. No maintained library keeps daisy 2 workers between tasks, hence this module.
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import secrets
import subprocess
import sys
import threading
import traceback
from multiprocessing.connection import Client, Listener

IDLE_EXIT_S = 120.0  # a pooled process with nothing to do for this long exits
START_TIMEOUT_S = 120.0  # how long a relay waits for a pooled process to become free


class PooledWorker:
    """The worker function daisy spawns for a pooled stage: relays the worker's life to a
    pooled process and raises if it failed there (a dirty worker exit, as before)."""

    def __init__(self, address, authkey: bytes, description: str, bad_input_file: str):
        self.address = address
        self.authkey = authkey
        self.description = description
        self.bad_input_file = bad_input_file

    def __call__(self, *, context=None):
        environment = dict(os.environ)  # the driver's, as daisy gave it to this process
        if context is not None:
            import daisy

            environment[daisy.Context.ENV_VARIABLE] = context.to_env()
        with Client(self.address, authkey=self.authkey) as connection:
            # what a fresh worker would start with: daisy gives it the driver's sys.path
            job = (self.description, self.bad_input_file, environment, os.getcwd(), list(sys.path))
            connection.send(("relay", job))
            status, detail = connection.recv()
        if status != "ok":
            raise RuntimeError(f"pooled stage worker failed:\n{detail}")


class _WorkerLog:
    """stdout/stderr of one worker's life into the task's log directory, where daisy puts a
    spawned worker's (`<logdir>/<task>/pooled-<pid>.log`); unchanged without a log dir."""

    def __init__(self, environment: dict):
        import daisy

        self.path = None
        encoded = environment.get(daisy.Context.ENV_VARIABLE)
        context = daisy.Context.from_env_string(encoded) if encoded else None
        if context is not None and context.get("logdir"):
            self.path = os.path.join(context["logdir"], str(context["task_id"]), f"pooled-{os.getpid()}.log")

    def __enter__(self):
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            sys.stdout.flush()
            sys.stderr.flush()
            self.saved = (os.dup(1), os.dup(2))
            log = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
        return self

    def __exit__(self, *exc):
        if self.path:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, saved in zip((1, 2), self.saved):
                os.dup2(saved, fd)
                os.close(saved)


def _serve(address, authkey: bytes) -> None:
    """A pooled process: import what a worker needs, register with the pool, then run one
    worker's life per message until idle for IDLE_EXIT_S or the pool is gone."""
    from lsdflow.core.blockwise.runner import StageWorker  # what a fresh worker pays, paid once

    with Client(address, authkey=authkey) as connection:
        connection.send(("pooled", os.getpid()))
        while connection.poll(IDLE_EXIT_S):
            try:
                description, bad_input_file, environment, cwd, path = connection.recv()
            except EOFError:
                return
            os.environ.clear()
            os.environ.update(environment)
            os.chdir(cwd)
            for entry in reversed(path):
                if entry not in sys.path:
                    sys.path.insert(0, entry)
            try:
                with _WorkerLog(environment):
                    StageWorker(description, bad_input_file)()
                reply = ("ok", None)
            except BaseException:  # noqa: BLE001 - reported to the relay, which fails as the worker
                reply = ("error", traceback.format_exc())
            try:
                connection.send(reply)
            except OSError:
                return


class WorkerPool:
    """Long-lived worker processes of this driver and the listener their relays call."""

    def __init__(self):
        self.authkey = secrets.token_bytes(32)
        self._listener = Listener(("127.0.0.1", 0), authkey=self.authkey)
        self.address = self._listener.address
        self._idle: queue.Queue = queue.Queue()  # connections of registered, free processes
        self._lock = threading.Lock()
        self._capacity = 0  # workers of the stages running now
        self._started = 0  # processes started and not known to be gone
        self._closed = False
        self._popens: list[subprocess.Popen] = []
        threading.Thread(target=self._accept, name="lsdflow-worker-pool", daemon=True).start()

    def reserve(self, workers: int) -> None:
        """Room for `workers` more concurrent workers (a stage about to run); processes that
        are missing start now, so that their imports overlap with the stage's preparation."""
        with self._lock:
            self._capacity += workers
            missing = self._capacity - self._started
        for _ in range(missing):
            self._start()

    def release(self, workers: int) -> None:
        with self._lock:
            self._capacity -= workers

    def worker(self, description: str, bad_input_file: str) -> PooledWorker:
        return PooledWorker(self.address, self.authkey, description, bad_input_file)

    def _start(self) -> None:
        with self._lock:
            self._started += 1
        process = subprocess.Popen(
            [sys.executable, "-m", "lsdflow.core.blockwise.worker_pool"], stdin=subprocess.PIPE,
        )
        process.stdin.write(pickle.dumps((self.address, self.authkey)))  # a pipe: never on a command line
        process.stdin.close()
        with self._lock:
            self._popens = [p for p in self._popens if p.poll() is None] + [process]

    def _gone(self) -> None:
        with self._lock:
            self._started -= 1
            missing = self._capacity > self._started
        if missing and not self._closed:
            self._start()

    def _accept(self) -> None:
        while True:
            try:
                connection = self._listener.accept()
                kind, payload = connection.recv()
            except (OSError, EOFError):
                if self._closed:
                    return
                continue
            if kind == "pooled":
                self._idle.put(connection)
            else:
                threading.Thread(target=self._relay, args=(connection, payload), daemon=True).start()

    def _relay(self, relay, job) -> None:
        """One worker's life on a free pooled process; a process found gone is replaced."""
        with relay:
            reply = ("error", "no pooled worker process became free")
            while True:
                try:
                    pooled = self._idle.get(timeout=START_TIMEOUT_S)
                except queue.Empty:
                    break
                try:
                    if pooled.poll(0):  # a free process has nothing to say unless it exited (EOF)
                        raise EOFError
                    pooled.send(job)
                except (EOFError, OSError):  # exited while idle: take another
                    pooled.close()
                    self._gone()
                    continue
                try:
                    reply = pooled.recv()
                    self._idle.put(pooled)
                except (EOFError, OSError):  # died during the work (a block timeout hard-exits it)
                    pooled.close()
                    self._gone()
                    reply = ("error", "the pooled worker process died (killed, or a block timed out)")
                break
            relay.send(reply)

    def close(self, wait_s: float = 10.0) -> None:
        """Free processes see EOF and exit (waited for up to `wait_s`, then killed)."""
        self._closed = True
        self._listener.close()
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break
        for process in self._popens:
            try:
                process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                process.kill()


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def worker_pool() -> WorkerPool:
    """This driver's pool, made on first use and closed at exit."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = WorkerPool()
            atexit.register(_POOL.close)
        return _POOL


def close_worker_pool() -> None:
    """End this driver's pooled processes now (between runs that must not share them, as
    a benchmark measuring each run's memory); the next stage starts a new pool."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.close()


if __name__ == "__main__":
    try:
        _serve(*pickle.loads(sys.stdin.buffer.read()))
    except KeyboardInterrupt:  # the terminal's Ctrl-C reaches the whole process group
        pass
