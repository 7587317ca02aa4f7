"""shrink: the one rewriting pass. Applies a PruningPlan to a traced model.

Index-selects every affected parameter and buffer, rebuilds every affected
module with its new hyper-parameters, rewrites the size constants in the graph
(view/reshape shapes, split sizes, pad widths, slice bounds, normalized_shape)
by re-running the graph, and checks every node's shape against the plan. The
input ChannelGraph and the user's model are never modified.
"""
from __future__ import annotations

import copy

import numpy as np
import torch.fx as fx
from torch import nn

from fxprune.channel_graph import ChannelGraph
from fxprune.errors import PlanMismatchError
from fxprune.plan import PruningPlan
from fxprune.rewrite import copy_targets, replace_tensor, select
from fxprune.rules.purity import eliminate_dead_pure_nodes

from .shrink_constants import fix_constants
from .shrink_export import fix_aten_constants, refresh_meta
from .shrink_modules import update_modules

__all__ = ["shrink", "kept_indices", "replaced_tensors"]


def kept_indices(cg: ChannelGraph, plan: PruningPlan) -> dict[tuple[str, int], np.ndarray]:
    """{(tensor key, dim): kept local indices} for every dim the plan shrinks."""
    return {kd: np.flatnonzero(~mask) for kd, mask in cg.removed_masks(plan.removed).items()}


class _Draft(nn.Module):
    """The pruned model while shrink edits it: copies of the submodules and tensors the
    graph names, and a copy of the graph, compiled into a GraphModule once at the end
    (each compile generates and compiles the whole forward)."""

    def __init__(self, holder: nn.Module, graph: fx.Graph):
        super().__init__()
        self._modules, self._parameters, self._buffers = \
            holder._modules, holder._parameters, holder._buffers
        self.graph = graph


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    """A copy of ``graph`` (node metadata copied one level deep, as deepcopy does)."""
    return copy.deepcopy(graph)


def _targets(graph: fx.Graph) -> list[str]:
    return list(dict.fromkeys(n.target for n in graph.nodes if n.op in ("call_module", "get_attr")))


def replaced_tensors(cg: ChannelGraph, keep: dict[tuple[str, int], np.ndarray]) -> list:
    """The parameters and buffers shrink index-selects (their copies would be thrown away)."""
    return [cg.tensor(key) for key in {key for key, _d in keep if key[0] in "pb"}]


def shrink(cg: ChannelGraph, plan: PruningPlan) -> fx.GraphModule:
    """A new, physically smaller GraphModule computing what the plan leaves."""
    plan.check_against(cg.signature, {g.id: g.size for g in cg.groups})
    keep = kept_indices(cg, plan)
    for (key, d), idx in keep.items():
        if idx.size == 0:
            raise PlanMismatchError(
                f"the plan removes every entry of dim {d} of {key[2:]!r} (e.g. a whole concat "
                "branch); keep at least one unit of it")
    graph = _copy_graph(cg.traced.graph)
    # copies of what the graph uses, with empty placeholders for the tensors replaced below
    draft = _Draft(copy_targets(cg.traced.root, _targets(graph), skip=replaced_tensors(cg, keep)),
                   graph)
    by_tensor: dict[str, dict[int, np.ndarray]] = {}
    for (key, d), idx in keep.items():
        by_tensor.setdefault(key, {})[d] = idx
    for key, dims in by_tensor.items():
        if key[0] in "pb":
            replace_tensor(draft, cg.tensor_names[key], select(cg.tensor(key), dims))
    update_modules(draft, cg, keep)
    exported = cg.frontend == "export"  # --- ATen size literals and metadata (shrink_export.py) ---
    if exported:
        fix_aten_constants(draft, keep)
    fix_constants(draft, cg, keep)
    eliminate_dead_pure_nodes(draft)
    graph.lint()
    gm = cg.traced.module(draft, graph)
    if exported:
        refresh_meta(gm)
    return gm
