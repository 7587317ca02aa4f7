"""remove_branches: depth pruning -- delete whole residual branches from a traced graph.

For each named module (the module that ends a branch: SSS's ``ScaledBN``, the
``bn2`` of a basic block ...) the pass finds the node that computes its output
(its ``call_module`` node; for a traced-through wrapper such as ``ScaledBN``,
the last node recorded inside it in ``nn_module_stack``), follows the
single-user chain through elementwise ops (a scalar ``mul``, activations,
dropout) to the residual ``add``, and replaces the add by its other operand
(``out = shortcut(x)``). Dead code (the whole branch) is then eliminated, the
graph linted and recompiled.

That is exact when the branch computes zero (an SSS scale of 0); otherwise it
is the structural change the caller asked for. The input GraphModule and the
modules it shares with the user's model are never changed: the result has its
own graph and its own container modules (leaf layers are shared, read-only).
"""
from __future__ import annotations

import copy
import operator
from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.errors import FxPruneError
from fxprune.rewrite import finish

__all__ = ["remove_branches", "branch_add"]

_ADD = {operator.add, operator.iadd, torch.add}
# Ops that map a zero branch to zero, one tensor in, one out (other args constants).
_ELEMENTWISE_FN = {operator.mul, operator.imul, operator.truediv, operator.neg, torch.mul,
                   torch.relu, F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.dropout,
                   F.leaky_relu}
_ELEMENTWISE_METHOD = {"mul", "mul_", "div", "div_", "relu", "relu_", "contiguous"}
_ELEMENTWISE_MODULE = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU,
                       nn.Dropout, nn.Identity)


def _inside(node: fx.Node, name: str) -> bool:
    paths = [node.target] if node.op == "call_module" else []
    paths += [v[0] for v in node.meta.get("nn_module_stack", {}).values()
              if isinstance(v, tuple) and v and isinstance(v[0], str)]
    return any(p == name or p.startswith(name + ".") for p in paths)


def _end_node(gm: fx.GraphModule, name: str) -> fx.Node:
    """The last node computed inside module ``name``: its output (a leaf's call_module
    node, or the last op of a traced-through wrapper such as ScaledBN's ``mul``)."""
    inside = [n for n in gm.graph.nodes if n.op != "get_attr" and _inside(n, name)]
    if not inside:
        raise FxPruneError(f"remove_branches: no call of module {name!r} in the traced graph; "
                           "name the module that ends the residual branch (e.g. 'layer1.0.bn2')")
    return inside[-1]


def _is_add(n: fx.Node) -> bool:
    """A residual add: two computed tensors (``x + self.bias`` is not one)."""
    is_add = (n.op == "call_function" and n.target in _ADD) or \
        (n.op == "call_method" and n.target in ("add", "add_"))
    return is_add and len([a for a in n.all_input_nodes if a.op != "get_attr"]) == 2


def _passes_zero(gm: fx.GraphModule, n: fx.Node, prev: fx.Node) -> bool:
    others = [a for a in n.all_input_nodes if a is not prev]
    if any(a.op != "get_attr" for a in others):
        return False  # another computed tensor joins here: not a plain branch op
    if n.op == "call_function":
        return n.target in _ELEMENTWISE_FN
    if n.op == "call_method":
        return n.target in _ELEMENTWISE_METHOD
    if n.op == "call_module":
        mod = gm.get_submodule(n.target)
        return isinstance(mod, _ELEMENTWISE_MODULE) or type(mod).__name__ == "StochasticDepth"
    return False


def branch_add(gm: fx.GraphModule, name: str) -> tuple[fx.Node, fx.Node]:
    """(the residual add, the branch node that feeds it) for the branch ending at ``name``."""
    start = _end_node(gm, name)
    prev, node = start, start
    while not _is_add(node):
        users = list(node.users)
        if len(users) != 1:
            raise FxPruneError(
                f"remove_branches: {name!r}: node {node.format_node()} has {len(users)} users; "
                "a residual branch must reach its add through a single-user chain")
        prev, node = node, users[0]
        if not _is_add(node) and not _passes_zero(gm, node, prev):
            raise FxPruneError(
                f"remove_branches: {name!r}: {node.format_node()} is not elementwise; the "
                "branch must end in a residual add (name the module right before it)")
    return node, prev


def remove_branches(gm: fx.GraphModule, module_names: Iterable[str]) -> fx.GraphModule:
    """A new GraphModule without the residual branches ending at ``module_names``."""
    names = list(dict.fromkeys(module_names))
    out = fx.GraphModule(gm, copy.deepcopy(gm.graph), type(gm).__name__)
    for name in names:
        add, branch = branch_add(out, name)
        operands = [a for a in add.args if isinstance(a, fx.Node)]
        if len(add.args) != 2 or len(operands) != 2 or add.kwargs:
            raise FxPruneError(f"remove_branches: {name!r}: {add.format_node()} is not a plain "
                               "two-tensor add")
        other = operands[1] if operands[0] is branch else operands[0]
        add.replace_all_uses_with(other)
        out.graph.erase_node(add)
    return finish(out)
