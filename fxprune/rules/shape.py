"""Rules for ops that move channels around: view/reshape/flatten (dim merges
and splits), permute, pad, roll, expand, pixel and channel shuffles (joining,
cutting and indexing along a dim: slicing.py)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.fx as fx

from .base import RuleContext, concrete, norm_dim

__all__ = [
    "identity", "reshape", "permute", "transpose", "pad", "roll", "expand", "pixel_shuffle",
    "pixel_unshuffle", "channel_shuffle", "reshape_blocks", "reshape_as", "expand_as",
    "self_only",
]


def identity(ctx: RuleContext) -> None:
    """contiguous/clone/to/detach: same tensor, same dims."""
    x, y = ctx.arg(0), ctx.out()
    if x is not None and y is not None:
        ctx.space.couple_all(x, y, ctx.node.name)


def self_only(ctx: RuleContext) -> None:
    """x.type_as(other): x's values, other's dtype; other's channels play no part."""
    identity(ctx)


def _shaped_like(ctx: RuleContext) -> None:
    """The result has ``other``'s shape, dim for dim: a pruned dim of one is a pruned dim of
    the other, or the call fails (``reshape_as(self.weight)`` in weight-standardised convs)."""
    other, y = ctx.arg(1, "other"), ctx.out()
    if other is not None and y is not None and tuple(other.shape) == tuple(y.shape):
        ctx.space.couple_all(other, y, ctx.node.name)


def reshape_as(ctx: RuleContext) -> None:
    """x.reshape_as(other) / x.view_as(other): a reshape to ``other``'s shape."""
    reshape(ctx)
    _shaped_like(ctx)


def expand_as(ctx: RuleContext) -> None:
    """x.expand_as(other): broadcast to ``other``'s shape."""
    expand(ctx)
    _shaped_like(ctx)


def reshape_blocks(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of dims of ``a`` and ``b`` with equal products (size-1 dims stand alone)."""
    blocks, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1:
            blocks.append(([i], []))
            i += 1
            continue
        if j < len(b) and b[j] == 1:
            blocks.append(([], [j]))
            j += 1
            continue
        if i >= len(a) or j >= len(b):
            blocks.append((list(range(i, len(a))), list(range(j, len(b)))))
            break
        ia, jb, pa, pb = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                pa *= a[i]; ia.append(i); i += 1  # noqa: E702
            elif pb < pa and j < len(b):
                pb *= b[j]; jb.append(j); j += 1  # noqa: E702
            else:
                break
        blocks.append((ia, jb))
    return blocks


_MOVERS = {"permute", "transpose", "contiguous", "clone", "to", "float", "half", "detach",
           "_to_copy", "alias"}


def _op_name(node: fx.Node) -> str:
    """The op's name: a method name, a function name, or an ATen op's without overload."""
    if node.op == "call_method":
        return node.target
    return getattr(node.target, "__name__", "").split(".")[0]  # aten: "transpose.int"


def _fate(node: fx.Node, dim: int, depth: int = 8) -> str:
    """Follow dim ``dim`` of ``node`` through permutes: is it later indexed away, or
    merged back as an inner dim? ('indexed' | 'inner' | 'other')."""
    import operator

    if depth == 0:
        return "other"
    fates = []
    for user in node.users:
        name = _op_name(user)
        if name in ("permute", "transpose", "swapaxes", "swapdims"):
            shape = user.meta.get("tensor_meta")
            if shape is None:
                continue
            perm = _perm_of(user, len(shape.shape))
            fates.append(_fate(user, perm.index(dim), depth - 1))
        elif name in _MOVERS:
            fates.append(_fate(user, dim, depth - 1))
        elif name in ("unbind", "select"):
            d = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
            fates.append("indexed" if norm_dim(d, _ndim(node)) == dim else "other")
        elif user.op == "call_function" and user.target is operator.getitem:
            idx = user.args[1]
            idx = idx if isinstance(idx, tuple) else (idx,)
            fates.append("indexed" if dim < len(idx) and isinstance(idx[dim], int) else "other")
        elif name in ("view", "reshape", "flatten", "_unsafe_view"):
            meta = user.meta.get("tensor_meta")
            if meta is None:
                continue
            for ins, outs in reshape_blocks(_shape(node), tuple(meta.shape)):
                big = [k for k in ins if _shape(node)[k] > 1]
                if dim in big and len(outs) == 1 and big.index(dim) > 0:
                    fates.append("inner")
    for f in ("indexed", "inner"):
        if f in fates:
            return f
    return "other"


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _ndim(node: fx.Node) -> int:
    return len(_shape(node))


def _perm_of(node: fx.Node, ndim: int) -> list[int]:
    from .base import concrete

    args = [concrete(a) for a in node.args[1:]]
    name = _op_name(node)
    if name in ("transpose", "swapaxes", "swapdims"):
        d0 = norm_dim(args[0] if args else node.kwargs["dim0"], ndim)
        d1 = norm_dim(args[1] if len(args) > 1 else node.kwargs["dim1"], ndim)
        perm = list(range(ndim))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
    if not dims:
        dims = node.kwargs.get("dims")
    return [norm_dim(d, ndim) for d in dims]


def reshape(ctx: RuleContext) -> None:
    """view/reshape/flatten/squeeze/unsqueeze: dims are matched in blocks of equal
    product. 1↔1 is identity. A merge (C,H,W)→CHW ties channel c to a contiguous
    block (the outermost dim carries the units, inner dims are frozen). A split
    D→(..) picks one output dim as carrier (not one indexed away or merged back
    as an inner dim: heads, shuffle groups) and freezes the others."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    for ins, outs in reshape_blocks(x.shape, y.shape):
        if not ins or not outs:
            for k in ins:
                ctx.freeze(x, k, "size-1 dim", "structural")
            for k in outs:
                ctx.freeze(y, k, "size-1 dim", "structural")
        elif len(ins) == 1 and len(outs) == 1:
            ctx.couple(x, ins[0], y, outs[0])
        elif len(outs) == 1:
            _merge(ctx, x, ins, y, outs[0])
        elif len(ins) == 1:
            _split(ctx, x, ins[0], y, outs)
        else:
            for k in ins:
                ctx.freeze(x, k, f"reshape {x.shape}->{y.shape} mixes dims")
            for k in outs:
                ctx.freeze(y, k, f"reshape {x.shape}->{y.shape} mixes dims")


def _merge(ctx: RuleContext, x, ins: list[int], y, out: int) -> None:
    carrier, inner = ins[0], math.prod(x.shape[k] for k in ins[1:])
    for k in ins[1:]:
        ctx.freeze(x, k, "inner dim of a merge")
    flat = np.arange(y.shape[out])
    ctx.link(x, carrier, flat // inner, y, out, flat, "block")


def _split(ctx: RuleContext, x, inp: int, y, outs: list[int]) -> None:
    fates = {k: _fate(ctx.node, k) for k in outs}
    ranked = [k for k in outs if fates[k] == "other"] or outs
    carrier = ranked[0]
    stride = math.prod(y.shape[k] for k in outs if k > carrier)
    for k in outs:
        if k != carrier:
            ctx.freeze(y, k, "non-carrier dim of a split")
    flat = np.arange(x.shape[inp])
    ctx.link(x, inp, flat, y, carrier, (flat // stride) % y.shape[carrier], "strided")


def permute(ctx: RuleContext) -> None:
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    for o, i in enumerate(_perm_of(ctx.node, x.ndim)):
        ctx.couple(x, i, y, o)


transpose = permute


def pad(ctx: RuleContext) -> None:
    """F.pad: constant padding keeps the input at an offset; the padded entries are
    fresh elements (shrink rewrites the pad widths). Other modes freeze the dim."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    widths = list(ctx.value(1, "pad", ()))
    mode = ctx.value(2, "mode", "constant")
    padded = {}
    for j in range(len(widths) // 2):
        padded[x.ndim - 1 - j] = (widths[2 * j], widths[2 * j + 1])
    for k in range(x.ndim):
        lo, hi = padded.get(k, (0, 0))
        if (lo, hi) == (0, 0):
            ctx.couple(x, k, y, k)
        elif mode == "constant" and lo >= 0 and hi >= 0:
            n = x.shape[k]
            ctx.shift(x, k, 0, y, k, lo, n)
        else:
            ctx.freeze(x, k, f"{mode} padding")
            ctx.freeze(y, k, f"{mode} padding")


def roll(ctx: RuleContext) -> None:
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    dims = ctx.value(2, "dims", None)
    dims = [] if dims is None else ([dims] if isinstance(dims, int) else list(dims))
    rolled = {norm_dim(d, x.ndim) for d in dims} if dims else set(range(x.ndim))
    for k in range(x.ndim):
        if k in rolled:
            ctx.freeze(x, k, "rolled dim")
            ctx.freeze(y, k, "rolled dim")
        else:
            ctx.couple(x, k, y, k)


def expand(ctx: RuleContext) -> None:
    """expand/expand_as/broadcast_to: like broadcasting from the right."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    for j in range(1, x.ndim + 1):
        if x.shape[-j] == y.shape[-j]:
            ctx.couple(x, -j, y, -j)
    for j in range(x.ndim + 1, y.ndim + 1):
        ctx.freeze(y, -j, "new leading dim of expand")


def _factor(ctx: RuleContext) -> int:
    if ctx.module is not None:
        return int(getattr(ctx.module, "upscale_factor", getattr(ctx.module, "downscale_factor", 1)))
    return int(ctx.value(1, "upscale_factor", ctx.value(1, "downscale_factor", 1)))


def _pixel_blocks(ctx: RuleContext, coarse_is_output: bool) -> None:
    """Channel c of the coarse side owns the block [c*r², (c+1)*r²) of the fine side."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    r2 = _factor(ctx) ** 2
    ctx.couple(x, 0, y, 0)
    fine = x if coarse_is_output else y
    flat = np.arange(fine.shape[1])
    if coarse_is_output:
        ctx.link(x, 1, flat, y, 1, flat // r2, "block")
    else:
        ctx.link(x, 1, flat // r2, y, 1, flat, "block")
    for k in (2, 3):
        ctx.freeze(x, k, "spatial dim", "structural")
        ctx.freeze(y, k, "spatial dim", "structural")


def pixel_shuffle(ctx: RuleContext) -> None:
    """(B, C*r², H, W) → (B, C, rH, rW): output channel c owns input block [c*r², (c+1)*r²)."""
    _pixel_blocks(ctx, coarse_is_output=True)


def pixel_unshuffle(ctx: RuleContext) -> None:
    """(B, C, rH, rW) → (B, C*r², H, W): input channel c owns output block [c*r², (c+1)*r²)."""
    _pixel_blocks(ctx, coarse_is_output=False)


def channel_shuffle(ctx: RuleContext) -> None:
    """channel_shuffle(x, g): input k*(C/g)+j goes to output j*g+k; unit j spans all k."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    g = int(ctx.module.groups if ctx.module is not None else ctx.value(1, "groups"))
    C = x.shape[1]
    per = C // g
    c = np.arange(C)
    k, j = c // per, c % per
    ctx.link(x, 1, c, y, 1, j * g + k, "permute")
    ctx.link(x, 1, c, x, 1, j, "strided")
    for d in range(x.ndim):
        if d != 1:
            ctx.couple(x, d, y, d)
