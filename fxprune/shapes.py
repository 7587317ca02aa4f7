"""Shape propagation on the meta device: shapes without arithmetic.

Runs the graph once with every tensor (inputs, parameters, buffers) replaced
by a meta tensor of the same shape and dtype, and records
``node.meta["tensor_meta"]`` (as torch.fx's ShapeProp does) plus the python
value of small non-tensor results (``node.meta["fxprune.value"]``: sizes,
split lists) that rules and the rewrite need. Ops whose output shape is a
closed formula (activations, elementwise arithmetic, convs, pools; see
``meta_shapes.py``) skip their meta kernels, many of which are slow Python
decompositions. Falls back to real tensors when an op has no meta kernel.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch.fx.immutable_collections import immutable_dict, immutable_list
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata, _extract_tensor_metadata

from .meta_shapes import fast_function, fast_method, fast_module
from .module_state import restore_attributes, snapshot_attributes

__all__ = ["propagate_shapes", "MetaInterpreter"]


def _mutable(v: Any) -> Any:
    """Plain lists and dicts for fx's immutable argument containers: the generated code
    passes a fresh ``[0, 0, 0]`` on every call, and fx-wrapped functions may write into it
    (torchvision's video Swin ``_get_window_and_shift_size``)."""
    if isinstance(v, immutable_list):
        return [_mutable(x) for x in v]
    if isinstance(v, immutable_dict):
        return {k: _mutable(x) for k, x in v.items()}
    if type(v) is tuple:
        return tuple(_mutable(x) for x in v)
    return v


def _to_meta(v: Any) -> Any:
    return map_aggregate(v, lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t)


def _tensor_meta(t: torch.Tensor) -> TensorMetadata:
    """ShapeProp's TensorMetadata without its memory-format probing (slow on meta tensors)."""
    if t.is_quantized:
        return _extract_tensor_metadata(t)
    fmt = torch.contiguous_format if t.is_contiguous() else None
    return TensorMetadata(t.shape, t.dtype, t.requires_grad, t.stride(), fmt, False, {})


def _record(node: fx.Node, result: Any) -> None:
    found = False

    def meta(t):
        nonlocal found
        if isinstance(t, torch.Tensor):
            found = True
            return _tensor_meta(t)
        return t

    tm = map_aggregate(result, meta)
    if found:
        node.meta["tensor_meta"] = tm
    else:
        node.meta.pop("tensor_meta", None)
        if isinstance(result, (int, float, bool, torch.Size)) or (
            isinstance(result, (tuple, list)) and all(isinstance(x, (int, float)) for x in result)
        ):
            node.meta["fxprune.value"] = result


class MetaInterpreter(fx.Interpreter):
    """Runs a graph with every tensor on the meta device."""

    def __init__(self, gm: torch.nn.Module, meta: bool = True, graph: fx.Graph | None = None):
        super().__init__(gm, garbage_collect_values=False, graph=graph)
        self.meta = meta
        self._meta_state: dict[str, dict[str, torch.Tensor]] = {}

    def placeholder(self, target, args, kwargs):
        value = super().placeholder(target, args, kwargs)
        return _to_meta(value) if self.meta else value

    def get_attr(self, target, args, kwargs):
        value = super().get_attr(target, args, kwargs)
        return _to_meta(value) if self.meta else value

    def call_function(self, target, args, kwargs):
        fast = fast_function(target) if self.meta else None
        out = fast(*args, **kwargs) if fast is not None else None
        if out is not None:
            return out
        if any(isinstance(a, (immutable_list, immutable_dict)) for a in args):
            args, kwargs = _mutable(args), _mutable(dict(kwargs))
        return super().call_function(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        fast = fast_method(target) if self.meta else None
        out = fast(*args, **kwargs) if fast is not None else None
        return out if out is not None else super().call_method(target, args, kwargs)

    def call_module(self, target, args, kwargs):
        if not self.meta:
            return super().call_module(target, args, kwargs)
        mod = self.submodules.get(target)  # torch's Interpreter indexes them once
        if mod is None:
            mod = self.fetch_attr(target)
        fast = fast_module(mod)
        out = fast(mod, *args, **kwargs) if fast is not None else None
        if out is not None:
            return out
        state = self._meta_state.get(target)
        if state is None:
            state = {k: v.to("meta") for k, v in list(mod.named_parameters()) + list(mod.named_buffers())}
            self._meta_state[target] = state
        return torch.func.functional_call(mod, state, args, kwargs)


class _MetaProp(MetaInterpreter):
    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        _record(n, result)
        return result


def propagate_shapes(gm: torch.nn.Module, inputs: tuple, graph: fx.Graph | None = None) -> None:
    """Annotate every node of ``graph`` (default ``gm.graph``) with its output shape
    (meta device, real tensors as the fallback). The submodules are the user's: whatever
    their forwards cache in their attributes (meta tensors, or tensors of this input's
    size) is put back afterwards (module_state.py)."""
    state = snapshot_attributes(gm)
    try:
        _propagate(gm, inputs, graph)
    finally:
        restore_attributes(state)


def _propagate(gm: torch.nn.Module, inputs: tuple, graph: fx.Graph | None) -> None:
    try:
        with torch.no_grad():
            _MetaProp(gm, graph=graph).run(*inputs)
        return
    except Exception:
        pass  # some op has no meta kernel or is data dependent: pay for real arithmetic
    if graph is not None and graph is not getattr(gm, "graph", None):
        gm = fx.GraphModule(gm, graph)
    prop = ShapeProp(gm)
    orig = prop.run_node

    def run_node(n):
        result = orig(n)
        _record(n, result)
        return result

    prop.run_node = run_node
    modes = [(m, m.training) for m in gm.modules()]
    gm.eval()  # a real run in training mode would update BatchNorm statistics
    try:
        with torch.no_grad():
            prop.propagate(*inputs)
    finally:
        for m, mode in modes:  # the submodules are the user's: restore each flag exactly
            m.training = mode
