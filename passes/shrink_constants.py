"""Rewrite the size constants of a shrunk graph by running it once.

The graph is executed on meta tensors. Before each node runs, a fixer for its
op compares the sizes it is about to use (literal ints, or values computed from
other sizes) with the sizes the plan implies, and rewrites the node's
arguments where they differ. After each node runs, its shape is checked; a
mismatch raises ShrinkError naming the node.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.fx.passes.shape_prop import TensorMetadata

from fxprune.channel_graph import ChannelGraph
from fxprune.errors import ShrinkError
from fxprune.module_state import restore_attributes, snapshot_attributes
from fxprune.rules.slicing import runtime_bounds
from fxprune.shapes import MetaInterpreter

from .shrink_modules import new_shape

__all__ = ["fix_constants"]


class _Fixup(MetaInterpreter):
    def __init__(self, gm: fx.GraphModule, keep: dict[tuple[str, int], np.ndarray], meta: bool = True):
        super().__init__(gm, meta=meta)
        self.keep = keep

    # ---- expected sizes ----------------------------------------------
    def expected(self, node: fx.Node, k: int | None = None) -> list[int] | None:
        return new_shape(node, self.keep, k)

    def removed_before(self, node: fx.Node, d: int, pos: int) -> int:
        """How many of the first ``pos`` indices of dim d of ``node`` the plan removes."""
        kept = self.keep.get((f"n:{node.name}", d))
        if kept is None:
            return 0
        return pos - int(np.searchsorted(kept, pos))

    def value(self, v: Any) -> Any:
        return self.env[v] if isinstance(v, fx.Node) else v

    # ---- the run -----------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        fixer = _fixer_for(n)
        if fixer is not None:
            fixer(self, n)
        result = super().run_node(n)
        self.check(n, result)
        return result

    def check(self, n: fx.Node, result: Any) -> None:
        outs = [(None, result)] if isinstance(result, torch.Tensor) else (
            list(enumerate(result)) if isinstance(result, (tuple, list)) else [])
        for k, t in outs:
            if not isinstance(t, torch.Tensor):
                continue
            want = self.expected(n, k)
            if want is not None and list(t.shape) != want:
                raise ShrinkError(
                    f"after pruning, node {n.format_node()} has shape {list(t.shape)} but the plan "
                    f"implies {want}.\n  This op computes a size the rewrite cannot update; mark the "
                    f"module around it as a leaf or add it to ignore=.")


def _sizes_arg(n: fx.Node) -> tuple[list, Callable[[list], tuple]]:
    if len(n.args) == 2 and isinstance(n.args[1], (list, tuple)):
        return list(n.args[1]), lambda s: (n.args[0], tuple(s))
    return list(n.args[1:]), lambda s: (n.args[0], *s)


def fix_sizes(fx_: _Fixup, n: fx.Node) -> None:
    """view/reshape/expand: every explicit size must equal the new one (-1 stays)."""
    want = fx_.expected(n)
    sizes, rebuild = _sizes_arg(n)
    if want is None or len(sizes) != len(want):
        return
    new, changed = [], False
    for s, w in zip(sizes, want):
        v = fx_.value(s)
        if isinstance(v, int) and v != -1 and v != w:
            new.append(w)
            changed = True
        else:
            new.append(s)
    if changed:
        n.args = rebuild(new)


def fix_split(fx_: _Fixup, n: fx.Node) -> None:
    """split/chunk/tensor_split: the pieces keep their boundaries, so sizes become an explicit
    list (tensor_split's indices or section count turn into split sizes)."""
    x = n.args[0]
    dim = n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)
    meta = n.meta.get("tensor_meta")
    if not isinstance(meta, (list, tuple)):
        return
    d = dim % len(x.meta["tensor_meta"].shape)
    want = [fx_.expected(n, k)[d] for k in range(len(meta))]
    old = [m.shape[d] for m in meta]
    if want != old:
        is_method = n.op == "call_method"
        n.target = "split" if is_method else torch.split
        n.args = (x, want, d)
        n.kwargs = {}


def fix_pad(fx_: _Fixup, n: fx.Node) -> None:
    """F.pad: pad widths shrink by the removed padded entries."""
    x = n.args[0]
    widths = list(fx_.value(n.args[1]) if len(n.args) > 1 else n.kwargs["pad"])
    ndim = len(x.meta["tensor_meta"].shape)
    old_in = x.meta["tensor_meta"].shape
    new = list(widths)
    for j in range(len(widths) // 2):
        d = ndim - 1 - j
        lo, hi = widths[2 * j], widths[2 * j + 1]
        if (f"n:{n.name}", d) not in fx_.keep or lo < 0 or hi < 0:
            continue
        new[2 * j] = lo - fx_.removed_before(n, d, lo)
        total = lo + old_in[d] + hi
        new[2 * j + 1] = hi - (fx_.removed_before(n, d, total) - fx_.removed_before(n, d, lo + old_in[d]))
    if new != widths:
        args = list(n.args)
        if len(args) > 1:
            args[1] = tuple(new)
            n.args = tuple(args)
        else:
            n.kwargs = {**n.kwargs, "pad": tuple(new)}


def fix_getitem(fx_: _Fixup, n: fx.Node) -> None:
    """x[a:b]: slice bounds follow the removed entries before them."""
    x, idx = n.args
    if not isinstance(x, fx.Node) or not isinstance(x.meta.get("tensor_meta"), TensorMetadata):
        return
    tup = idx if isinstance(idx, tuple) else (idx,)
    ndim = len(x.meta["tensor_meta"].shape)
    n_real = sum(1 for i in tup if i is not None and i is not Ellipsis)
    new, d, changed = [], 0, False
    for i in tup:
        if i is Ellipsis:
            new.append(i)
            d += ndim - n_real
            continue
        # bounds computed at run time (the analysis lets only whole-dim ones through) stay
        if isinstance(i, slice) and not runtime_bounds(i) \
                and (i.start is not None or i.stop is not None) \
                and (f"n:{x.name}", d) in fx_.keep:
            start, stop, step = i.indices(x.meta["tensor_meta"].shape[d])
            if step == 1:
                s2 = start - fx_.removed_before(x, d, start)
                e2 = stop - fx_.removed_before(x, d, stop)
                new.append(slice(s2, e2, None))
                changed = True
                d += 1
                continue
        new.append(i)
        d += 0 if i is None else 1
    if changed:
        n.args = (x, tuple(new) if isinstance(idx, tuple) else new[0])


def fix_layer_norm(fx_: _Fixup, n: fx.Node) -> None:
    shape = fx_.value(n.args[1])
    want = fx_.expected(n)
    if want is not None and list(shape) != want[-len(shape):]:
        args = list(n.args)
        args[1] = tuple(want[-len(shape):])
        n.args = tuple(args)


def fix_group_norm(fx_: _Fixup, n: fx.Node) -> None:
    x = n.args[0]
    old_c = x.meta["tensor_meta"].shape[1]
    new_c = fx_.expected(n)[1]
    if new_c != old_c:
        args = list(n.args)
        args[1] = fx_.value(args[1]) * new_c // old_c
        n.args = tuple(args)


def fix_conv_groups(fx_: _Fixup, n: fx.Node) -> None:
    """F.conv*d: a depthwise conv keeps one group per (remaining) input channel."""
    groups = fx_.value(n.args[6] if len(n.args) > 6 else n.kwargs.get("groups", 1))
    w, want = (n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")), fx_.expected(n.args[0])
    meta = w.meta.get("tensor_meta") if isinstance(w, fx.Node) else None
    if groups == 1 or want is None or not isinstance(meta, TensorMetadata) or meta.shape[1] != 1:
        return  # a grouped (not depthwise) conv keeps its group count
    if want[1] != groups:
        if len(n.args) > 6:
            n.args = (*n.args[:6], want[1], *n.args[7:])
        else:
            n.kwargs = {**n.kwargs, "groups": want[1]}


_METHOD_FIXERS = {"view": fix_sizes, "reshape": fix_sizes, "expand": fix_sizes,
                  "split": fix_split, "chunk": fix_split, "tensor_split": fix_split}
_FUNCTION_FIXERS = {torch.reshape: fix_sizes, torch.split: fix_split, torch.chunk: fix_split,
                    torch.tensor_split: fix_split,
                    F.pad: fix_pad, operator.getitem: fix_getitem, F.layer_norm: fix_layer_norm,
                    F.group_norm: fix_group_norm, F.conv1d: fix_conv_groups,
                    F.conv2d: fix_conv_groups, F.conv3d: fix_conv_groups}


def fix_window_attention(fx_: _Fixup, n: fx.Node) -> None:
    """torchvision's shifted_window_attention → fxprune's window_attention with an
    explicit head width, and the head count the pruned qkv weight implies."""
    from fxprune.nn_window import window_attention

    x = n.args[0]
    heads = fx_.value(n.args[5])
    hd = n.kwargs.get("head_dim") or x.meta["tensor_meta"].shape[-1] // heads
    new_heads = fx_.value(n.args[1]).shape[0] // (3 * hd)
    args = list(n.args)
    args[5] = new_heads
    n.args = tuple(args)
    n.kwargs = {**n.kwargs, "head_dim": hd}
    n.target = window_attention


_NAMED_FIXERS = {("torchvision.models.swin_transformer", "shifted_window_attention"): fix_window_attention,
                 ("fxprune.nn_window", "window_attention"): fix_window_attention}


def _fixer_for(n: fx.Node):
    if n.op == "call_method":
        return _METHOD_FIXERS.get(n.target)
    if n.op == "call_function":
        return _FUNCTION_FIXERS.get(n.target) or _NAMED_FIXERS.get(
            (getattr(n.target, "__module__", ""), getattr(n.target, "__name__", "")))
    return None


def fix_constants(gm: fx.GraphModule, cg: ChannelGraph, keep) -> None:
    """Rewrite size constants in ``gm`` (in place) and check every node's new shape.
    What the run's forwards cache in module attributes (meta tensors, or a random
    input's) is put back: the pruned module is the user's next."""
    state = snapshot_attributes(gm)
    try:
        _fix_constants(gm, keep)
    finally:
        restore_attributes(state)


def _fix_constants(gm: fx.GraphModule, keep) -> None:
    metas = []
    for n in gm.graph.nodes:  # tensor inputs; concrete_args placeholders take their defaults
        if n.op != "placeholder" or "tensor_meta" not in n.meta:
            break
        metas.append(n.meta["tensor_meta"])
    try:
        with torch.no_grad():
            _Fixup(gm, keep).run(*[torch.empty(m.shape, dtype=m.dtype, device="meta") for m in metas])
        return
    except ShrinkError:
        raise
    except Exception:
        pass  # an op without a meta kernel (data-dependent code in a leaf): run for real
    gen = torch.Generator().manual_seed(0)
    real = [torch.randn(m.shape, generator=gen).to(m.dtype) if m.dtype.is_floating_point
            else torch.zeros(m.shape, dtype=m.dtype) for m in metas]
    modes = [(mod, mod.training) for mod in gm.modules()]
    gm.eval()
    try:
        with torch.no_grad():
            _Fixup(gm, keep, meta=False).run(*real)
    finally:
        for mod, mode in modes:
            mod.training = mode
