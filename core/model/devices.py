"""Where networks run: `cuda` when there is a GPU, else the CPU with a fair share of its cores."""

from __future__ import annotations

import os

import torch


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_device() -> str:
    """`cuda:{worker_id % n_gpus}` for a daisy worker when GPUs exist, else `cpu`."""
    if not torch.cuda.is_available():
        return "cpu"
    worker_id = 0
    try:
        import daisy

        worker_id = int(daisy.Context.from_env()["worker_id"])
    except (KeyError, ValueError, RuntimeError):
        pass
    return f"cuda:{worker_id % torch.cuda.device_count()}"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which cgroups and taskset set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def share_cores(workers_per_machine: int) -> int:
    """Give this process's torch its share of the cores: torch takes every core per
    process, so 2 workers on 2 cores ran 4 threads. Returns the threads set."""
    threads = max(1, available_cores() // max(1, workers_per_machine))
    torch.set_num_threads(threads)
    return threads
