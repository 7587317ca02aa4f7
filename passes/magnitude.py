"""Magnitude criteria: a unit's importance is the L1 (or squared L2) mass of every
parameter entry it owns, summed over all members of its group. ``random`` draws
seeded scores. Criterion passes only score; the planner picks the units."""
from __future__ import annotations

import numpy as np
import torch

from fxprune.channel_graph import ChannelGraph, Group

__all__ = ["group_norm_scores", "l1_scores", "l2_scores", "random_scores"]


def _param(cg: ChannelGraph, key: str) -> torch.Tensor:
    name = cg.tensor_names[key][0]
    return cg.gm.get_parameter(name).detach()


def group_norm_scores(cg: ChannelGraph, group: Group, p: int) -> np.ndarray:
    """Σ over members of Σ |w|^p of the entries unit i owns."""
    scores = np.zeros(group.size, dtype=np.float64)
    with torch.no_grad():
        for m in group.params():
            t = _param(cg, m.key).float()
            other = [d for d in range(t.ndim) if d != m.dim]
            # one fused reduction (no |w| temporary): Σ|w|^p = ||w||_p^p over the other dims
            per_index = (torch.linalg.vector_norm(t, ord=p, dim=other) ** p if other
                         else t.abs() ** p).double().cpu().numpy()
            scores += np.bincount(m.unit, weights=per_index[m.index], minlength=group.size)
    return scores


def l1_scores(cg: ChannelGraph, **_) -> dict[str, np.ndarray]:
    return {g.id: group_norm_scores(cg, g, 1) for g in cg.groups}


def l2_scores(cg: ChannelGraph, **_) -> dict[str, np.ndarray]:
    return {g.id: group_norm_scores(cg, g, 2) for g in cg.groups}


def random_scores(cg: ChannelGraph, seed: int = 0, **_) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.size) for g in cg.groups}
