"""Training stage: ResNet-56 on CIFAR-10 on the GPU, pruned with ``l1-filter`` preset
``resnet56-b``, then fine-tune vs Scratch-E vs LR rewinding, inside the time left.

The recipes are those of ``fxprune.train`` (Liu et al. 2019; Renda et al. 2020):

- original: E epochs, SGD lr 0.1 (x0.1 at 50% and 75%: ``TrainConfig.lr_at``), momentum
  0.9, weight decay 1e-4;
- fine-tune: the pruned weights, constant lr 1e-3 (the original's final lr) for t epochs;
- LR rewind: the pruned weights, the original's lrs of epochs E-t .. E-1 (t epochs);
- Scratch-E: the pruned architecture re-initialised (``fxprune.train.reinitialize`` with
  ``fxprune.models.init_weights``), the original's E-epoch schedule.

Fine-tune and LR rewind get the same budget t = round(t_frac * E), as in Renda et al.
The loop is written here rather than ``fxprune.train.train`` because that one reads a
``Dataset`` through a ``DataLoader``; here the data set lives on the device and every
epoch is augmented there in one gather (``gpu.data``). E is not fixed in advance: the
first original epoch is timed (its lr, 0.1, is the same for every E), then E is the
largest that fits the seconds left (``plan_epochs``). Every epoch checks the deadline;
a run cut short says so in its record.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.models import get_model, init_weights
from fxprune.train import TrainConfig, reinitialize

from .data import DeviceSplit, eval_batches, train_batches

__all__ = ["TrainSettings", "plan_epochs", "run_training", "evaluate"]

METHODS = ("fine-tune", "lr-rewind", "scratch-e")


@dataclass
class TrainSettings:
    model: str = "resnet56"
    model_kwargs: dict | None = None
    preset: str = "resnet56-b"
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    ft_lr: float = 1e-3
    t_frac: float = 0.5
    epochs: int | None = None      # None: decided from the measured epoch time
    min_epochs: int = 2
    max_epochs: int = 160
    safety: float = 1.15           # planned epoch time = measured x safety
    eval_batch_size: int = 1000
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def plan_epochs(epoch_s: float, seconds_left: float, s: TrainSettings) -> tuple[int, int, str]:
    """(E, t, note): the largest E whose remaining epochs fit ``seconds_left`` — E-1 more
    original epochs (one is done), t fine-tune, t LR-rewind, E Scratch-E."""
    def t_of(e: int) -> int:
        return min(e, max(1, round(s.t_frac * e)))

    def cost(e: int) -> float:
        return (e - 1 + 2 * t_of(e) + e) * epoch_s * s.safety

    for e in range(s.max_epochs, s.min_epochs - 1, -1):
        if cost(e) <= seconds_left:
            return e, t_of(e), f"largest E that fits {seconds_left:.0f}s at {epoch_s:.2f}s/epoch"
    e = s.min_epochs
    return e, t_of(e), (f"even E={e} needs {cost(e):.0f}s > {seconds_left:.0f}s left: "
                        "runs may be cut short")


class _Run:
    """A model and its optimizer; ``epoch(e, lr)`` trains one epoch on the device data."""

    def __init__(self, model: nn.Module, s: TrainSettings, device: torch.device):
        self.device, self.s = device, s
        self.model = model.to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=s.lr, momentum=s.momentum,
                                   weight_decay=s.weight_decay)
        self.amp = device.type == "cuda"  # bf16 autocast on the GPU, fp32 on the CPU

    def epoch(self, train: DeviceSplit, e: int, lr: float) -> dict[str, float]:
        t0 = time.perf_counter()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        n = 0
        for x, y in train_batches(train, self.s.batch_size, e, self.s.seed):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss_sum += loss.detach() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            n += y.shape[0]
        loss_v, acc = loss_sum.item() / max(n, 1), correct.item() / max(n, 1)  # one sync
        if not math.isfinite(loss_v):
            raise FloatingPointError(f"training diverged in epoch {e} at lr {lr:g} "
                                     f"(loss {loss_v})")
        return {"epoch": e, "lr": lr, "train_loss": loss_v, "train_acc": acc,
                "time_s": time.perf_counter() - t0}


@torch.no_grad()
def evaluate(model: nn.Module, test: DeviceSplit, batch_size: int) -> float:
    """Top-1 accuracy on ``test`` (eval mode, bf16 autocast on the GPU)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=test.device)
    for x, y in eval_batches(test, batch_size):
        with torch.autocast(test.device.type, dtype=torch.bfloat16,
                            enabled=test.device.type == "cuda"):
            correct += (model(x).argmax(1) == y).sum()
    return correct.item() / max(len(test), 1)


def _train_range(run: _Run, train: DeviceSplit, epochs: range, lr_at: Callable[[int], float],
                 budget, stop_at_s: float, est_s: float, rec: dict, log, name: str) -> None:
    """Epochs ``epochs`` of ``run`` into ``rec["history"]``, stopping at the deadline."""
    for e in epochs:
        if budget.until(stop_at_s) < est_s:
            rec["truncated"] = (f"stopped before epoch {e} of {epochs.start}..{epochs.stop - 1}: "
                                f"{budget.until(stop_at_s):.0f}s left, an epoch takes "
                                f"~{est_s:.1f}s")
            log(f"train: {name}: {rec['truncated']}")
            return
        h = run.epoch(train, e, float(lr_at(e)))
        rec["history"].append(h)
        log(f"train: {name} epoch {e} lr {h['lr']:.4g} loss {h['train_loss']:.3f} "
            f"train acc {h['train_acc']:.3f} ({h['time_s']:.1f}s)")


def _counts(model: nn.Module) -> dict[str, int]:
    c = fxprune.count(_to_cpu(model), torch.zeros(1, 3, 32, 32))
    return {"macs": int(c.macs), "params": int(c.params)}


def _to_cpu(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().float().to(memory_format=torch.contiguous_format).eval()


def run_training(results, budget, s: TrainSettings, splits: tuple[DeviceSplit, DeviceSplit],
                 stop_at_s: float, log=print) -> dict[str, Any]:
    """The whole comparison; ``results.doc["train"]`` is saved after every run."""
    train, test = splits
    device = train.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    doc = results.doc.setdefault("train", {})
    doc.update(settings=s.to_dict(), device=str(device), runs={})
    torch.manual_seed(s.seed)
    orig = _Run(get_model(s.model, **(s.model_kwargs or {})), s, device)
    rec: dict[str, Any] = {"history": []}
    doc["original"] = rec
    first = orig.epoch(train, 0, s.lr)
    rec["history"].append(first)
    epoch_s = first["time_s"]
    if s.epochs is None:
        E, t, note = plan_epochs(epoch_s, budget.until(stop_at_s), s)
    else:
        E, t, note = s.epochs, min(s.epochs, max(1, round(s.t_frac * s.epochs))), "fixed"
    cfg = TrainConfig(epochs=E, lr=s.lr, milestones=(0.5, 0.75), gamma=0.1)
    doc["plan"] = {"E": E, "t": t, "first_epoch_s": epoch_s, "note": note,
                   "paper_E": 160, "lr_at": [cfg.lr_at(e) for e in range(E)]}
    log(f"train: {len(train)} train / {len(test)} test images on {device}; first epoch "
        f"{epoch_s:.1f}s -> E={E}, t={t} ({note})")
    results.save()
    _train_range(orig, train, range(1, E), cfg.lr_at, budget, stop_at_s, epoch_s, rec, log,
                 "original")
    rec.update(epochs=len(rec["history"]), acc=evaluate(orig.model, test, s.eval_batch_size),
               **_counts(orig.model))
    log(f"train: original test acc {rec['acc']:.4f}")
    results.save()

    t0 = time.perf_counter()
    pr = fxprune.prune(_to_cpu(orig.model), torch.zeros(1, 3, 32, 32), criterion="l1-filter",
                       preset=s.preset)
    pruned = pr.module
    doc["pruned"] = {"preset": s.preset, "prune_s": time.perf_counter() - t0, **_counts(pruned),
                     "acc_no_retrain": evaluate(copy.deepcopy(pruned).to(device), test,
                                                s.eval_batch_size)}
    log(f"train: pruned ({s.preset}) {rec['macs'] / 1e6:.1f} -> "
        f"{doc['pruned']['macs'] / 1e6:.1f} MMACs, acc before retraining "
        f"{doc['pruned']['acc_no_retrain']:.4f}")
    results.save()

    recipes = {
        "fine-tune": (lambda: copy.deepcopy(pruned), range(t), lambda e: s.ft_lr),
        "lr-rewind": (lambda: copy.deepcopy(pruned), range(E - t, E), cfg.lr_at),
        "scratch-e": (lambda: reinitialize(copy.deepcopy(pruned), seed=s.seed, init=init_weights),
                      range(E), cfg.lr_at),
    }
    for name, (make, epochs, lr_at) in recipes.items():
        r: dict[str, Any] = {"history": [], "planned_epochs": len(epochs)}
        doc["runs"][name] = r
        run = _Run(make(), s, device)
        _train_range(run, train, epochs, lr_at, budget, stop_at_s, epoch_s, r, log, name)
        r.update(epochs=len(r["history"]), acc=evaluate(run.model, test, s.eval_batch_size),
                 time_s=sum(h["time_s"] for h in r["history"]))
        log(f"train: {name} test acc {r['acc']:.4f} ({r['epochs']} epochs)")
        results.save()
        del run
    return doc
