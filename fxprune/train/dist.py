"""The few torch.distributed helpers the training loop needs.

`train` calls `context()` to learn whether it runs under an initialised process
group (torchrun + `init_distributed`). With one process every helper is a no-op,
so the same loop serves single-process and DistributedDataParallel runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "context", "init_distributed", "all_reduce_sum", "gather_objects",
           "barrier"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and local rank (for its GPU)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes checkpoints and metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def context() -> DistContext:
    """The current process group's view, or a single-process context."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_distributed(backend: str | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment (no-op otherwise).

    `backend` defaults to nccl when CUDA is available and gloo on CPU. On CUDA the
    process is pinned to GPU `LOCAL_RANK`.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return context()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (identity with one process)."""
    if not context().distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """`[obj_of_rank_0, obj_of_rank_1, ...]` on every rank (`[obj]` with one process)."""
    ctx = context()
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if context().distributed:
        dist.barrier()
