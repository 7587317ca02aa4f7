"""The training loop every recipe runs: SGD + momentum, per-epoch LR, eval each epoch.

One function, `train`, serves plain runs, fine-tuning, rewinding (via
`start_epoch` and `lr_schedule`), distillation (`teacher`) and
DistributedDataParallel runs (when a process group is initialised, see
`fxprune.train.dist`). Each finished epoch is checkpointed atomically to
`cfg.out_dir`; `resume=True` continues the last checkpoint and, on CPU with
deterministic ops, ends with weights bit-identical to an uninterrupted run:
the shuffling order is a pure function of (seed, epoch) and the optimizer,
AMP-scaler and RNG states are all restored.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import SGD, Optimizer
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..errors import FxPruneError
from . import dist as D
from .checkpoint import (
    CHECKPOINT_NAME,
    atomic_save,
    get_rng_state,
    load_checkpoint,
    save_rewind_weights,
    set_rng_state,
)
from .config import LRSchedule, TrainConfig, TrainResult, resolve_device
from .losses import kd_loss
from .report import append_metrics, make_progress, write_metrics

__all__ = ["train", "evaluate", "GradHook", "StepHook", "EpochCallback"]

#: Called after backward (gradients unscaled under AMP), before the optimizer step.
GradHook = Callable[[nn.Module, Optimizer], None]
#: Called after every optimizer step, e.g. to re-apply unstructured masks.
StepHook = Callable[[nn.Module], None]
#: Called after an epoch's checkpoint is on disk, with (epoch, metrics record).
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class _Run:
    """Everything the per-step code needs, bundled so the helpers stay short."""

    model: nn.Module  # the user's module (unwrapped)
    net: nn.Module  # what is called in training: DDP(model) or model
    opt: Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool
    ctx: D.DistContext
    teacher: nn.Module | None
    kd_alpha: float
    kd_T: float
    grad_hook: GradHook | None
    after_step: StepHook | None


def train(
    model: nn.Module,
    train_data: Dataset,
    test_data: Dataset | None,
    cfg: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.9,
    kd_T: float = 4.0,
    grad_hook: GradHook | None = None,
    after_step: StepHook | None = None,
    start_epoch: int = 0,
    lr_schedule: LRSchedule | None = None,
    resume: bool = False,
    save_weights_at: Collection[int] | Literal["all"] | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> TrainResult:
    """Train `model` in place for epochs `start_epoch .. cfg.epochs - 1`.

    Epoch `e` runs at learning rate `lr_schedule(e)` (default `cfg.lr_at`), so a
    run with `start_epoch=E-t` replays the last t epochs of an E-epoch schedule.
    With `teacher`, the loss is `kd_loss(student, teacher, y, kd_alpha, kd_T)`
    and the teacher runs in eval mode under no_grad. `save_weights_at` lists the
    epoch counts k (0 = before training) whose weights are kept in
    `out_dir/weights/` for weight rewinding; "all" keeps every one.
    `resume=True` continues the checkpoint in `cfg.out_dir` (or starts fresh when
    there is none); without it an existing checkpoint is an error, never
    silently overwritten. The model is left in eval mode.
    """
    if not 0 <= start_epoch <= cfg.epochs:
        raise FxPruneError(f"start_epoch={start_epoch} is outside [0, epochs={cfg.epochs}].")
    schedule = lr_schedule or cfg.lr_at
    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
    ctx = D.context()
    was_training = teacher.training if teacher is not None else False
    run = _setup(model, cfg, ctx, teacher, kd_alpha, kd_T, grad_hook, after_step)
    keep = _keep_set(save_weights_at, cfg.epochs)
    ckpt = _existing_checkpoint(out_dir, resume)
    if ckpt is not None:
        epoch, history = _restore(ckpt, run, cfg)
    else:
        epoch, history = start_epoch, []
        _seed_everything(cfg.seed + ctx.rank)
        if out_dir is not None and ctx.is_main and epoch in keep:
            save_rewind_weights(out_dir, epoch, model.state_dict())
    if out_dir is not None and ctx.is_main:
        write_metrics(out_dir, history)  # drop lines a kill left past the checkpoint
    run.net = _wrap(model, run)
    loader, gen, sampler = _train_loader(train_data, cfg, ctx)
    test_loader = _eval_loader(test_data, cfg.eval_batch_size, ctx)
    try:
        with make_progress(cfg.progress and ctx.is_main) as prog:
            ep_task = prog.add_task("epochs", total=cfg.epochs, completed=epoch, info="")
            for e in range(epoch, cfg.epochs):
                sampler.set_epoch(e)
                gen.manual_seed(cfg.seed + e)
                rec = _run_epoch(run, loader, test_loader, e, float(schedule(e)), prog)
                history.append(rec)
                _end_epoch(run, cfg, out_dir, e, history, keep)
                prog.update(ep_task, advance=1, info=_info(rec))
                if on_epoch_end is not None:
                    on_epoch_end(e, rec)
    finally:
        if teacher is not None:
            teacher.train(was_training)
    return TrainResult(history, dict(history[-1]) if history else {}, model, out_dir)


def _setup(model, cfg, ctx, teacher, kd_alpha, kd_T, grad_hook, after_step) -> _Run:
    device = resolve_device(cfg.device)
    if ctx.distributed and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    model.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    amp = bool(cfg.amp and device.type == "cuda")
    opt = SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
              weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    return _Run(model, model, opt, scaler, device, amp, ctx, teacher, kd_alpha, kd_T,
                grad_hook, after_step)


def _wrap(model: nn.Module, run: _Run) -> nn.Module:
    if not run.ctx.distributed:
        return model
    ids = [run.device.index] if run.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _keep_set(save_weights_at: Any, epochs: int) -> frozenset[int]:
    if save_weights_at is None:
        return frozenset()
    if save_weights_at == "all":
        return frozenset(range(epochs + 1))
    bad = [k for k in save_weights_at if not 0 <= int(k) <= epochs]
    if bad:
        raise FxPruneError(f"save_weights_at={sorted(bad)} is outside [0, epochs={epochs}].")
    return frozenset(int(k) for k in save_weights_at)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _existing_checkpoint(out_dir: Path | None, resume: bool) -> dict[str, Any] | None:
    if out_dir is None:
        if resume:
            raise FxPruneError("resume=True needs cfg.out_dir: the run to resume lives there.")
        return None
    ckpt = load_checkpoint(out_dir)
    if ckpt is not None and not resume:
        raise FxPruneError(
            f"{out_dir / CHECKPOINT_NAME} already exists. Pass resume=True to continue that "
            "run, or choose another out_dir (fxprune never overwrites a run silently)."
        )
    return ckpt


def _restore(ckpt: dict[str, Any], run: _Run, cfg: TrainConfig) -> tuple[int, list[dict]]:
    want = cfg.fingerprint()
    diff = sorted(k for k in set(want) | set(ckpt["config"])
                  if want.get(k) != ckpt["config"].get(k))
    if diff:
        raise FxPruneError(
            f"cannot resume: the checkpoint was made with a different config ({diff}: "
            f"{[ckpt['config'].get(k) for k in diff]} there, {[want.get(k) for k in diff]} "
            "now). Use the original config or another out_dir."
        )
    try:
        run.model.load_state_dict(ckpt["model"])
        run.opt.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise FxPruneError(
            f"cannot resume: the checkpoint does not fit this model/optimizer ({e}). "
            "Pass the same architecture the run was started with."
        ) from e
    run.scaler.load_state_dict(ckpt["scaler"])
    rngs = ckpt["rng"]
    set_rng_state(rngs[run.ctx.rank] if len(rngs) == run.ctx.world_size else rngs[0])
    return int(ckpt["epoch"]), list(ckpt["history"])


def _train_loader(data: Dataset, cfg: TrainConfig, ctx: D.DistContext):
    # One sampler for every world size: with a fixed (seed, epoch) the global order is
    # the same permutation whether it is read by 1 process or interleaved over N.
    sampler = DistributedSampler(data, num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=cfg.shuffle, seed=cfg.seed, drop_last=False)
    gen = torch.Generator()
    loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, num_workers=0,
                        generator=gen)
    return loader, gen, sampler


def _eval_loader(data: Dataset | None, batch_size: int, ctx: D.DistContext):
    if data is None:
        return None
    if ctx.distributed:  # disjoint shards without padding; sums are all-reduced
        data = Subset(data, range(ctx.rank, len(data), ctx.world_size))
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)


def _step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast(device_type=run.device.type, dtype=torch.float16, enabled=run.amp):
        logits = run.net(x)
        if run.teacher is not None:
            with torch.no_grad():
                t_logits = run.teacher(x)
            loss = kd_loss(logits, t_logits, y, run.kd_alpha, run.kd_T)
        else:
            loss = F.cross_entropy(logits, y)
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.grad_hook is not None:
        run.scaler.unscale_(run.opt)
        run.grad_hook(run.model, run.opt)
    run.scaler.step(run.opt)
    run.scaler.update()
    if run.after_step is not None:
        run.after_step(run.model)
    return loss.detach(), logits.detach()


def _run_epoch(run: _Run, loader, test_loader, epoch: int, lr: float, prog) -> dict[str, float]:
    t0 = time.perf_counter()
    for group in run.opt.param_groups:
        group["lr"] = lr
    run.net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    correct = torch.zeros((), dtype=torch.int64, device=run.device)
    n = 0
    task = prog.add_task(f"epoch {epoch}", total=len(loader), info=f"lr {lr:.4g}")
    for x, y in loader:
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        loss, logits = _step(run, x, y)
        loss_sum += loss.double() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        n += y.shape[0]
        prog.advance(task)
    prog.remove_task(task)
    tot_loss, tot_correct, tot_n = D.all_reduce_sum([loss_sum.item(), correct.item(), n],
                                                    run.device)
    if not math.isfinite(tot_loss):
        raise FxPruneError(f"training diverged in epoch {epoch} (loss {tot_loss}) at lr {lr:g}; "
                           "lower the learning rate or enable gradient clipping via grad_hook.")
    test_loss, test_acc = _evaluate(run.model, test_loader, run.device, run.amp)
    return {"epoch": epoch, "lr": run.opt.param_groups[0]["lr"],
            "train_loss": tot_loss / max(tot_n, 1), "train_acc": tot_correct / max(tot_n, 1),
            "test_loss": test_loss, "test_acc": test_acc, "time": time.perf_counter() - t0}


@torch.no_grad()
def _evaluate(model: nn.Module, loader, device: torch.device, amp: bool) -> tuple[float, float]:
    if loader is None:
        return float("nan"), float("nan")
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        n += y.shape[0]
    loss_sum, correct, n = D.all_reduce_sum([loss_sum, correct, n], device)
    return loss_sum / max(n, 1), correct / max(n, 1)


def evaluate(model: nn.Module, data: Dataset, *, batch_size: int = 256,
             device: str | torch.device = "auto") -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy of `model` on `data` (eval mode, no grad)."""
    dev = resolve_device(device)
    model.to(dev)
    loss, acc = _evaluate(model, _eval_loader(data, batch_size, D.context()), dev, False)
    return {"loss": loss, "acc": acc}


def _end_epoch(run: _Run, cfg: TrainConfig, out_dir: Path | None, epoch: int,
               history: list[dict], keep: frozenset[int]) -> None:
    if out_dir is None:
        return
    rngs = D.gather_objects(get_rng_state())  # every rank takes part; rank 0 writes
    if not run.ctx.is_main:
        return
    done = epoch + 1
    if done in keep:  # before the checkpoint: a kill in between just redoes the epoch
        save_rewind_weights(out_dir, done, run.model.state_dict())
    atomic_save({
        "format": 1, "epoch": done, "model": run.model.state_dict(),
        "optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict(),
        "rng": rngs, "history": history, "config": cfg.fingerprint(),
        "world_size": run.ctx.world_size,
    }, out_dir / CHECKPOINT_NAME)
    append_metrics(out_dir, history[-1])


def _info(rec: dict[str, float]) -> str:
    return f"loss {rec['train_loss']:.3f} acc {rec['train_acc']:.3f} test {rec['test_acc']:.3f}"
