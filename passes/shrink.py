"""shrink: the one rewriting pass. Applies a PruningPlan to a traced model.

Index-selects every affected parameter and buffer, rebuilds every affected
module with its new hyper-parameters, rewrites the size constants in the graph
(view/reshape shapes, split sizes, pad widths, slice bounds, normalized_shape)
by re-running the graph, and checks every node's shape against the plan. The
input ChannelGraph and the user's model are never modified.
"""
from __future__ import annotations


import numpy as np
import torch.fx as fx

from fxprune.channel_graph import ChannelGraph
from fxprune.errors import PlanMismatchError
from fxprune.plan import PruningPlan
from fxprune.rewrite import copy_module, finish, replace_tensor, select

from .shrink_constants import fix_constants
from .shrink_export import fix_aten_constants, refresh_meta
from .shrink_modules import update_modules

__all__ = ["shrink", "kept_indices", "replaced_tensors"]


def kept_indices(cg: ChannelGraph, plan: PruningPlan) -> dict[tuple[str, int], np.ndarray]:
    """{(tensor key, dim): kept local indices} for every dim the plan shrinks."""
    return {kd: np.flatnonzero(~mask) for kd, mask in cg.removed_masks(plan.removed).items()}


def replaced_tensors(cg: ChannelGraph, keep: dict[tuple[str, int], np.ndarray]) -> set[str]:
    """Qualified names (every alias) of the parameters and buffers shrink index-selects."""
    return {n for (key, _d) in keep if key[0] in "pb" for n in cg.tensor_names[key]}


def shrink(cg: ChannelGraph, plan: PruningPlan) -> fx.GraphModule:
    """A new, physically smaller GraphModule computing what the plan leaves."""
    plan.check_against(cg.signature, {g.id: g.size for g in cg.groups})
    keep = kept_indices(cg, plan)
    for (key, d), idx in keep.items():
        if idx.size == 0:
            raise PlanMismatchError(
                f"the plan removes every entry of dim {d} of {key[2:]!r} (e.g. a whole concat "
                "branch); keep at least one unit of it")
    # the copy gets empty placeholders for the tensors replaced below, read from the original
    gm = copy_module(cg.gm, skip=replaced_tensors(cg, keep))
    by_tensor: dict[str, dict[int, np.ndarray]] = {}
    for (key, d), idx in keep.items():
        by_tensor.setdefault(key, {})[d] = idx
    for key, dims in by_tensor.items():
        if key[0] in "pb":
            names = cg.tensor_names[key]
            old = cg.gm.get_parameter(names[0]) if key[0] == "p" else cg.gm.get_buffer(names[0])
            replace_tensor(gm, names, select(old, dims))
    update_modules(gm, cg, keep)
    exported = cg.frontend == "export"  # --- ATen size literals and metadata (shrink_export.py) ---
    if exported:
        fix_aten_constants(gm, keep)
    fix_constants(gm, cg, keep)
    gm = finish(gm)
    if exported:
        refresh_meta(gm)
    return gm
