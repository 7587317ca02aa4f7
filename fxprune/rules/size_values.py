"""Sizes used as values: dims whose size the model reads and computes with.

``y / y.shape[1] ** 0.5`` (RAFT's correlation scale, written with an fx-traceable
size) reads channel count C from a shape and divides tensor *values* by it. Prune
that dim and the rewritten graph divides by the new, smaller count while the
dead-unit oracle still divides by C: a different model, not a smaller one. A size
used as a *shape argument* (view, reshape, split, pad, a slice bound) is fine,
shrink rewrites it. So the analysis follows every size read (``x.shape[d]``,
``x.size(d)``, ``b, c, h, w = x.shape``, ``aten.sym_size.int``) through the
scalar arithmetic after it, and freezes dim d when the scalar reaches an
elementwise op on a tensor or becomes a tensor (``torch.tensor(c)``). With
static shapes torch.export bakes such sizes into constants (the pruned module
keeps dividing by C, as the oracle does), so this matters for fx graphs and for
exports with dynamic shapes.
"""
from __future__ import annotations

import operator
from collections.abc import Iterator

import torch
import torch.fx as fx

from .base import norm_dim

__all__ = ["size_reads", "value_use", "sizes_used_as_values"]

_TO_TENSOR = {torch.tensor, torch.as_tensor, torch.scalar_tensor}
_SYM_SIZE = getattr(getattr(torch.ops.aten, "sym_size", None), "int", None)


def _ndim(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return len(meta.shape) if hasattr(meta, "shape") else None


def _whole_shape(node: fx.Node) -> fx.Node | None:
    """``x.shape`` / ``x.size()``: the tensor whose whole shape this node is."""
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return node.args[0]
    if node.op == "call_method" and node.target == "size" and len(node.args) == 1 \
            and "dim" not in node.kwargs:
        return node.args[0]
    return None


def size_reads(node: fx.Node) -> tuple[fx.Node, int] | None:
    """``(x, d)`` when ``node`` is the size of dim d of tensor node ``x``."""
    x, d = None, None
    if node.op == "call_method" and node.target == "size" and (len(node.args) > 1 or node.kwargs):
        x, d = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    elif node.op == "call_function" and _SYM_SIZE is not None and node.target is _SYM_SIZE:
        x, d = node.args[0], node.args[1]
    elif node.op == "call_function" and node.target is operator.getitem \
            and isinstance(node.args[0], fx.Node) and isinstance(node.args[1], int):
        x, d = _whole_shape(node.args[0]), node.args[1]
    if not isinstance(x, fx.Node) or not isinstance(d, int) or _ndim(x) is None:
        return None
    return x, norm_dim(d, _ndim(x))


def _is_value_op(node: fx.Node) -> bool:
    """Does ``node`` compute tensor values from its (scalar) operands?"""
    from . import rule_for
    from .elementwise import elementwise

    if node.op == "call_function" and node.target in _TO_TENSOR:
        return True
    if node.op not in ("call_function", "call_method"):
        return False
    try:
        return rule_for(node.op, node.target, None) is elementwise
    except TypeError:  # unhashable target
        return False


def value_use(size: fx.Node, limit: int = 64) -> fx.Node | None:
    """The first tensor op that the scalar ``size`` (or arithmetic on it) flows into as a
    value; None when it only reaches shape arguments."""
    seen, todo = {size}, list(size.users)
    while todo and limit:
        limit -= 1
        user = todo.pop()
        if user in seen:
            continue
        seen.add(user)
        if "tensor_meta" in user.meta:  # a tensor op: a value operand, or a shape argument
            if _is_value_op(user):
                return user
            continue
        todo.extend(user.users)  # scalar arithmetic on the size: follow it
    return None


def sizes_used_as_values(graph: fx.Graph) -> Iterator[tuple[fx.Node, int, fx.Node, fx.Node]]:
    """Every ``(x, d, read, use)``: dim d of x is read by ``read`` and used as a value by ``use``."""
    for node in graph.nodes:
        read = size_reads(node)
        if read is not None:
            use = value_use(node)
            if use is not None:
                yield read[0], read[1], node, use
