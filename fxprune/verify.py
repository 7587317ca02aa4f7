"""verify(): the equivalence oracle for a rewrite.

The original model with every removed unit's parameter entries zeroed must
compute what the pruned module computes. Exact up to float rounding wherever no
channel-mixing normalisation (LayerNorm) sits in a pruned group.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import torch

from .channel_graph import ChannelGraph
from .errors import VerificationError
from .plan import PruningPlan
from .trace import as_tuple

__all__ = ["verify", "zero_removed", "max_relative_diff"]


def zero_removed(model: torch.nn.Module, cg: ChannelGraph, plan: PruningPlan) -> torch.nn.Module:
    """A copy of ``model`` with the parameter entries of every removed unit set to zero."""
    dead = copy.deepcopy(model)
    params = dict(dead.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for g in cg.groups:
            units = plan.removed.get(g.id)
            if not units:
                continue
            units_arr = np.asarray(units)
            for m in g.params():
                idx = m.index[np.isin(m.unit, units_arr)]
                if idx.size:
                    for name in cg.tensor_names[m.key]:
                        t = params[name]
                        t.index_fill_(m.dim, torch.as_tensor(idx, device=t.device), 0.0)
    return dead


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat(o)]
    return []


def max_relative_diff(a: Any, b: Any) -> float:
    worst = 0.0
    for x, y in zip(_flat(a), _flat(b), strict=True):
        if x.shape != y.shape:
            return float("inf")
        scale = x.abs().max().item() + 1e-12
        worst = max(worst, (x.double() - y.double()).abs().max().item() / scale)
    return worst


def verify(model: torch.nn.Module, result: Any, example_inputs: Any, *, rtol: float = 1e-5,
           raise_on_fail: bool = False) -> float:
    """Max relative difference between the pruned module and the dead-unit oracle.

    Both run in eval mode. ``result`` is a PruneResult. Raises VerificationError
    when ``raise_on_fail`` and the difference exceeds ``rtol``. When a criterion
    re-fitted weights after the rewrite (ThiNet, LASSO), the rewrite itself is
    what is verified.
    """
    inputs = as_tuple(example_inputs)
    dead = zero_removed(model, result.graph, result.plan).eval()
    structural = getattr(result, "structural_module", None)
    pruned = copy.deepcopy(structural() if structural else result.module).eval()
    with torch.no_grad():
        reference = dead(*inputs)
        diff = max_relative_diff(reference, pruned(*inputs))
    if all(not t.any() for t in _flat(reference)):
        warnings.warn("verify: the model's output is all zeros on these inputs (a zero-initialised "
                      "head?), so the comparison proves nothing; re-initialise the head or compare "
                      "on a trained model", stacklevel=2)
    if raise_on_fail and diff > rtol:
        mixing = [g.id for g in result.graph.groups if g.mixing and result.plan.removed.get(g.id)]
        hint = f" (groups with LayerNorm are not exact: {mixing[:3]})" if mixing else ""
        raise VerificationError(f"pruned module differs from the dead-unit oracle by {diff:.3g} "
                                f"(relative), above {rtol:g}{hint}")
    return diff
