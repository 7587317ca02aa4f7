"""What a rule sees: the node, its module, and the element refs of its tensors.

A rule is a small function ``rule(ctx)`` that links or freezes elements. The
tables in this package map module types, functions and method names to rules.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx

from ..elements import ElementSpace, TensorRef

__all__ = ["RuleContext", "Rule", "norm_dim"]


def norm_dim(d: int, ndim: int) -> int:
    return d % ndim if ndim else 0


class RuleContext:
    """The view of one node that a rule works on."""

    def __init__(
        self,
        space: ElementSpace,
        node: fx.Node,
        node_refs: dict[str, list[TensorRef | None]],
        module: torch.nn.Module | None,
        param_key: Callable[[str], TensorRef | None],
    ):
        self.space = space
        self.node = node
        self.module = module
        self._node_refs = node_refs
        self._param_key = param_key

    # ---- tensors -------------------------------------------------------
    def out(self, k: int | None = None) -> TensorRef | None:
        refs = self._node_refs.get(self.node.name) or []
        if k is None:
            return refs[0] if len(refs) == 1 else None
        return refs[k] if k < len(refs) else None

    def outs(self) -> list[TensorRef | None]:
        return list(self._node_refs.get(self.node.name) or [])

    def ref(self, value: Any) -> TensorRef | None:
        """The tensor ref of an argument value, if it is a single-tensor node."""
        if isinstance(value, fx.Node):
            refs = self._node_refs.get(value.name) or []
            return refs[0] if len(refs) == 1 else None
        return None

    def raw(self, i: int | str, default: Any = None) -> Any:
        """The argument as written in the graph (positional index or keyword)."""
        if isinstance(i, int):
            return self.node.args[i] if i < len(self.node.args) else self.node.kwargs.get("_", default)
        return self.node.kwargs.get(i, default)

    def arg(self, i: int, name: str | None = None) -> TensorRef | None:
        if i < len(self.node.args):
            return self.ref(self.node.args[i])
        return self.ref(self.node.kwargs.get(name)) if name else None

    def value(self, i: int, name: str | None = None, default: Any = None) -> Any:
        """A non-tensor argument's concrete value (nodes resolved from the shape run)."""
        if i < len(self.node.args):
            v = self.node.args[i]
        elif name is not None and name in self.node.kwargs:
            v = self.node.kwargs[name]
        else:
            return default
        return concrete(v)

    def tensor_inputs(self) -> list[TensorRef]:
        refs: list[TensorRef] = []
        for v in self.node.all_input_nodes:
            r = self.ref(v)
            if r is not None:
                refs.append(r)
        return refs

    def param(self, name: str) -> TensorRef | None:
        """A parameter or buffer of the node's module, by attribute name."""
        if self.module is None:
            return None
        return self._param_key(f"{self.node.target}.{name}")

    # ---- element operations -------------------------------------------
    def couple(self, a: TensorRef | None, da: int, b: TensorRef | None, db: int) -> None:
        if a is not None and b is not None:
            self.space.couple(a, da, b, db, self.node.name)

    def shift(self, a: TensorRef | None, da: int, start_a: int, b: TensorRef | None, db: int,
              start_b: int, n: int, kind: str = "offset") -> None:
        """``a[da][start_a + k]`` is ``b[db][start_b + k]`` for k < n (concat/split offsets)."""
        if a is not None and b is not None:
            self.space.shift(a, da, start_a, b, db, start_b, n, kind)

    def link(self, a, da, ia, b, db, ib, kind: str) -> None:
        if a is not None and b is not None:
            self.space.link(a, da, ia, b, db, ib, kind)

    def freeze(self, ref: TensorRef | None, d: int, reason: str, kind: str = "rule") -> None:
        if ref is not None:
            self.space.freeze(ref, d, reason, self.node.name, kind)

    def freeze_all(self, ref: TensorRef | None, reason: str, kind: str = "rule") -> None:
        if ref is not None:
            self.space.freeze_all(ref, reason, self.node.name, kind)


def concrete(v: Any) -> Any:
    """Replace fx nodes inside a value by the python values recorded in the shape run."""
    if isinstance(v, fx.Node):
        return v.meta.get("fxprune.value", v)
    if isinstance(v, (list, tuple)):
        return type(v)(concrete(x) for x in v)
    return v


Rule = Callable[[RuleContext], None]
