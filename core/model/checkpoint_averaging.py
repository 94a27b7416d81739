"""Weight averaging of a run's consecutive checkpoints (stochastic weight averaging,
Izmailov et al. 2018, applied after the fact).

With batch-1 training the weights keep wandering around a minimum: neighbouring
checkpoints of one run differ in VOI by as much as two methods do. The mean of the
weights of the last few checkpoints lies nearer the middle of that region and is usually
better and steadier than any one of them. `torch.optim.swa_utils.AveragedModel` averages
while training; here the checkpoints already exist, so the average is a mean of their
state dicts. lsdflow's networks have no normalization statistics, so nothing needs to be
recomputed afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import LsdflowConfig
from .checkpoints import list_checkpoints, load_model, write_model_file


def average_state_dicts(paths: list[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """The element-wise mean of the networks' weights in `paths` (checkpoints or model
    files of one network)."""
    if not paths:
        raise ValueError("no checkpoints to average")
    total: dict[str, torch.Tensor] | None = None
    for path in paths:
        model, _ = load_model(path)  # checks that every file is an lsdflow network
        state = model.state_dict()
        if total is None:
            total = {k: v.detach().to(torch.float64).clone() for k, v in state.items()}
        elif state.keys() != total.keys() or any(state[k].shape != total[k].shape for k in state):
            raise ValueError(f"{path}: not the same network as {paths[0]}; only checkpoints of one run can be averaged")
        else:
            for key, value in state.items():
                total[key] += value.detach().to(torch.float64)
    return {k: (v / len(paths)).to(torch.float32) for k, v in total.items()}


def averaging_windows(checkpoint_dir: str | os.PathLike, last: list[int], size: int) -> list[list[tuple[int, Path]]]:
    """For each iteration in `last`, that checkpoint and the `size - 1` checkpoints of the
    run before it; windows that would reach before the run's first checkpoint are left out."""
    checkpoints = list_checkpoints(checkpoint_dir)
    position = {iteration: n for n, (iteration, _) in enumerate(checkpoints)}
    windows = []
    for iteration in last:
        n = position[iteration]
        if n + 1 >= size:
            windows.append(checkpoints[n + 1 - size:n + 1])
    return windows


def write_averaged_model(
    window: list[tuple[int, Path]], config: LsdflowConfig, out: str | os.PathLike
) -> Path:
    """A portable model file holding the average of the window's checkpoints (their network,
    `config`'s other settings); its iteration is the window's last, and
    `averaged_iterations` lists all of them."""
    iterations = [iteration for iteration, _ in window]
    network, _ = load_model(window[-1][1])
    return write_model_file(
        average_state_dicts([path for _, path in window]), config.with_model(network.config), out, iterations[-1],
        averaged_iterations=iterations,
    )
