"""Resuming a run exactly: the random generators' state that a periodic checkpoint carries, the
check that a checkpoint fits the processes resuming it, and keeping only the newest checkpoints.

With the optimizer's state (model/optimizer.py) and the data position (model/run.py) this is
what lets a stopped run continue with the same dropout masks and batches it would have had.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import step_checkpoints
from model.distributed import Distributed


class ResumeError(ValueError):
    """A checkpoint this run cannot resume from as it was started."""


def rng_state(dist: Distributed, device: torch.device) -> dict[str, Any]:
    """Every random generator's state; with several ranks, each rank's too (every rank must call it)."""
    state = {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": random.getstate(),
    }
    if dist.enabled:
        # Each rank has its own dropout generator; an exact resume needs all of them.
        state["world_size"] = dist.world_size
        state["rank_rng"] = dist.gather({
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        })
    return state


def check_world_size(path: Path, state: dict[str, Any], dist: Distributed) -> None:
    """Raises ResumeError unless the checkpoint was trained by as many processes as resume it."""
    trained_by = state.get("world_size", 1)
    if trained_by != dist.world_size:
        raise ResumeError(f"{path} was trained by {trained_by} process(es), this is {dist.world_size}: the "
                          f"batches and the data position depend on that number. Resume with {trained_by} "
                          "(torchrun --nnodes x --nproc-per-node), or start a new run from it with --init-from")


def restore_rng(state: dict[str, Any], dist: Distributed, device: torch.device) -> None:
    """Put back the generators `rng_state` saved, this rank's own last."""
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if "rank_rng" in state:
        own = state["rank_rng"][dist.rank]
        torch.set_rng_state(own["torch"])
        if own["cuda"] is not None:
            torch.cuda.set_rng_state(own["cuda"], device)
    random.setstate(state["python_rng"])


def keep_newest(directory: Path, keep: int) -> None:
    """Delete all but the `keep` newest periodic checkpoints in `directory`."""
    for old in step_checkpoints(directory)[:-keep]:
        shutil.rmtree(old)
