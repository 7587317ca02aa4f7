"""Logit distillation of a pruned causal LM from its unpruned teacher.

    from fxprune.train.distill_lm import distill_lm
    res = distill_lm(pruned, original, token_batches, steps=200, lr=1e-4, out_dir="runs/kd")
    res.model.save_pretrained("out/")

`fxprune.train.distill` runs the image-classification loop (SGD, `(x, y)` datasets,
`[B, C]` logits); a causal LM needs a different step: token batches with no
labels, `[B, L, V]` logits compared position by position (`causal_lm_kd_loss`),
and AdamW, which is what LM fine-tuning uses. The student is copied unless
`inplace=True`; the teacher runs in eval mode under no_grad and its mode is
restored. With `out_dir`, a checkpoint (student, optimizer, step, RNG, history)
is written atomically every `save_every` steps and `resume=True` continues it.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FxPruneError
from .checkpoint import CHECKPOINT_NAME, atomic_save, get_rng_state, load_checkpoint, set_rng_state
from .losses import causal_lm_kd_loss
from .report import make_progress

__all__ = ["distill_lm", "DistillLMResult"]


@dataclass
class DistillLMResult:
    model: nn.Module
    history: list[dict[str, float]]  # one record per step: step, loss
    out_dir: Path | None


def _ids(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, dict):
        return batch["input_ids"], batch.get("attention_mask")
    ids = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(ids, torch.Tensor) or ids.dim() not in (1, 2):
        raise FxPruneError("distill_lm batches must be token-id tensors [L] or [B, L], tuples "
                           "starting with one, or dicts with input_ids")
    return (ids[None] if ids.dim() == 1 else ids), None


def _logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits


def distill_lm(student: nn.Module, teacher: nn.Module, batches: Iterable[Any], *,
               steps: int, lr: float = 1e-4, alpha: float = 0.9, T: float = 1.0,
               weight_decay: float = 0.0, out_dir: str | Path | None = None,
               save_every: int = 50, resume: bool = False, inplace: bool = False,
               progress: bool = True) -> DistillLMResult:
    """`steps` AdamW steps on `causal_lm_kd_loss(student, teacher, ids, alpha, T)`.

    `batches` is cycled if shorter than `steps`. Returns the trained student (in eval mode).
    """
    if steps < 1:
        raise FxPruneError(f"steps={steps!r}: expected an int >= 1")
    batches = list(batches)
    if not batches:
        raise FxPruneError("distill_lm: no batches")
    model = student if inplace else copy.deepcopy(student)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=weight_decay)
    out = Path(out_dir) if out_dir is not None else None
    start, history = _restore(model, opt, out, resume)
    was_training = teacher.training
    teacher.eval()
    model.train()
    stream = itertools.islice(itertools.cycle(batches), start, steps)
    try:
        with make_progress(progress) as prog:
            task = prog.add_task("distill", total=steps, completed=start, info="")
            for step, batch in enumerate(stream, start=start):
                ids, mask = _ids(batch)
                with torch.no_grad():
                    t_logits = _logits(teacher, ids, mask)
                loss = causal_lm_kd_loss(_logits(model, ids, mask), t_logits, ids, alpha, T, mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = float(loss.detach())
                history.append({"step": step + 1, "loss": value})
                prog.update(task, advance=1, info=f"loss {value:.4f}")
                if out is not None and ((step + 1) % save_every == 0 or step + 1 == steps):
                    _save(model, opt, out, step + 1, history)
    finally:
        teacher.train(was_training)
    return DistillLMResult(model.eval(), history, out)


def _save(model: nn.Module, opt, out: Path, step: int, history: list) -> None:
    atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "rng": get_rng_state(), "history": history}, out / CHECKPOINT_NAME)


def _restore(model: nn.Module, opt, out: Path | None, resume: bool) -> tuple[int, list]:
    ckpt = load_checkpoint(out) if out is not None else None
    if ckpt is None:
        return 0, []
    if not resume:
        raise FxPruneError(f"{out / CHECKPOINT_NAME} exists: pass resume=True to continue it, "
                           "or choose another out_dir")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"]), list(ckpt["history"])
