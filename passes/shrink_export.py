"""shrink for torch.export graphs: the size constants of ATen ops, and fresh metadata.

In an exported graph every size is a literal argument: ``view(x, [1, 64, 196])``,
``split_with_sizes(x, [32, 32], 1)``, ``slice(x, 1, 0, 32)``, ``layer_norm(x, [768])``,
``constant_pad_nd(x, [1, 1])``. Before the meta run of ``fix_constants`` checks
every node, ``fix_aten_constants`` rewrites these literals to the sizes the plan
implies (read from the kept indices, so no arithmetic is re-run). After the rewrite,
``refresh_meta`` re-propagates ``tensor_meta`` and the FakeTensor ``val`` of
every node, so the pruned module looks freshly exported.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata

from .shrink_modules import new_shape

__all__ = ["fix_aten_constants", "refresh_meta", "is_exported"]

aten = torch.ops.aten
Keep = dict[tuple[str, int], np.ndarray]


def is_exported(gm: fx.GraphModule) -> bool:
    return any(isinstance(n.target, torch._ops.OpOverload) for n in gm.graph.nodes)


def _shape(n) -> tuple[int, ...] | None:
    meta = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _removed_before(keep: Keep, node: fx.Node, d: int, pos: int) -> int:
    kept = keep.get((f"n:{node.name}", d))
    return 0 if kept is None else pos - int(np.searchsorted(kept, pos))


def _set_arg(n: fx.Node, i: int, value) -> None:
    args = list(n.args)
    args[i] = value
    n.args = tuple(args)


def fix_sizes(n: fx.Node, keep: Keep) -> None:
    """view/reshape/expand(x, sizes): each explicit size becomes the new one (-1 stays)."""
    want, sizes = new_shape(n, keep), n.args[1]
    if want is None or not isinstance(sizes, (list, tuple)) or len(sizes) != len(want):
        return
    new = [w if isinstance(s, int) and s != -1 else s for s, w in zip(sizes, want)]
    if new != list(sizes):
        _set_arg(n, 1, type(sizes)(new))


def fix_unflatten(n: fx.Node, keep: Keep) -> None:
    """unflatten(x, dim, sizes)."""
    want, x = new_shape(n, keep), n.args[0]
    d = n.args[1] % len(_shape(x))
    sizes = list(n.args[2])
    new = [w if s != -1 else s for s, w in zip(sizes, want[d:d + len(sizes)])]
    if new != sizes:
        _set_arg(n, 2, new)


def fix_split(n: fx.Node, keep: Keep) -> None:
    """split/chunk/split_with_sizes/tensor_split(x, _, dim): pieces keep their boundaries, as
    explicit sizes (tensor_split's indices, sections or index tensor become split sizes)."""
    meta, x = n.meta.get("tensor_meta"), n.args[0]
    if not isinstance(meta, (list, tuple)) or _shape(x) is None:
        return
    d = (n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)) % len(_shape(x))
    want = [new_shape(n, keep, k)[d] for k in range(len(meta))]
    if want != [m.shape[d] for m in meta]:
        n.target, n.args, n.kwargs = aten.split_with_sizes.default, (x, want, d), {}


def fix_slice(n: fx.Node, keep: Keep) -> None:
    """slice(x, dim, start, end, step): bounds move by the removed entries before them."""
    x = n.args[0]
    shape = _shape(x)
    if shape is None:
        return
    args = list(n.args) + [0, None, None, 1][len(n.args) - 1:]
    d = args[1] % len(shape)
    if (f"n:{x.name}", d) not in keep or not all(isinstance(a, (int, type(None))) for a in args[2:5]):
        return
    start, stop, step = slice(args[2], args[3], args[4]).indices(shape[d])
    if step != 1:
        return
    new = [start - _removed_before(keep, x, d, start), stop - _removed_before(keep, x, d, stop)]
    if new != [args[2], args[3]]:
        n.args = (x, args[1], new[0], new[1], *args[4:len(n.args)])


def fix_pad(n: fx.Node, keep: Keep) -> None:
    """constant_pad_nd/pad(x, widths, ...): widths shrink by the removed padded entries."""
    x, widths = n.args[0], list(n.args[1])
    shape = _shape(x)
    new = list(widths)
    for j in range(len(widths) // 2):
        d = len(shape) - 1 - j
        lo, hi = widths[2 * j], widths[2 * j + 1]
        if (f"n:{n.name}", d) not in keep or lo < 0 or hi < 0:
            continue
        new[2 * j] = lo - _removed_before(keep, n, d, lo)
        end = lo + shape[d]
        new[2 * j + 1] = hi - (_removed_before(keep, n, d, end + hi) - _removed_before(keep, n, d, end))
    if new != widths:
        _set_arg(n, 1, new)


def fix_layer_norm(n: fx.Node, keep: Keep, out: int | None = None) -> None:
    """layer_norm(x, normalized_shape, ...) / native_layer_norm (tuple output)."""
    want, k = new_shape(n, keep, out), len(n.args[1])
    if want is not None and list(n.args[1]) != want[len(want) - k:]:
        _set_arg(n, 1, want[len(want) - k:])


def fix_group_norm(n: fx.Node, keep: Keep) -> None:
    """group_norm(x, num_groups, ...): whole groups go, so the count scales with C."""
    old_c, new_c = _shape(n.args[0])[1], new_shape(n, keep)[1]
    if new_c != old_c:
        _set_arg(n, 1, n.args[1] * new_c // old_c)


def fix_native_group_norm(n: fx.Node, keep: Keep) -> None:
    """native_group_norm(x, w, b, N, C, HxW, group, eps)."""
    old_c, new_c = n.args[4], new_shape(n, keep, 0)[1]
    if new_c != old_c:
        _set_arg(n, 4, new_c)
        _set_arg(n, 6, n.args[6] * new_c // old_c)


def fix_conv(n: fx.Node, keep: Keep) -> None:
    """conv{1,2,3}d / convolution: a depthwise conv keeps one group per input channel."""
    pos = 8 if n.target.overloadpacket is aten.convolution else 6
    x, w = n.args[0], n.args[1]
    groups = n.args[pos] if len(n.args) > pos else 1
    old_in, w_shape = _shape(x), _shape(w)
    if groups == 1 or old_in is None or w_shape is None or w_shape[1] != 1 or groups != old_in[1]:
        return
    new_in = new_shape(x, keep)[1]
    if new_in != groups:
        _set_arg(n, pos, new_in)


def _ops(names: tuple[str, ...]) -> list:
    return [getattr(aten, nm) for nm in names if hasattr(aten, nm)]


_FIXERS: dict = {
    **{p: fix_sizes for p in _ops(("view", "reshape", "_unsafe_view", "expand", "view_copy",
                                    "expand_copy", "_reshape_alias"))},
    **{p: fix_split for p in _ops(("split", "split_with_sizes", "chunk", "unsafe_split",
                                    "unsafe_split_with_sizes", "split_copy", "tensor_split"))},
    **{p: fix_slice for p in _ops(("slice", "slice_copy"))},
    **{p: fix_pad for p in _ops(("constant_pad_nd", "pad"))},
    **{p: fix_conv for p in _ops(("conv1d", "conv2d", "conv3d", "convolution"))},
    aten.unflatten: fix_unflatten,
    aten.layer_norm: fix_layer_norm,
    aten.native_layer_norm: lambda n, keep: fix_layer_norm(n, keep, 0),
    aten.group_norm: fix_group_norm,
    aten.native_group_norm: fix_native_group_norm,
}


def fixer_for(target) -> Callable | None:
    if isinstance(target, torch._ops.OpOverload):
        return _FIXERS.get(target.overloadpacket)
    return None


def fix_aten_constants(gm: fx.GraphModule, keep: Keep) -> None:
    """Rewrite the literal sizes of ATen ops in ``gm`` (in place) to the plan's sizes.
    The node metadata still describes the unpruned graph while this runs."""
    for n in list(gm.graph.nodes):
        fix = fixer_for(n.target) if n.op == "call_function" else None
        if fix is not None:
            fix(n, keep)


def refresh_meta(gm: fx.GraphModule) -> None:
    """Re-propagate ``tensor_meta`` of every node (meta run) and rebuild the FakeTensor
    ``val`` of every tensor node from it (same device and dtype as before)."""
    from fxprune.shapes import propagate_shapes

    # zeros: valid indices for integer inputs (embedding) if the run falls back to real tensors
    inputs = [torch.zeros(n.meta["tensor_meta"].shape, dtype=n.meta["tensor_meta"].dtype)
              for n in gm.graph.nodes if n.op == "placeholder" and "tensor_meta" in n.meta]
    propagate_shapes(gm, tuple(inputs))
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
    except ImportError:
        return
    mode = FakeTensorMode()
    for n in gm.graph.nodes:
        old, meta = n.meta.get("val"), n.meta.get("tensor_meta")
        if isinstance(old, (list, tuple)) and isinstance(meta, (list, tuple)):
            n.meta["val"] = type(old)(_fake(mode, o, m) for o, m in zip(old, meta))
        elif old is not None:
            n.meta["val"] = _fake(mode, old, meta)


def _fake(mode, old, meta):
    """A FakeTensor like ``old`` with the shape and strides of ``meta`` (anything else as is)."""
    from torch._subclasses.fake_tensor import FakeTensor

    if not isinstance(old, FakeTensor) or not isinstance(meta, TensorMetadata):
        return old
    with mode:
        return torch.empty_strided(tuple(meta.shape), tuple(meta.stride), dtype=meta.dtype,
                                   device=old.device)
