"""Training configuration, the explicit learning-rate schedule, and the run result.

The schedule is a pure function of the epoch (`TrainConfig.lr_at`) rather than a
stateful `torch.optim.lr_scheduler`: the rewinding recipes replay the tail of an
original schedule, and a resumed run needs nothing but the epoch number to pick
the learning rate back up.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import FxPruneError

__all__ = ["TrainConfig", "TrainResult", "LRSchedule", "SCHEDULES", "resolve_device"]

#: A learning-rate schedule: epoch index (0-based) -> learning rate for that epoch.
LRSchedule = Callable[[int], float]

SCHEDULES = ("step", "cosine", "constant")

# Fields that only say *where/how* a run executes; they may change between a
# run and its resumption without changing the result.
_RUNTIME_FIELDS = ("device", "out_dir", "progress")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run.

    `batch_size` is per process: under DistributedDataParallel the global batch
    is `batch_size * world_size`. `milestones` are fractions of `epochs`
    (0.5 -> the LR drops by `gamma` from epoch `round(0.5 * epochs)` on; halves
    round up).
    `amp` is honoured only on CUDA devices; on CPU training is always fp32.
    `device="auto"` picks CUDA when available.
    """

    epochs: int = 160
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    batch_size: int = 64
    eval_batch_size: int = 256
    shuffle: bool = True
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    out_dir: str | Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _check(isinstance(self.epochs, int) and self.epochs >= 0, "epochs", self.epochs,
               "a non-negative int")
        _check(self.lr > 0, "lr", self.lr, "> 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {SCHEDULES}")
        ms = tuple(float(m) for m in self.milestones)
        _check(all(0 < m <= 1 for m in ms) and list(ms) == sorted(ms), "milestones",
               self.milestones, "increasing fractions in (0, 1]")
        object.__setattr__(self, "milestones", ms)
        _check(0 < self.gamma <= 1, "gamma", self.gamma, "in (0, 1]")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, ">= 1")

    def lr_at(self, epoch: int) -> float:
        """Learning rate used for the whole of `epoch` (0-based) under this schedule."""
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1.0 + math.cos(math.pi * epoch / max(self.epochs, 1)))
        drops = sum(epoch >= math.floor(m * self.epochs + 0.5) for m in self.milestones)
        return self.lr * self.gamma**drops

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> dict[str, Any]:
        """The fields that determine the trained weights (used to refuse a bad resume)."""
        d = dataclasses.asdict(self)
        for k in _RUNTIME_FIELDS:
            d.pop(k)
        d["milestones"] = list(d["milestones"])
        return d


@dataclass
class TrainResult:
    """What `train` returns: per-epoch history, the last epoch's metrics, the model."""

    history: list[dict[str, float]]
    final: dict[str, float]
    model: nn.Module
    out_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` -> CUDA if available else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check(ok: bool, name: str, value: Any, want: str) -> None:
    if not ok:
        raise FxPruneError(f"TrainConfig.{name}={value!r} is invalid: expected {want}.")
