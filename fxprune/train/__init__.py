"""Retraining for pruned models: one SGD loop (`train`) and the recipes built on it.

    from fxprune.train import TrainConfig, train_original, fine_tune, weight_rewind
    cfg = TrainConfig(epochs=160, lr=0.1, out_dir="runs/orig")
    orig = train_original(model, train_set, test_set, cfg)
    ft = fine_tune(pruned, train_set, test_set, cfg.replace(out_dir="runs/ft"))

Every run checkpoints each epoch atomically, resumes exactly (`resume=True`),
writes `metrics.jsonl`, and runs unchanged under torchrun/DDP
(see `fxprune.train.ddp_demo`).
"""
from __future__ import annotations

from .checkpoint import available_rewind_epochs, load_rewind_weights
from .config import LRSchedule, TrainConfig, TrainResult
from .dist import DistContext, init_distributed
from .distill_lm import DistillLMResult, distill_lm
from .losses import kd_loss
from .loop import EpochCallback, GradHook, StepHook, evaluate, train
from .recipes import (
    PruneStep,
    RetrainStep,
    RewindFn,
    apply_rewind,
    distill,
    fine_tune,
    iterative,
    load_matching,
    lr_rewind,
    reinitialize,
    remaining_fraction_schedule,
    scratch_b,
    scratch_b_epochs,
    scratch_e,
    train_original,
    weight_rewind,
)
from .report import read_metrics

__all__ = [
    "DistContext", "EpochCallback", "GradHook", "LRSchedule", "PruneStep", "RetrainStep",
    "RewindFn", "StepHook", "TrainConfig", "TrainResult",
    "apply_rewind", "available_rewind_epochs", "distill", "distill_lm", "DistillLMResult", "evaluate", "fine_tune",
    "init_distributed", "iterative", "kd_loss", "load_matching", "load_rewind_weights",
    "lr_rewind", "read_metrics", "reinitialize", "remaining_fraction_schedule", "scratch_b",
    "scratch_b_epochs", "scratch_e", "train", "train_original", "weight_rewind",
]
