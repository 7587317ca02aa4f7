"""The export frontend: capture a model with ``torch.export`` as an ATen-level fx graph.

``torch.export.export(model, args, strict=False)`` follows any Python the model
runs (data-dependent padding, ``for t in tensor``, Hugging Face's forward) and
returns a graph over a short, closed list of ATen ops whose parameters and
buffers keep the user's fully-qualified names as ``get_attr`` targets. The
analysis, shrink and oracle then work on it unchanged; the rule table for the
ops is ``fxprune.rules.aten``.

The model is captured in eval mode (Python ``if self.training:`` branches take
the eval side: drop-path disappears). The captured graph is then normalised so
the result can be fine-tuned and exported again:

- the ``training`` arguments of batch norm and dropout read the module's
  ``training`` flag (``get_attr`` of ``<bn>.training`` / ``training``), so
  ``train()``/``eval()`` switch them; batch norm then updates its running stats
  in train mode (``num_batches_tracked`` too). Only arguments that followed the
  eval mode (``False``) do: a batch norm hard-coded to batch statistics (timm's
  weight-standardised ``StdConv2d``, ``F.batch_norm(w, None, None, training=True)``)
  and dropout hard-coded on keep their literal ``True``;
- ``_native_batch_norm_legit_no_training`` (torch 2.5's export IR) becomes
  ``aten.batch_norm``; shape asserts and the input guard module are dropped
  (they would check the pre-pruning sizes).

``frontend="auto"`` uses symbolic torch.fx where it traces and leaves no
barrier that export avoids, and torch.export otherwise; the choice and its
reason are recorded on the Traced graph (``ChannelGraph.frontend``).
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from .errors import InputMismatchError, TraceError
from .module_state import restore_attributes, snapshot_attributes
from .shapes import propagate_shapes
from .trace import Traced, as_tuple, trace_graph

__all__ = ["FRONTENDS", "ExportTraced", "export_graph", "trace_frontend", "analyze_frontend",
           "count_batch"]

FRONTENDS = ("fx", "export", "auto")
aten = torch.ops.aten


def check_frontend(frontend: str) -> None:
    if frontend not in FRONTENDS:
        raise ValueError(f"frontend must be one of {FRONTENDS}, got {frontend!r}")


def count_batch(num_batches_tracked: torch.Tensor, training: bool) -> torch.Tensor:
    """BatchNorm's ``num_batches_tracked += 1`` in train mode (a side effect kept by DCE)."""
    if training:
        num_batches_tracked.add_(1)
    return num_batches_tracked


if hasattr(torch.fx.node, "has_side_effect"):
    torch.fx.node.has_side_effect(count_batch)


_SPEC_ATTRS = ("_in_spec", "_out_spec")


@dataclass(frozen=True)
class ExportTraced(Traced):
    """A Traced graph from torch.export: the GraphModule it builds keeps the input and
    output pytree specs (so outputs keep their structure: dicts, lists) and the
    user's train/eval flags."""

    modes: tuple[tuple[str, bool], ...] = ()

    def module(self, root: torch.nn.Module | None = None,
               graph: fx.Graph | None = None) -> fx.GraphModule:
        gm = super().module(root, graph)
        specs = {a: getattr(self.root, a) for a in _SPEC_ATTRS if hasattr(self.root, a)}
        for a, v in specs.items():
            setattr(gm, a, v)
        if specs:  # GraphModule.__deepcopy__ restores these
            gm.meta["_user_preserved_attributes"] = dict(specs)
        gm.meta["fxprune.frontend"] = (self.frontend, self.frontend_reason)
        _set_modes(gm, self.modes)
        return gm


def _set_modes(gm: torch.nn.Module, modes: tuple[tuple[str, bool], ...]) -> None:
    """The user's train/eval flags on the modules of the same name."""
    named = dict(gm.named_modules())
    for name, mode in modes:
        if name in named:
            named[name].training = mode


# ---- capture ----------------------------------------------------------------

def _export_fn():
    """torch >= 2.7 exports the training IR by default; 2.5/2.6 name it export_for_training."""
    legacy = getattr(torch.export, "export_for_training", None)
    version = tuple(int(p) for p in torch.__version__.split(".")[:2] if p.isdigit())
    return legacy if legacy is not None and version < (2, 7) else torch.export.export


def _modes(model: torch.nn.Module) -> tuple[tuple[str, bool], ...]:
    return tuple((n, m.training) for n, m in model.named_modules())


def export_graph(model: torch.nn.Module, example_inputs: Any, *, reason: str = "") -> ExportTraced:
    """Capture ``model`` with torch.export (in eval mode) and normalise the graph."""
    inputs = as_tuple(example_inputs)
    modes = _modes(model)
    state = snapshot_attributes(model)
    model.eval()
    try:
        ep = _export_fn()(model, inputs, strict=False)
    except Exception as e:
        raise TraceError(_export_error(model, e)) from e
    finally:
        restore_attributes(state)
        _set_modes(model, modes)
    exported = ep.module()
    _normalise(exported, exported.graph)
    # a plain GraphModule: the exported one refuses train()/eval()
    root = fx.GraphModule(exported, exported.graph, type(model).__name__)
    for a in _SPEC_ATTRS:
        if hasattr(exported, a):
            setattr(root, a, getattr(exported, a))
    _set_modes(root, modes)
    graph = root.graph
    leaves = [t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)]
    try:
        if not _shapes_from_export(graph):
            with torch.no_grad():
                propagate_shapes(root, tuple(leaves), graph)
    except Exception as e:
        raise TraceError(f"the exported graph of {type(model).__name__} failed on the example "
                         f"inputs: {type(e).__name__}: {e}") from e
    return ExportTraced(root, graph, type(model).__name__, frontend="export",
                        frontend_reason=reason or "frontend='export' requested", modes=modes)


def _shapes_from_export(graph: fx.Graph) -> bool:
    """Shapes read off export's FakeTensors (``node.meta["val"]``), as propagate_shapes
    records them; False (nothing written) if a node that needs one has none."""
    from .shapes import _record

    todo = []
    for n in graph.nodes:
        if n.op == "get_attr" and n.target.endswith("training"):
            todo.append((n, False))  # the traced mode is eval
        elif n.op == "call_function" and n.target is count_batch:
            continue
        elif n.op in ("placeholder", "get_attr", "call_function"):
            if "val" not in n.meta:
                return False
            todo.append((n, n.meta["val"]))
    for n, value in todo:
        _record(n, value)
    return True


def _export_error(model: torch.nn.Module, e: Exception) -> str:
    from .trace import _user_frame

    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return (f"torch.export could not capture {type(model).__name__}: {type(e).__name__}: {first}\n"
            f"  at {_user_frame(e)}\n" + (
                "  fix: code that branches on tensor values (if x.sum() > 0, .item()) cannot be "
                "captured by either frontend; make the branch depend on shapes or arguments "
                "only, or prune the part of the model that has no such code"
                if "data-dependent" in str(e) or "DataDependent" in type(e).__name__ else
                "  fix: try frontend='fx' (with leaf_modules= for the module at this line)"))


# ---- normalisation ------------------------------------------------------------

_DROPOUTS = {getattr(aten, n).default: 2 for n in (
    "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "dropout_",
    "feature_dropout_", "alpha_dropout_", "feature_alpha_dropout_") if hasattr(aten, n)}
_ASSERTS = {getattr(aten, n).default for n in ("_assert_tensor_metadata",)
            if hasattr(aten, n)}


def _flag(graph: fx.Graph, cache: dict, owner: str) -> fx.Node:
    """A get_attr node reading ``<owner>.training`` (the root's flag for owner '')."""
    target = f"{owner}.training" if owner else "training"
    if target not in cache:
        first = next(n for n in graph.nodes if n.op != "placeholder")
        with graph.inserting_before(first):
            cache[target] = graph.create_node("get_attr", target)
    return cache[target]


def _owner(node: fx.Node, pos: int) -> str:
    a = node.args[pos] if len(node.args) > pos else None
    if isinstance(a, fx.Node) and a.op == "get_attr":
        return a.target.rpartition(".")[0]
    return ""


def _legit_to_batch_norm(graph: fx.Graph, n: fx.Node) -> fx.Node | None:
    """(out, mean, rstd) = _native_batch_norm_legit_no_training(...) -> aten.batch_norm
    when only out is used."""
    users = list(n.users)
    if not all(u.target is operator.getitem and u.args[1] == 0 for u in users):
        return None
    x, w, b, rm, rv, momentum, eps = (list(n.args) + [None] * 7)[:7]
    with graph.inserting_before(n):
        bn = graph.call_function(aten.batch_norm.default,
                                 (x, w, b, rm, rv, False, momentum, eps, False))
    bn.meta.update({k: v for k, v in users[0].meta.items()} if users else {})
    for u in users:
        u.replace_all_uses_with(bn)
        graph.erase_node(u)
    graph.erase_node(n)
    return bn


def _normalise(root: torch.nn.Module, graph: fx.Graph) -> None:
    """Guards and asserts out, batch norm canonical, training flags read from the modules."""
    legit = getattr(aten, "_native_batch_norm_legit_no_training", None)
    flags: dict[str, fx.Node] = {}
    head = next(iter(graph.nodes))
    for ph in [n for n in graph.nodes if n.op == "placeholder"]:  # inputs first, as fx graphs
        if ph is not head:
            head.prepend(ph)
    for n in list(graph.nodes):
        if n.op == "call_module" and n.target == "_guards_fn" and not n.users:
            graph.erase_node(n)
            if hasattr(root, "_guards_fn"):
                delattr(root, "_guards_fn")
        elif n.op == "call_function" and n.target in _ASSERTS:
            graph.erase_node(n)
        elif n.op == "call_function" and legit is not None and n.target == legit.default:
            _legit_to_batch_norm(graph, n)
    for n in list(graph.nodes):
        if n.op != "call_function":
            continue
        if n.target == aten.batch_norm.default and len(n.args) > 5:
            if n.args[5] is not False or n.args[3] is None:
                continue  # batch statistics whatever the mode (weight standardisation: StdConv)
            owner = _owner(n, 3) or _owner(n, 1)
            flag = _flag(graph, flags, owner)
            n.args = n.args[:5] + (flag,) + n.args[6:]
            nbt = f"{owner}.num_batches_tracked" if owner else None
            if nbt and _has_tensor(root, nbt) and isinstance(n.args[3], fx.Node):
                with graph.inserting_before(n):
                    graph.create_node("call_function", count_batch,
                                      (_get_attr(graph, nbt), flag))
        elif n.target in _DROPOUTS and len(n.args) > _DROPOUTS[n.target] \
                and n.args[_DROPOUTS[n.target]] is False:  # True: always on (MC dropout)
            pos = _DROPOUTS[n.target]
            n.args = n.args[:pos] + (_flag(graph, flags, ""),) + n.args[pos + 1:]
    graph.eliminate_dead_code()
    graph.lint()


def _has_tensor(root: torch.nn.Module, name: str) -> bool:
    try:
        root.get_buffer(name)
        return True
    except AttributeError:
        return False


def _get_attr(graph: fx.Graph, target: str) -> fx.Node:
    for n in graph.nodes:
        if n.op == "get_attr" and n.target == target:
            return n
    first = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first):
        return graph.create_node("get_attr", target)


# ---- dispatch -------------------------------------------------------------------

def _fx(model, inputs, leaf_modules, concrete_args, reason: str) -> Traced:
    traced = trace_graph(model, inputs, leaf_modules=leaf_modules, concrete_args=concrete_args)
    if isinstance(model, fx.GraphModule) and any(hasattr(model, a) for a in _SPEC_ATTRS):
        # an exported (or pruned exported) GraphModule: keep its pytree specs and modes
        return ExportTraced(traced.root, traced.graph, traced.name, frontend="export",
                            frontend_reason="already an exported GraphModule", modes=_modes(model))
    return dataclasses.replace(traced, frontend="fx", frontend_reason=reason)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def trace_frontend(model: torch.nn.Module, example_inputs: Any, frontend: str = "auto", *,
                   leaf_modules: Sequence = (), concrete_args: dict | None = None) -> Traced:
    """Trace with the named frontend; 'auto' is fx where symbolic tracing succeeds."""
    check_frontend(frontend)
    if frontend == "fx" or isinstance(model, fx.GraphModule):
        return _fx(model, example_inputs, leaf_modules, concrete_args, f"frontend={frontend!r}")
    if frontend == "export":
        return export_graph(model, example_inputs)
    try:
        return _fx(model, example_inputs, leaf_modules, concrete_args,
                   "auto: symbolic torch.fx traced the model")
    except InputMismatchError as mismatch:
        # the shape run failed: inputs that do not fit fail export the same way, and then the
        # one-line mismatch is the message; arguments fx could not reach may still export
        try:
            return export_graph(model, example_inputs,
                                reason=f"auto: symbolic torch.fx failed ({_first_line(mismatch)})")
        except TraceError:
            raise mismatch from None
    except TraceError as fx_error:
        return _export_after(model, example_inputs, fx_error)


def _export_after(model, example_inputs, fx_error: TraceError) -> ExportTraced:
    why = f"auto: symbolic torch.fx failed ({_first_line(fx_error)})"
    try:
        return export_graph(model, example_inputs, reason=why)
    except TraceError as e:
        lines = str(e).strip().splitlines()
        raise TraceError(f"{fx_error}\n  torch.export failed too: " + "\n  ".join(lines[:2])) from fx_error


def analyze_frontend(model: torch.nn.Module, example_inputs: Any, frontend: str,
                     leaf_modules: Sequence, concrete_args: dict | None,
                     analyse: Callable[[Traced], Any]):
    """The ChannelGraph of ``analyse(traced)`` for the chosen frontend. 'auto' also tries
    torch.export when fx leaves barriers (ops without a rule) and keeps the one with fewer."""
    traced = trace_frontend(model, example_inputs, frontend, leaf_modules=leaf_modules,
                            concrete_args=concrete_args)
    cg = analyse(traced)
    if frontend != "auto" or traced.frontend != "fx" or leaf_modules or concrete_args:
        return cg
    fx_barriers = [fg for fg in cg.frozen if fg.barrier]
    if not fx_barriers:
        return cg
    try:
        alt = analyse(export_graph(model, example_inputs))
    except TraceError:
        return cg
    ex_barriers = [fg for fg in alt.frozen if fg.barrier]
    summary = (f"fx left {len(fx_barriers)} group(s) frozen by ops without a rule "
               f"(first: {fx_barriers[0].describe()}); export left {len(ex_barriers)}")
    if len(ex_barriers) < len(fx_barriers):
        return dataclasses.replace(alt, traced=dataclasses.replace(
            alt.traced, frontend_reason=f"auto: {summary}"))
    return dataclasses.replace(cg, traced=dataclasses.replace(
        traced, frontend_reason=f"auto: symbolic torch.fx traced; {summary}"))
