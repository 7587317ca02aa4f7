"""Rules for ops that join, cut and index along a dim: cat/stack, split/chunk/
tensor_split/unbind, writes into a slice (copy_), getitem (slices, int indices, gathers)."""
from __future__ import annotations

import torch
import torch.fx as fx

from .base import RuleContext, concrete, norm_dim

__all__ = ["cat", "stack", "split", "tensor_split", "copy_into", "unbind", "getitem",
           "runtime_bounds"]


def cat(ctx: RuleContext) -> None:
    """cat(xs, dim): input k's elements sit at an offset in the output."""
    tensors = ctx.raw(0) if ctx.node.args else ctx.node.kwargs.get("tensors")
    y = ctx.out()
    if y is None:
        return
    d = norm_dim(ctx.value(1, "dim", 0), y.ndim)
    offset = 0
    for t in tensors:
        r = ctx.ref(t)
        if r is None:
            continue
        n = r.shape[d]
        for k in range(y.ndim):
            if k == d:
                ctx.shift(r, k, 0, y, k, offset, n)
            else:
                ctx.couple(r, k, y, k)
        offset += n


def stack(ctx: RuleContext) -> None:
    tensors = ctx.raw(0) if ctx.node.args else ctx.node.kwargs.get("tensors")
    y = ctx.out()
    if y is None:
        return
    d = norm_dim(ctx.value(1, "dim", 0), y.ndim)
    ctx.freeze(y, d, "stacked dim")
    for t in tensors:
        r = ctx.ref(t)
        for k in range(r.ndim if r is not None else 0):
            ctx.couple(r, k, y, k if k < d else k + 1)


def split(ctx: RuleContext, dim_pos: int = 2) -> None:
    """split/chunk: output k is the slice [offset_k, offset_k + n_k) of the input."""
    x = ctx.arg(0)
    outs = ctx.outs()
    if x is None or not outs:
        return
    d = norm_dim(ctx.value(dim_pos, "dim", 0), x.ndim)
    offset = 0
    for r in outs:
        if r is None:
            continue
        n = r.shape[d]
        for k in range(x.ndim):
            if k == d:
                ctx.shift(x, k, offset, r, k, 0, n)
            else:
                ctx.couple(x, k, r, k)
        offset += n


def tensor_split(ctx: RuleContext) -> None:
    """tensor_split(x, indices_or_sections, dim): split's rule when the pieces tile the dim in
    order. Unsorted indices make pieces overlap (``[3, 1]`` gives x[:3], x[3:1], x[1:]):
    their sizes then add up to more than the dim, and the dim is frozen instead."""
    x, outs = ctx.arg(0), ctx.outs()
    if x is None or not outs or any(r is None for r in outs):
        return
    d = norm_dim(ctx.value(2, "dim", 0), x.ndim)
    if sum(r.shape[d] for r in outs) == x.shape[d]:
        split(ctx)
        return
    ctx.freeze(x, d, "tensor_split with unsorted indices (overlapping pieces)")
    for r in outs:
        ctx.freeze(r, d, "tensor_split with unsorted indices (overlapping pieces)")
        for k in range(x.ndim):
            if k != d:
                ctx.couple(x, k, r, k)


def copy_into(ctx: RuleContext) -> None:
    """self.copy_(src) / aten.copy(self, src): src broadcast into self's shape; the result
    is self (the same tensor, written in place), so self's dims are the result's and src's
    dims align from the right where their sizes match."""
    dst, y = ctx.arg(0), ctx.out()
    if dst is None or y is None:
        return
    ctx.space.couple_all(dst, y, ctx.node.name)
    src = ctx.arg(1, "src")
    if src is None:  # a python scalar: nothing to couple
        return
    for j in range(1, min(src.ndim, y.ndim) + 1):
        if src.shape[-j] == y.shape[-j]:  # a size-1 dim broadcast into y stays size 1
            ctx.couple(src, -j, y, -j)


def unbind(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    if x is None:
        return
    d = norm_dim(ctx.value(1, "dim", 0), x.ndim)
    ctx.freeze(x, d, "unbound dim")
    for r in ctx.outs():
        for k in range(r.ndim if r is not None else 0):
            ctx.couple(x, k if k < d else k + 1, r, k)


def getitem(ctx: RuleContext) -> None:
    """x[idx] with ints, slices, None and Ellipsis. Step-1 slices of a dim link
    (their bounds are rewritten by shrink); other slices and ints freeze."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    idx = ctx.node.args[1]
    idx = idx if isinstance(idx, tuple) else (idx,)
    if _gather(ctx, x, y, idx):
        return
    dynamic = [runtime_bounds(i) for i in idx]
    idx = tuple(_concrete_index(i) for i in idx)  # sizes read from shapes: their values
    if any(isinstance(i, (fx.Node, list)) for i in idx):
        ctx.freeze_all(x, "advanced indexing", "barrier")
        ctx.freeze_all(y, "advanced indexing", "barrier")
        return
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded: list = []
    for i, dyn in zip(idx, dynamic):
        expanded.extend([(slice(None), False)] * (x.ndim - n_real) if i is Ellipsis
                        else [(i, dyn)])
    expanded.extend([(slice(None), False)]
                    * (x.ndim - sum(1 for i, _ in expanded if i is not None)))
    xd = yd = 0
    for i, dyn in expanded:
        if i is None:
            ctx.freeze(y, yd, "new axis", "structural")
            yd += 1
        elif isinstance(i, int):
            ctx.freeze(x, xd, "indexed by an integer")
            xd += 1
        else:
            start, stop, step = i.indices(x.shape[xd])
            if dyn and (start, stop, step) != (0, x.shape[xd], 1):
                # bounds computed at run time: shrink cannot rewrite them to the kept units
                ctx.freeze(x, xd, "slice bounds computed at run time")
                ctx.freeze(y, yd, "slice bounds computed at run time")
            elif step == 1:
                n = y.shape[yd]
                ctx.shift(x, xd, start, y, yd, 0, n)
            else:
                ctx.freeze(x, xd, "strided slice")
                ctx.freeze(y, yd, "strided slice")
            xd, yd = xd + 1, yd + 1


def runtime_bounds(i) -> bool:
    """A slice whose bounds are computed at run time (graph nodes, e.g. ``x.shape[2] - 1``):
    the analysis links it only when it spans the whole dim, and shrink leaves it alone."""
    return isinstance(i, slice) and any(isinstance(b, fx.Node) for b in (i.start, i.stop, i.step))


def _concrete_index(i):
    """An index item with the scalars it reads off shapes replaced by their values; an
    item that stays a node (a tensor index) is returned as it is."""
    if isinstance(i, slice):
        return slice(*(concrete(b) for b in (i.start, i.stop, i.step)))
    if isinstance(i, fx.Node):
        v = concrete(i)
        return v if isinstance(v, int) and not isinstance(v, bool) else i
    return i


def _integer_tensor(v) -> bool:
    meta = v.meta.get("tensor_meta") if isinstance(v, fx.Node) else None
    return meta is not None and hasattr(meta, "dtype") and not meta.dtype.is_floating_point \
        and meta.dtype is not torch.bool and not meta.dtype.is_complex


def _gather(ctx: RuleContext, x, y, idx: tuple) -> bool:
    """``x[:, ..., :, index]`` with one integer index tensor after full slices (embedding
    tables, attention-bias tables ``biases[:, idxs]``): the indexed dim of x is gathered
    (frozen), so are the index's dims in y; the dims before and after pass through."""
    nodes = [k for k, i in enumerate(idx) if isinstance(i, fx.Node)]
    if len(nodes) != 1 or not all(i == slice(None) for k, i in enumerate(idx) if k != nodes[0]):
        return False
    p, index = nodes[0], ctx.ref(idx[nodes[0]])
    if index is None or not _integer_tensor(idx[p]) or p >= x.ndim:
        return False
    ctx.freeze(x, p, "gathered by an index tensor", "structural")
    ctx.freeze_all(index, "index tensor", "structural")
    for k in range(p):
        ctx.couple(x, k, y, k)
    for k in range(index.ndim):
        ctx.freeze(y, p + k, "gathered entries", "structural")
    for k in range(p + 1, x.ndim):
        ctx.couple(x, k, y, index.ndim + k - 1)
    return True
