"""analyze(): run the op rules over a traced graph and read off the pruning groups.

Never mutates the model. Ops without a rule become barriers: their dims are
frozen and a warning lists the groups they froze.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata

from .channel_graph import ChannelGraph, graph_signature
from .elements import ElementSpace, TensorRef
from .grouping import find_groups
from .errors import FxPruneError
from .rules import RuleContext, rule_for
from .rules.size_values import sizes_used_as_values
from .trace import Traced, trace_graph

__all__ = ["analyze", "apply_rules", "resolve_ignore", "graph_signature"]


class _Params:
    """Canonical names of parameters and buffers (shared tensors get one name)."""

    def __init__(self, root: torch.nn.Module, graph: fx.Graph, space: ElementSpace):
        self.space = space
        self.canon: dict[str, str] = {}
        self.tensors: dict[str, torch.Tensor] = {}
        first: dict[int, str] = {}
        for prefix, named in (("p", root.named_parameters(remove_duplicate=False)),
                              ("b", root.named_buffers(remove_duplicate=False))):
            for name, t in _used(named, graph):
                key = first.setdefault(id(t), f"{prefix}:{name}")
                self.canon[name] = key
                self.tensors[key] = t

    def ref(self, qualname: str) -> TensorRef | None:
        key = self.canon.get(qualname)
        if key is None:
            return None
        return self.space.tensor(key, tuple(self.tensors[key].shape))


def _used(named, graph: fx.Graph):
    """The named tensors the graph reads: those of called modules and get_attr targets
    (what a GraphModule of this graph would hold)."""
    called = {n.target for n in graph.nodes if n.op == "call_module"}
    attrs = {n.target for n in graph.nodes if n.op == "get_attr"}
    inside: dict[str, bool] = {"": False}  # module path -> lies in a called module

    def in_called(path: str) -> bool:
        hit = inside.get(path)
        if hit is None:
            hit = inside[path] = path in called or in_called(path.rpartition(".")[0])
        return hit

    for name, t in named:
        if name in attrs or in_called(name.rpartition(".")[0]):
            yield name, t


def _output_refs(space: ElementSpace, node: fx.Node) -> list[TensorRef | None]:
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, TensorMetadata):
        return [space.tensor(f"n:{node.name}", tuple(meta.shape))]
    if isinstance(meta, (list, tuple)):
        return [space.tensor(f"n:{node.name}.{k}", tuple(m.shape)) if isinstance(m, TensorMetadata)
                else None for k, m in enumerate(meta)]
    return []


def _flat_nodes(value: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(value, lambda n: out.append(n))
    return out


def _run_node(space, node, refs, params, gm) -> None:
    ctx_refs = lambda n: [r for r in refs.get(n.name, []) if r is not None]  # noqa: E731
    if node.op == "placeholder":
        for r in ctx_refs(node):
            space.freeze_all(r, "graph input", node.name, "boundary")
        return
    if node.op == "output":
        for n in _flat_nodes(node.args):
            for r in ctx_refs(n):
                space.freeze_all(r, "graph output", node.name, "boundary")
        return
    if node.op == "get_attr":
        p = params.ref(node.target)
        for r in ctx_refs(node):
            if p is not None:
                space.couple_all(r, p, node.name)
        return
    src = node.args[0] if node.args else None
    if (node.op == "call_function" and node.target.__name__ == "getitem"
            and isinstance(src, fx.Node) and len(refs.get(src.name, [])) != 1):
        parts, out = refs.get(src.name, []), ctx_refs(node)
        idx = node.args[1]
        if isinstance(idx, int) and -len(parts) <= idx < len(parts) and parts[idx] is not None and out:
            space.couple_all(parts[idx], out[0], node.name)
        return
    module = gm.get_submodule(node.target) if node.op == "call_module" else None
    rule = rule_for(node.op, node.target, module)
    ctx = RuleContext(space, node, refs, module, params.ref)
    if rule is None:
        _barrier(space, node, refs, module, "no rule for this op")
        return
    try:
        rule(ctx)
    except Exception as e:  # a rule that cannot read this node must not guess either
        _barrier(space, node, refs, module, f"rule failed: {type(e).__name__}: {e}")


def _freeze_sizes_used_as_values(space, refs, graph: fx.Graph) -> None:
    """A dim whose size feeds arithmetic on tensor values (``y / y.shape[1] ** 0.5``) is not
    prunable: the pruned model would compute with the new size (rules/size_values.py)."""
    for x, d, read, use in sizes_used_as_values(graph):
        for r in refs.get(x.name, [])[:1]:
            if r is not None:
                space.freeze(r, d, f"its size ({read.name}) is used as a value by {use.name} "
                             f"({getattr(use.target, '__name__', use.target)}); pruning it would "
                             "change that value", read.name, "rule")


def _barrier(space, node, refs, module, why: str) -> None:
    what = type(module).__name__ if module is not None else getattr(node.target, "__name__", node.target)
    reason = f"{why} ({node.op} {what}); add a rule or mark it ignored"
    for n in node.all_input_nodes + [node]:
        for r in refs.get(n.name, []):
            if r is not None:
                space.freeze_all(r, reason, node.name, "barrier")


def resolve_ignore(model: torch.nn.Module, ignore: Iterable) -> set[str]:
    """Qualified parameter names of the ignored modules / parameters / names."""
    from .arguments import as_items

    ignore = list(as_items(ignore, "ignore"))
    if not ignore:
        return set()
    module_name: dict[int, str] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        module_name.setdefault(id(m), n)
    # every name of every tensor: a tied parameter (an LM head sharing the embedding) is
    # ignored under whichever of its names the analysis calls it
    params = list(model.named_parameters(remove_duplicate=False))
    param_name: dict[int, str] = {}
    aliases: dict[int, set[str]] = {}
    for n, p in params:
        param_name.setdefault(id(p), n)
        aliases.setdefault(id(p), set()).add(n)
    out: set[str] = set()
    for item in ignore:
        if isinstance(item, torch.nn.Module):
            if id(item) not in module_name:
                raise FxPruneError(f"ignore: module {type(item).__name__} is not part of the model")
            prefix = module_name[id(item)]
        elif isinstance(item, torch.nn.Parameter):
            if id(item) not in param_name:
                raise FxPruneError(f"ignore: a parameter of shape {tuple(item.shape)} is not part of "
                                   "the model; pass the module or its qualified name")
            out |= aliases[id(item)]
            continue
        elif isinstance(item, str):
            if item not in set(module_name.values()) and item not in param_name.values():
                raise FxPruneError(f"ignore: {item!r} names no module or parameter of the model")
            prefix = item
        else:
            raise FxPruneError(f"ignore: entries must be modules or names, got {type(item).__name__}")
        for pn, p in params:
            if pn == prefix or pn.startswith(prefix + ".") or not prefix:
                out |= aliases[id(p)]
    return out


def analyze(
    model: torch.nn.Module,
    example_inputs: Any,
    *,
    ignore: Sequence = (),
    leaf_modules: Sequence = (),
    concrete_args: dict | None = None,
    warn: bool = True,
    frontend: str = "auto",
) -> ChannelGraph:
    """Trace ``model`` and find its pruning groups. Never mutates the model.

    ``frontend``: "fx" (symbolic torch.fx), "export" (torch.export, ATen ops) or
    "auto" (fx where it traces without avoidable barriers; see frontend_export.py)."""
    ignored = resolve_ignore(model, ignore)

    def analyse(traced: Traced) -> ChannelGraph:
        space, aliases = apply_rules(traced)
        groups, frozen = find_groups(space, ignored)
        return ChannelGraph(traced, tuple(groups), tuple(frozen), tensor_names=aliases, space=space)

    if frontend == "fx":
        cg = analyse(trace_graph(model, example_inputs, leaf_modules=leaf_modules,
                                 concrete_args=concrete_args))
    else:  # --- frontend dispatch (frontend_export.py) ---
        from .frontend_export import analyze_frontend
        cg = analyze_frontend(model, example_inputs, frontend, leaf_modules, concrete_args, analyse)
    if warn:
        _warn_barriers(cg)
    return cg


def apply_rules(traced: Traced) -> tuple[ElementSpace, dict[str, tuple[str, ...]]]:
    """Run every node's rule over the traced graph. Returns the element space (links and
    freezes) and, per canonical tensor key, all names of that tensor."""
    space = ElementSpace()
    params = _Params(traced.root, traced.graph, space)
    refs: dict[str, list[TensorRef | None]] = {}
    for node in traced.graph.nodes:
        refs[node.name] = _output_refs(space, node)
        _run_node(space, node, refs, params, traced.root)
    _freeze_sizes_used_as_values(space, refs, traced.graph)
    for d in range(len(space.dim_size)):
        if d not in space.touched:
            key, axis = space.dim_key[d]
            space.freeze(space.refs[key], axis, "coupled by no rule", key[2:], "uncoupled")
    aliases: dict[str, tuple[str, ...]] = {}
    for name, key in params.canon.items():
        aliases[key] = aliases.get(key, ()) + (name,)
    return space, aliases


def _warn_barriers(cg: ChannelGraph) -> None:
    blocked = [fg for fg in cg.frozen if fg.barrier]
    if blocked:
        lines = "\n".join(f"  {fg.id}: {fg.describe()}" for fg in blocked[:10])
        more = f"\n  ... and {len(blocked) - 10} more" if len(blocked) > 10 else ""
        warnings.warn(
            f"fxprune: {len(blocked)} group(s) frozen by ops without a rule; they will not be "
            f"pruned:\n{lines}{more}", stacklevel=3)
