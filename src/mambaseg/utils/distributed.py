"""Distributed (``torchrun``) context: rank/world size from the launcher's environment, collective helpers.

The library never sets environment variables or chooses GPUs: under ``torchrun`` it reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` (set by the launcher) and uses ``LOCAL_RANK`` only to select the CUDA
device the launcher assigned to this process. Without a launcher everything degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "all_reduce_sum", "all_gather_objects", "barrier", "collective_device"]


@dataclass
class DistContext:
    """Where this process sits in a (possibly single-process) run.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes.
        local_rank: rank on this host.
        initialized_here: True when :func:`init_distributed` created the process group (and should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self.initialized_here and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def init_distributed(device_type: str) -> DistContext:
    """Join the process group started by ``torchrun`` (or return a single-process context).

    Args:
        device_type: ``"cuda"`` (NCCL backend) or ``"cpu"`` (gloo backend).

    Returns:
        The :class:`DistContext` of this process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    here = False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        here = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, initialized_here=here)


def collective_device(device: torch.device, group: Any = None) -> torch.device:
    """Where a tensor on ``device`` must be for a collective: NCCL reduces CUDA tensors only (this process's
    current CUDA device); other backends take it where it is."""
    if dist.get_backend(group) == "nccl" and device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``t`` over all processes (no-op in a single process); returns a new tensor on ``t``'s device."""
    if not ctx.enabled:
        return t.clone()
    out = t.to(collective_device(t.device), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Gather one picklable object per process, in rank order (``[obj]`` in a single process)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Synchronise all processes (no-op in a single process)."""
    if ctx.enabled:
        dist.barrier()
