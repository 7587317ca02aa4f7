"""Magnitude criteria: a unit's importance is the L1 (or squared L2) mass of every
parameter entry it owns, summed over all members of its group. ``random`` draws
seeded scores. Criterion passes only score; the planner picks the units."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from fxprune.channel_graph import ChannelGraph, Group

__all__ = ["norm_scores", "group_norm_scores", "l1_scores", "l2_scores", "random_scores"]


def _param(cg: ChannelGraph, key: str) -> torch.Tensor:
    return cg.tensor(key).detach()


def _dim_masses(t: torch.Tensor, dims: set[int], p: int) -> dict[int, torch.Tensor]:
    """{d: Σ |w|^p over every dim of ``t`` but d} for each d in ``dims``.

    Only the leading dim: one fused reduction of the rows (no |w|^p temporary). Any
    other dim: |w|^p once, then for each d the dims before it are summed away first
    (adding whole contiguous slabs, which vectorises) and the rest row by row; a
    reduction over a strided dim (``vector_norm(dim=(0, 2, 3))``) is 5-20x slower."""
    t = t.float()
    if t.ndim == 1:
        return {0: t.abs() ** p}
    if dims == {0}:
        return {0: torch.linalg.vector_norm(t.reshape(t.shape[0], -1), ord=p, dim=1) ** p}
    mass = t.abs() if p == 1 else t.abs() ** p
    out = {}
    for d in dims:
        lead = mass.sum(dim=tuple(range(d))) if d else mass
        out[d] = lead.reshape(lead.shape[0], -1).sum(1)
    return out


def norm_scores(cg: ChannelGraph, groups: Iterable[Group], p: int) -> dict[str, np.ndarray]:
    """{group id: Σ over members of Σ |w|^p of the entries unit i owns}. Each parameter is
    read once for all the dims the groups score it along (a conv weight is a member of
    its output group and of its input group)."""
    groups = list(groups)
    dims: dict[str, set[int]] = {}
    for g in groups:
        for m in g.params():
            dims.setdefault(m.key, set()).add(m.dim)
    with torch.no_grad():
        per_index = {(key, d): v.double().cpu().numpy()
                     for key, ds in dims.items()
                     for d, v in _dim_masses(_param(cg, key), ds, p).items()}
    scores = {}
    for g in groups:
        s = np.zeros(g.size, dtype=np.float64)
        for m in g.params():
            s += np.bincount(m.unit, weights=per_index[m.key, m.dim][m.index], minlength=g.size)
        scores[g.id] = s
    return scores


def group_norm_scores(cg: ChannelGraph, group: Group, p: int) -> np.ndarray:
    """Σ over members of Σ |w|^p of the entries unit i owns."""
    return norm_scores(cg, [group], p)[group.id]


def l1_scores(cg: ChannelGraph, **_) -> dict[str, np.ndarray]:
    return norm_scores(cg, cg.groups, 1)


def l2_scores(cg: ChannelGraph, **_) -> dict[str, np.ndarray]:
    return norm_scores(cg, cg.groups, 2)


def random_scores(cg: ChannelGraph, seed: int = 0, **_) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.size) for g in cg.groups}
