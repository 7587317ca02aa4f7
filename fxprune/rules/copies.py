"""Rules for ops that repeat or window a dim: ``repeat`` / ``tile`` and ``Tensor.unfold``.

``x.repeat(1, 2, 1)`` copies dim 1 twice: a dim repeated more than once is frozen (its
copies are one unit each but shrink would have to know the count), a dim repeated once
is kept one to one. ``x.unfold(d, size, step)`` cuts dim d into sliding windows (a new
last dim): every other dim is kept one to one, d and the window dim are frozen (HaloNet
and similar local attention unfold spatial dims only, so their channels stay prunable).
"""
from __future__ import annotations

from .base import RuleContext, concrete, norm_dim

__all__ = ["repeat", "unfold"]


def _reps(ctx: RuleContext) -> tuple[int, ...] | None:
    """``repeat(x, *sizes)`` / ``repeat(x, sizes)`` / ``tile(x, dims)``: the repeat counts,
    None when they are not all known integers."""
    args = ctx.node.args[1:]
    if len(args) == 1:
        reps = ctx.value(1)
    elif args:
        reps = tuple(ctx.value(i) for i in range(1, len(args) + 1))
    else:
        kw = ctx.node.kwargs
        reps = concrete(next((kw[k] for k in ("dims", "repeats", "sizes") if k in kw), None))
    reps = (reps,) if isinstance(reps, int) else reps
    if isinstance(reps, (list, tuple)) and reps and all(isinstance(r, int) for r in reps):
        return tuple(reps)
    return None


def repeat(ctx: RuleContext) -> None:
    """repeat / tile: reps padded with leading 1s to the output rank (tile pads the input's
    dims instead, the same alignment from the right); a dim repeated once is kept."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    reps = _reps(ctx)
    if reps is None:
        ctx.freeze_all(x, "repeat counts unknown")
        ctx.freeze_all(y, "repeat counts unknown")
        return
    lead = y.ndim - x.ndim  # output dims before the input's first dim
    padded = (1,) * (y.ndim - len(reps)) + tuple(reps)
    for k in range(x.ndim):
        if padded[lead + k] == 1:
            ctx.couple(x, k, y, lead + k)
        else:
            ctx.freeze(x, k, f"repeated {padded[lead + k]} times")
            ctx.freeze(y, lead + k, f"repeated {padded[lead + k]} times")
    for k in range(lead):
        ctx.freeze(y, k, "new dim of repeat", "structural")


def unfold(ctx: RuleContext) -> None:
    """Tensor.unfold(dimension, size, step) -> windows along dim d, a new last dim."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    d = norm_dim(ctx.value(1, "dimension", 0), x.ndim)
    for k in range(x.ndim):
        if k == d:
            ctx.freeze(x, k, "unfolded into windows")
            ctx.freeze(y, k, "unfolded into windows")
        else:
            ctx.couple(x, k, y, k)
    ctx.freeze(y, y.ndim - 1, "window dim", "structural")
