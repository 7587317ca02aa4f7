"""Frontend: trace a model to a torch.fx GraphModule with shapes on every node.

Standard layers (everything under ``torch.nn``), subclasses of rule-table
layers that do not change what they compute (torchvision's ``Conv3DSimple``)
and torchvision's ``StochasticDepth`` stay leaf modules so the rule table sees
them whole.
Shapes are recorded by running the graph once on the example inputs
(``node.meta["tensor_meta"]``, as torch.fx's ShapeProp does; see shapes.py).
"""
from __future__ import annotations

import copy
import inspect
import operator
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx

from .errors import TraceError
from .rules import module_rule_class
from .shapes import propagate_shapes

__all__ = ["trace", "trace_graph", "Traced", "as_tuple", "DEFAULT_LEAF_NAMES"]


# Kept whole by (module, class name), so that importing fxprune does not import torchvision.
DEFAULT_LEAF_NAMES = {("torchvision.ops.stochastic_depth", "StochasticDepth")}


def as_tuple(example_inputs: Any) -> tuple:
    """Example inputs as a tuple: a lone tensor becomes a 1-tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise TraceError(
        f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}"
    )


_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format,
          torch.layout)


# In-place operators (``y += x``): torch.fx's Proxy has no ``__iadd__``, so Python falls back
# to ``y = y + x`` and the graph loses the write into ``y`` (wrong when ``y`` aliases another
# live tensor: a view, or a name bound twice). The tracer records ``operator.iadd`` instead,
# which the GraphModule runs in place, exactly as the model does.
_INPLACE_OPERATORS = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
                      "and", "or", "xor", "lshift", "rshift")


class _InplaceProxy(fx.Proxy):
    """fx.Proxy whose augmented assignments are recorded as ``operator.i<op>`` calls."""


def _augmented(name: str):
    fn = getattr(operator, f"i{name}")

    def method(self, other):
        return self.tracer.create_proxy("call_function", fn, (self, other), {})
    method.__name__ = f"__i{name}__"
    return method


for _op in _INPLACE_OPERATORS:
    setattr(_InplaceProxy, f"__i{_op}__", _augmented(_op))
_InplaceProxy.__name__ = _InplaceProxy.__qualname__ = "Proxy"  # as torch's errors call it


class _LeafTracer(fx.Tracer):
    """fx.Tracer that also keeps user-named modules and default leaf types whole."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: set[str]):
        super().__init__()
        self._leaf_types = leaf_types
        self._leaf_names = leaf_names
        self.failed_in: torch.nn.Module | None = None  # the innermost module whose trace raised
        self.entered: list[torch.nn.Module] = []  # modules traced through (not leaves)

    def call_module(self, m: torch.nn.Module, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = m
            raise

    def create_arg(self, a: Any) -> Any:
        """The common arguments (proxies, scalars, plain containers of them) without the
        generic dispatch of ``fx.Tracer.create_arg``, which is most of the tracing time."""
        t = type(a)
        if t is _InplaceProxy or t is fx.Proxy:
            return a.node
        if t in _PLAIN:
            return a
        if t is tuple or t is list:
            return t(self.create_arg(e) for e in a)
        return super().create_arg(a)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _InplaceProxy(node, self)

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        leaf = self._is_leaf(m, qualname)
        if not leaf:
            self.entered.append(m)  # its forward runs on proxies: see _scrub_proxies
        return leaf

    def _is_leaf(self, m: torch.nn.Module, qualname: str) -> bool:
        if isinstance(m, self._leaf_types) or qualname in self._leaf_names:
            return True
        if (type(m).__module__, type(m).__name__) in DEFAULT_LEAF_NAMES:
            return True
        if module_rule_class(m) is not None:
            return True  # a torch.nn layer, or a subclass that computes what it computes
        return super().is_leaf_module(m, qualname)


def _split_leaves(model: torch.nn.Module, leaf_modules: Iterable) -> tuple[tuple[type, ...], set[str]]:
    types, names = [], set()
    if not leaf_modules:
        return (), names
    by_id = {id(m): n for n, m in model.named_modules()}
    for leaf in leaf_modules:
        if isinstance(leaf, type):
            types.append(leaf)
        elif isinstance(leaf, str):
            names.add(leaf)
        elif isinstance(leaf, torch.nn.Module) and id(leaf) in by_id:
            names.add(by_id[id(leaf)])
        else:
            raise TraceError(f"leaf_modules entry {leaf!r} is not a module type, a name or a submodule")
    return tuple(types), names


_LIBRARY_DIRS = tuple(str(Path(m.__file__).resolve().parent) for m in (torch,)) + (
    str(Path(__file__).resolve().parent),)


def _generated(filename: str) -> bool:
    """Code torch.fx writes at run time (GraphModule forwards, patched signatures)."""
    return filename.startswith(("<eval_with_key", "<fx", "<frozen"))


def _forward_location(module: torch.nn.Module) -> str | None:
    fn = inspect.unwrap(getattr(type(module), "forward", None) or (lambda: None))
    try:
        path, line = inspect.getsourcefile(fn), fn.__code__.co_firstlineno
    except (TypeError, AttributeError):
        return None
    return f"{path}:{line}, in {type(module).__name__}.forward (tracing stopped before its body: " \
           "its signature or a decorator could not be traced)"


def _user_frame(exc: BaseException, tracer: _LeafTracer | None = None,
                model: torch.nn.Module | None = None) -> str:
    """Where tracing failed, as ``file:line, in function: "code"``: the innermost frame
    outside torch and fxprune (the model's own code, or its library's). When torch failed
    before any of it ran (``co_varnames is too small``: a forward fx cannot re-sign), the
    forward of the module being traced, which is where the user has to look."""
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        if _generated(fr.filename):
            continue
        path = str(Path(fr.filename).resolve()) if not fr.filename.startswith("<") else fr.filename
        if not path.startswith(_LIBRARY_DIRS):
            return f'{fr.filename}:{fr.lineno}, in {fr.name}: "{(fr.line or "").strip()}"'
    for module in (getattr(tracer, "failed_in", None), model):
        where = _forward_location(module) if module is not None else None
        if where:
            return where
    return "<unknown location>"


TRACE_ADVICE = (
    "  fix: trace with frontend=\"export\" (torch.export captures most models symbolic tracing "
    "cannot follow, and the analysis sees through them); or pass concrete_args= for arguments "
    "that steer Python control flow; as a last resort mark the module containing this code as "
    "a leaf (leaf_modules=[TheModuleType]), which keeps it whole: nothing inside it is pruned")


def _scrub_proxies(modules: Iterable[torch.nn.Module]) -> None:
    """Drop the proxies a forward stored in its module's state while being traced: a cache
    filled during tracing (timm LeViT's ``attention_bias_cache``) would otherwise hand the
    next trace a node of this graph, and keep the model pointing into it. Only modules
    traced through can have run such code (a leaf's forward never sees a proxy)."""
    for m in modules:
        for name, value in list(vars(m).items()):
            if isinstance(value, fx.Proxy):
                delattr(m, name)
            elif isinstance(value, dict) and name not in ("_parameters", "_buffers", "_modules"):
                for k in [k for k, v in value.items() if isinstance(v, fx.Proxy)]:
                    del value[k]


@dataclass(frozen=True)
class Traced:
    """A traced graph with shapes, before it is compiled into a GraphModule.

    ``root`` is the user's model (read, never written); the graph's targets are
    its qualified names. Building the GraphModule (copying the submodule tree and
    generating Python code) costs about as much as the tracing itself, and the
    analysis does not need it, so it is built on demand.
    """

    root: torch.nn.Module
    graph: fx.Graph
    name: str
    # --- frontend record (frontend_export.py): which frontend made the graph, and why ---
    frontend: str = "fx"
    frontend_reason: str = ""

    def module(self) -> fx.GraphModule:
        return fx.GraphModule(self.root, self.graph, self.name)


def trace(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Sequence = (),
    concrete_args: dict[str, Any] | None = None,
    frontend: str = "auto",
) -> fx.GraphModule:
    """Trace ``model`` symbolically and attach shape metadata to every node.

    Raises TraceError naming the Python line that could not be traced and what
    to do about it (mark the module as a leaf, or pass ``concrete_args``).
    ``frontend``: "fx", "export" (torch.export, ATen ops) or "auto" (fx if it traces).
    """
    if frontend != "fx":  # --- frontend dispatch (frontend_export.py) ---
        from .frontend_export import trace_frontend
        return trace_frontend(model, example_inputs, frontend, leaf_modules=leaf_modules,
                              concrete_args=concrete_args).module()
    return trace_graph(model, example_inputs, leaf_modules=leaf_modules,
                       concrete_args=concrete_args).module()


def trace_graph(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Sequence = (),
    concrete_args: dict[str, Any] | None = None,
) -> Traced:
    """``trace`` without building the GraphModule (see ``Traced``)."""
    inputs = as_tuple(example_inputs)
    if isinstance(model, fx.GraphModule) and not leaf_modules and concrete_args is None:
        root, graph = model, copy.deepcopy(model.graph)  # never touch the caller's graph
    else:
        types, names = _split_leaves(model, leaf_modules)
        tracer = _LeafTracer(types, names)
        try:
            graph = tracer.trace(model, concrete_args=concrete_args)
        except Exception as e:  # torch raises TraceError, TypeError, RuntimeError, ...
            _scrub_proxies([model, *tracer.entered])
            raise TraceError(
                f"could not trace {type(model).__name__}: {type(e).__name__}: {e}\n"
                f"  at {_user_frame(e, tracer, model)}\n{TRACE_ADVICE}"
            ) from e
        _scrub_proxies([model, *tracer.entered])
        root = tracer.root
    try:
        with torch.no_grad():
            propagate_shapes(root, inputs, graph)
    except Exception as e:
        raise TraceError(
            f"the traced graph of {type(model).__name__} failed on the example inputs: "
            f"{type(e).__name__}: {e}\n  fix: check that example_inputs match the model's forward"
        ) from e
    return Traced(root, graph, type(model).__name__)
