"""Data-parallel training over the processes `torchrun` starts: process group, sharding, collectives.

torchrun tells each process its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE). Without it there is one process, and every method of `Distributed` is the
identity or does nothing, so the training code has a single path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from model.device import DeviceError

# The other ranks wait at a barrier while rank 0 validates (greedy decoding of up to
# --valid-bleu-sentences) and saves; NCCL's default timeout of 10 minutes is too short for that.
TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # processes on this machine
    # This rank's device, for training and for the tensors of collectives (NCCL needs them on it).
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, logs, validates and writes files."""
        return self.rank == 0

    def shard(self, batch: list[int]) -> tuple[list[int], float]:
        """This rank's part of a global batch, and the weight of its loss (1, or 0 for a stand-in).

        Every rank builds the same global batches (same seed, same epoch), so all ranks take the
        same steps and no data is sent between processes. Rank r takes sentences r, r+N, r+2N,
        ...: the shards are disjoint, together they are the whole batch, so N ranks see exactly
        what one process sees, and their sizes differ by at most one sentence. DDP's gradient
        all-reduce needs every rank in every step, so no rank may sit one out; a batch with
        fewer sentences than ranks (the last one of the length-sorted order can be a single long
        pair) leaves some ranks nothing, and they train its first sentence with weight 0
        instead: zero gradients.
        """
        part = batch[self.rank :: self.world_size]
        if part:
            return part, 1.0
        return batch[:1], 0.0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` in DistributedDataParallel (which averages gradients over ranks), or as it is."""
        if not self.enabled:
            return module
        # The model's only buffers are constant position tables: nothing to broadcast each step.
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       forward_sync_buffers=False)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, value: float) -> float:
        """`value` summed over ranks."""
        if not self.enabled:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.item()

    def any(self, flag: bool) -> bool:
        """Whether `flag` is set on any rank: decisions to stop must be the same on all of them."""
        if not self.enabled:
            return flag
        count = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(count)
        return bool(count.item())

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values


@contextmanager
def process_group(backend: str, device: torch.device) -> Iterator[Distributed]:
    """This process's `Distributed`; inside, a process group when torchrun started several processes.

    backend: "auto" (NCCL for CUDA, Gloo for CPU), "nccl" or "gloo". On CUDA each process takes
    the GPU of its local rank.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Distributed(device=device)
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(f"local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible): "
                              "start at most one process per GPU (torchrun --nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    try:
        yield Distributed(rank=int(os.environ["RANK"]), world_size=world_size,
                          local_world_size=int(os.environ["LOCAL_WORLD_SIZE"]), device=device)
    finally:
        dist.destroy_process_group()
