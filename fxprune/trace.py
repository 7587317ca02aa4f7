"""Frontend: trace a model to a torch.fx GraphModule with shapes on every node.

Standard layers (everything under ``torch.nn``), subclasses of rule-table
layers that do not change what they compute (torchvision's ``Conv3DSimple``)
and torchvision's ``StochasticDepth`` stay leaf modules so the rule table sees
them whole.
Shapes are recorded by running the graph once on the example inputs
(``node.meta["tensor_meta"]``, as torch.fx's ShapeProp does; see shapes.py).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import io
import operator
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx

from .errors import InputMismatchError, TraceError
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

    def module(self, root: torch.nn.Module | None = None,
               graph: fx.Graph | None = None) -> fx.GraphModule:
        """The GraphModule of this trace, or of a rewritten ``graph`` whose targets name
        attributes of ``root`` (shrink's copies), laid out the same way."""
        return fx.GraphModule(self.root if root is None else root,
                              self.graph if graph is None else graph, self.name)


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
            unfed = _unfed_arguments(model, len(inputs), concrete_args)
            raise TraceError(
                f"could not trace {type(model).__name__}: {type(e).__name__}: {e}\n"
                f"  at {_user_frame(e, tracer, model)}\n"
                + (f"  {unfed}\n" if unfed else "") + TRACE_ADVICE
            ) from e
        _scrub_proxies([model, *tracer.entered])
        root = tracer.root
    printed = io.StringIO()
    try:
        # torch's ShapeProp prints a traceback of its own before raising: keep it off the
        # user's terminal (the cause goes into the message); on success, pass on what was printed
        with torch.no_grad(), contextlib.redirect_stderr(printed):
            propagate_shapes(root, inputs, graph)
    except Exception as e:
        raise _input_mismatch(model, inputs, concrete_args, e) from e
    if printed.getvalue():
        sys.stderr.write(printed.getvalue())
    return Traced(root, graph, type(model).__name__)


def _unfed_arguments(model: torch.nn.Module, n_inputs: int, concrete_args: dict | None) -> str:
    """The forward arguments that example_inputs (a positional tuple) cannot reach:
    keyword-only ones and defaulted ones past the inputs, unless concrete_args fixes them."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return ""
    fixed = set(concrete_args or ())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    left = [p for p in positional[n_inputs:] if p.name not in fixed]
    left += [p for p in params if p.kind == p.KEYWORD_ONLY and p.name not in fixed]
    if not left:
        return ""
    names = ", ".join(f"{'keyword-only ' if p.kind == p.KEYWORD_ONLY else ''}{p.name!r}"
                      + ("" if p.default is p.empty else f" (default {p.default!r})") for p in left)
    fixes = []
    defaults = ", ".join(f"{p.name!r}: {p.default!r}" for p in left if p.default is not p.empty)
    if defaults:
        fixes.append(f"pass concrete_args={{{defaults}}} (or other non-tensor values) so tracing "
                     "follows the value the model runs with")
    required = [p.name for p in left if p.default is p.empty]
    if required:
        fixes.append(f"wrap the model in a module whose forward takes {', '.join(required)} "
                     "positionally (fx cannot fix a tensor with concrete_args) and give them in "
                     "example_inputs")
    return f"forward argument(s) {names} get no value from example_inputs; fix: " + \
        "; or ".join(fixes)


def _innermost(e: BaseException) -> BaseException:
    """The deepest exception of the chain that says something (StopIteration says nothing)."""
    found = e
    while (e := e.__cause__ or e.__context__) is not None:
        if str(e).strip():
            found = e
    return found


def _input_mismatch(model: torch.nn.Module, inputs: tuple, concrete_args: dict | None,
                    e: BaseException) -> InputMismatchError:
    """One line: the node, the real cause (torch's innermost error), the shapes given, the fix."""
    cause = _innermost(e)
    node = re.search(r"node=%(\w+)", str(e))
    where = f" at node {node.group(1)}" if node else ""
    text = " ".join(str(cause).split())
    shapes = ", ".join(str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                       for t in inputs)
    unfed = _unfed_arguments(model, len(inputs), concrete_args)
    fix = unfed or ("fix: pass example_inputs shaped like the model's real input "
                    "(channels, sequence length, dtype)")
    return InputMismatchError(
        f"example_inputs do not fit {type(model).__name__}{where}: {type(cause).__name__}: "
        f"{text} (example_inputs: {shapes}); {fix}")
