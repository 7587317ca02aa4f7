"""Which graph nodes may be deleted when nobody uses their result.

torch.fx's ``eliminate_dead_code`` treats every ``call_method`` and most
``call_function`` nodes as pure, so ``y.relu_()`` or torchvision MViT's
fx-wrapped ``_add_shortcut`` (in place, result unused) vanish and the model
computes something else. Here the default is the other way round: a node is
deletable only when its op is *known* pure — it has a rule in the op table
(so we know what it is) and it does not write into an argument: no ``foo_``
method or function, no ``operator.i*``, no ``inplace=True``, no module with
``inplace`` set, no ATen op whose schema is mutable (``aten.copy_.default``: an
overload's name is ``copy_.default``, so the ``foo_`` test alone misses it).
Unknown modules, unknown functions and fx-wrapped functions of other packages
are kept. Placeholders and the output are never deleted.
"""
from __future__ import annotations

import functools
import inspect
import operator

import torch
import torch.fx as fx

__all__ = ["is_pure", "writes_in_place", "eliminate_dead_pure_nodes"]

_OPERATOR_INPLACE = {n for n in dir(operator) if n.startswith("i") and n[1:] in dir(operator)
                     and n not in ("is_", "is_not", "index", "indexOf", "invert", "inv")}
_OPERATOR_INPLACE |= {"setitem", "delitem"}


def _name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _is_inplace_name(name: str) -> bool:
    """``relu_``, ``add_``, ``index_fill_`` (but not dunders like ``__add__``)."""
    return name.endswith("_") and not name.endswith("__")


@functools.lru_cache(maxsize=None)
def _inplace_position(target) -> int | None:
    """The positional index of an ``inplace`` parameter (F.relu(x, inplace), ...), if any."""
    try:
        params = list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return None
    return params.index("inplace") if "inplace" in params else None


def writes_in_place(node: fx.Node, module: torch.nn.Module | None = None) -> bool:
    """Does this node (possibly) write into one of its arguments?"""
    if node.op == "call_module":
        return bool(getattr(module, "inplace", False))
    if node.op not in ("call_function", "call_method"):
        return False
    if isinstance(node.target, torch._ops.OpOverload):  # ATen (torch.export): the schema says
        return node.target._schema.is_mutable        # (``copy_.default`` is no ``foo_`` name)
    name = _name(node.target)
    if _is_inplace_name(name):
        return True
    if node.op == "call_function" and getattr(node.target, "__module__", "") in ("_operator", "operator") \
            and name in _OPERATOR_INPLACE:
        return True
    if node.kwargs.get("inplace") is True or node.kwargs.get("out") is not None:
        return True
    if node.op == "call_function":
        try:
            pos = _inplace_position(node.target)
        except TypeError:  # unhashable target
            return True
        if pos is not None and pos < len(node.args) and node.args[pos] is True:
            return True
    return False


def is_pure(node: fx.Node, root: torch.nn.Module) -> bool:
    """True when deleting this node, if its result is unused, cannot change the model."""
    from . import rule_for  # the table imports this package's rules; import late

    if node.op == "get_attr":
        return True
    if node.op not in ("call_module", "call_function", "call_method"):
        return False  # placeholder, output
    module = root.get_submodule(node.target) if node.op == "call_module" else None
    if writes_in_place(node, module):
        return False
    try:
        known = rule_for(node.op, node.target, module) is not None
    except TypeError:  # unhashable target
        return False
    if not known:
        return False
    if node.op == "call_function" and getattr(node.target, "__module__", "").split(".")[0] not in (
            "torch", "_operator", "operator", "builtins", "fxprune"):
        return False  # fx-wrapped functions of other packages: their bodies are unknown to us
    return True


def eliminate_dead_pure_nodes(gm: fx.GraphModule) -> bool:
    """Delete unused nodes whose ops are known pure (``is_pure``); keep everything else.

    Works on every torch>=2.5 (``eliminate_dead_code(is_impure_node=)`` is newer).
    Returns whether anything was deleted.
    """
    changed = False
    for node in reversed(gm.graph.nodes):
        if not node.users and is_pure(node, gm):
            gm.graph.erase_node(node)
            changed = True
    return changed
