"""Importance of the units of a Hugging Face model: L2 magnitude, activation, Taylor.

- ``l2``: the L2 norm of every weight entry the unit owns (all its slots).
- ``activation`` (NVIDIA Minitron, Muralidharan et al. 2024): the mean over
  calibration tokens of the unit's activation magnitude where the unit is
  read: per head the L2 norm of the head's attention output (the input of
  ``o_proj``, one ``head_dim`` block per head; a KV group sums its query
  heads), per MLP channel ``|input of down_proj|``, per hidden channel
  ``|output of every LayerNorm/RMSNorm|`` averaged over all the norms.
- ``taylor`` (Molchanov et al. 2019): ``sum over batches (sum_unit g * w)^2``,
  the squared first-order estimate of the loss change when the unit is
  removed. The loss is the next-token loss for models that generate, else
  the mean square of the first output (a label-free proxy).

Scores are computed with forward hooks and ``torch.autograd.grad``: the model
is neither modified nor left with ``.grad`` tensors.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .errors import FxPruneError
from .hf_layout import Slot, UnitSet

__all__ = ["CRITERIA", "score_units", "unit_view", "as_batch"]

CRITERIA = ("l2", "activation", "taylor")


def unit_view(t: torch.Tensor, slot: Slot, size: int) -> torch.Tensor:
    """``[size, entries]``: row ``i`` holds the entries of ``t`` unit ``i`` owns in ``slot``."""
    part = t.narrow(slot.dim, slot.offset, size * slot.block).movedim(slot.dim, 0)
    return part.reshape(size, -1)


def as_batch(x: Any) -> dict[str, torch.Tensor]:
    """Keyword arguments of one forward: from ``input_ids``, a tuple starting with them, a dict."""
    if isinstance(x, dict):
        return dict(x)
    if isinstance(x, (tuple, list)):
        x = x[0]
    if not isinstance(x, torch.Tensor):
        raise FxPruneError(f"calibration batch of type {type(x).__name__}: expected a tensor of "
                           "token ids, a tuple starting with one, or a dict of model inputs")
    return {"input_ids": x.unsqueeze(0) if x.dim() == 1 else x}


def _unit_sq_norms(t: torch.Tensor, slot: Slot, size: int) -> torch.Tensor:
    """``[size]``: the squared L2 norm of each unit's entries in ``slot`` (as ``unit_view``
    rows, without copying the tensor into that layout), accumulated in float32."""
    part = t.detach().narrow(slot.dim, slot.offset, size * slot.block)
    others = [d for d in range(t.dim()) if d != slot.dim]
    if not others:
        sq = part.float().square()
    elif slot.dim == 0:  # reduce the inner dims: vector_norm's fast path
        sq = torch.linalg.vector_norm(part, dim=others, dtype=torch.float32).square()
    else:  # the reduction crosses dim 0 (down_proj / o_proj columns), where vector_norm is
        sq = _outer_sq_sum(part, others)  # ~4x slower on CPU than a plain sum of squares
    return sq.reshape(size, slot.block).sum(1)


def _outer_sq_sum(part: torch.Tensor, dims: list[int], chunk_bytes: int = 2 << 20) -> torch.Tensor:
    """``(part ** 2).sum(dims)`` in float32, ``dims`` including 0, over row blocks of about
    ``chunk_bytes``: an embedding-sized temporary would cost more in fresh pages than the sum."""
    rows = max(1, chunk_bytes // max(1, part[0].numel() * 4))
    acc = None
    for c in part.split(rows, dim=0):
        f = c.float()
        s = (f * f).sum(dims)
        acc = s if acc is None else acc.add_(s)
    return acc


def _l2(params: dict[str, torch.Tensor], sets: list[UnitSet]) -> dict[tuple, torch.Tensor]:
    return {s.key: sum(_unit_sq_norms(params[sl.param], sl, s.size) for sl in s.slots).sqrt()
            for s in sets}


def _activation(model: nn.Module, sets: list[UnitSet], batches) -> dict[tuple, torch.Tensor]:
    total = {s.key: torch.zeros(s.size) for s in sets}
    tokens = {s.key: 0 for s in sets}

    def hook_for(s: UnitSet, use_output: bool):
        def hook(mod, args, output):
            a = (output if use_output else args[0]).detach().float()
            a = a.reshape(-1, s.size, s.probe_block)
            total[s.key] += a.norm(dim=2).sum(0).cpu()
            tokens[s.key] += a.shape[0]
        return hook

    handles = [model.get_submodule(name).register_forward_hook(hook_for(s, use_out))
               for s in sets for name, use_out in s.probes]
    try:
        with torch.no_grad():
            for b in batches:
                model(**b)
    finally:
        for h in handles:
            h.remove()
    return {k: total[k] / max(tokens[k], 1) for k in total}


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    if getattr(model, "can_generate", lambda: False)() and "input_ids" in batch:
        return model(**batch, labels=batch["input_ids"]).loss
    out = model(**batch)
    first = out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))
    return first.float().pow(2).mean()


def _taylor(model: nn.Module, params: dict[str, torch.Tensor], sets: list[UnitSet],
            batches) -> dict[tuple, torch.Tensor]:
    names = sorted({sl.param for s in sets for sl in s.slots})
    tensors = [params[n] for n in names]
    out = {s.key: torch.zeros(s.size) for s in sets}
    with torch.enable_grad():
        for b in batches:
            grads = torch.autograd.grad(_loss(model, b), tensors, allow_unused=True)
            gw = {n: (g * t).detach().float() if g is not None
                  else torch.zeros_like(t, dtype=torch.float)
                  for n, t, g in zip(names, tensors, grads)}
            for s in sets:
                first = sum(unit_view(gw[sl.param], sl, s.size).sum(1) for sl in s.slots)
                out[s.key] += first.pow(2).cpu()
    return out


def score_units(model: nn.Module, sets: list[UnitSet], criterion: str,
                batches: Iterable[Any] | None) -> dict[tuple, torch.Tensor]:
    """``{(kind, layer): scores[size]}`` for every unit set (higher = more important)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if criterion == "l2":
        return _l2(params, sets)
    if criterion not in CRITERIA:
        raise FxPruneError(f"criterion={criterion!r}: fxprune.hf knows {', '.join(CRITERIA)}")
    batches = [as_batch(b) for b in (batches or [])]
    if not batches:
        raise FxPruneError(f"criterion={criterion!r} needs calibration batches of token ids "
                           "(calibration=[ids, ...]) or example_inputs")
    was_training = model.training
    model.eval()
    try:
        if criterion == "activation":
            return _activation(model, sets, batches)
        return _taylor(model, params, sets, batches)
    finally:
        model.train(was_training)
