"""Faster drop-ins for two stages of ``passes/shrink.py`` (to be wired in by the lead).

``bench/prune_stages.py`` shows that after the analysis, prune's time goes to computing
the kept indices (``np.isin`` + ``np.setdiff1d`` per group member: sorts) and to
``copy.deepcopy`` of the GraphModule, which copies every parameter, including the ones
shrink index-selects (and so replaces) right afterwards.

    keep = kept_indices_fast(cg, plan)          # == passes.shrink.kept_indices(cg, plan)
    gm = copy_except(cg.gm, replaced)           # deepcopy, minus the tensors to be replaced
    old = cg.gm.get_parameter(name)             # ... so read those from the original

Both give results identical to the current code (``tests/test_latency_aware.py``).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import torch
import torch.fx as fx

from .channel_graph import ChannelGraph
from .plan import PruningPlan

__all__ = ["kept_indices_fast", "copy_except", "norm_scores_fast", "replaced_tensors",
           "shrink_fast"]


def kept_indices_fast(cg: ChannelGraph, plan: PruningPlan) -> dict[tuple[str, int], np.ndarray]:
    """{(tensor key, dim): kept local indices} for every dim the plan shrinks: a boolean
    lookup per group instead of ``np.isin`` per member, a mask instead of ``setdiff1d``."""
    gone: dict[tuple[str, int], np.ndarray] = {}
    for g in cg.groups:
        units = plan.removed.get(g.id)
        if not units:
            continue
        dead = np.zeros(g.size, dtype=bool)
        dead[list(units)] = True
        for m in g.members:
            sel = m.index[dead[m.unit]]
            if sel.size:
                kd = (m.key, m.dim)
                mask = gone.get(kd)
                if mask is None:
                    mask = gone[kd] = np.zeros(cg.dim_sizes[kd], dtype=bool)
                mask[sel] = True
    return {kd: np.flatnonzero(~mask) for kd, mask in gone.items()}


def replaced_tensors(cg: ChannelGraph, keep: dict[tuple[str, int], np.ndarray]) -> set[str]:
    """Qualified names (every alias) of the parameters and buffers shrink index-selects."""
    return {n for (key, _d) in keep if key[0] in "pb" for n in cg.tensor_names[key]}


def copy_except(gm: fx.GraphModule, replaced: Iterable[str]) -> fx.GraphModule:
    """``copy.deepcopy(gm)`` that does not copy the data of ``replaced`` tensors (they get
    empty placeholders, to be overwritten by the caller)."""
    memo: dict[int, object] = {}
    names = set(replaced)
    for name, t in [*gm.named_parameters(remove_duplicate=False),
                    *gm.named_buffers(remove_duplicate=False)]:
        if name in names and id(t) not in memo:
            empty = torch.empty(0, dtype=t.dtype, device=t.device)
            memo[id(t)] = (torch.nn.Parameter(empty, requires_grad=t.requires_grad)
                           if isinstance(t, torch.nn.Parameter) else empty)
    return copy.deepcopy(gm, memo)


def shrink_fast(cg: ChannelGraph, plan: PruningPlan) -> fx.GraphModule:
    """``passes.shrink.shrink`` with the two stages above swapped in (same result);
    the exact change proposed for ``passes/shrink.py``."""
    from fxprune.errors import PlanMismatchError
    from fxprune.passes.shrink_constants import fix_constants
    from fxprune.passes.shrink_modules import update_modules
    from fxprune.rewrite import finish, replace_tensor, select

    plan.check_against(cg.signature, {g.id: g.size for g in cg.groups})
    keep = kept_indices_fast(cg, plan)
    for (key, d), idx in keep.items():
        if idx.size == 0:
            raise PlanMismatchError(
                f"the plan removes every entry of dim {d} of {key[2:]!r} (e.g. a whole concat "
                "branch); keep at least one unit of it")
    gm = copy_except(cg.gm, replaced_tensors(cg, keep))
    by_tensor: dict[str, dict[int, np.ndarray]] = {}
    for (key, d), idx in keep.items():
        by_tensor.setdefault(key, {})[d] = idx
    for key, dims in by_tensor.items():
        if key[0] in "pb":
            names = cg.tensor_names[key]
            src = cg.gm  # the copy holds empty placeholders for these: read the original
            old = src.get_parameter(names[0]) if key[0] == "p" else src.get_buffer(names[0])
            replace_tensor(gm, names, select(old, dims))
    update_modules(gm, cg, keep)
    fix_constants(gm, cg, keep)
    return finish(gm)


def norm_scores_fast(cg: ChannelGraph, p: int = 1) -> dict[str, np.ndarray]:
    """``passes.magnitude.l1_scores`` (p=1) / ``l2_scores`` (p=2), same values: |w| summed
    without the ``** p`` copy for p=1, ``np.bincount`` instead of ``np.add.at``."""
    out = {}
    with torch.no_grad():
        for g in cg.groups:
            scores = np.zeros(g.size, dtype=np.float64)
            for m in g.params():
                t = cg.gm.get_parameter(cg.tensor_names[m.key][0]).detach().float()
                other = [d for d in range(t.ndim) if d != m.dim]
                mag = t.abs() if p == 1 else t.abs() ** p
                per_index = (mag.sum(dim=other) if other else mag).double().cpu().numpy()
                scores += np.bincount(m.unit, weights=per_index[m.index], minlength=g.size)
            out[g.id] = scores
    return out
