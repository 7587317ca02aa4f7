"""Rules for ops that move channels around: view/reshape/flatten (dim merges
and splits), permute, cat/stack, split/chunk/unbind, indexing, pad, roll,
expand, pixel and channel shuffles."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.fx as fx

from .base import RuleContext, concrete, norm_dim

__all__ = [
    "identity", "reshape", "permute", "transpose", "cat", "stack", "split",
    "tensor_split", "copy_into", "unbind", "getitem", "pad", "roll", "expand", "pixel_shuffle",
    "pixel_unshuffle", "channel_shuffle", "reshape_blocks", "reshape_as", "expand_as",
    "self_only", "runtime_bounds",
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
