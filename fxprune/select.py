"""The planner: turn per-unit importance scores into a PruningPlan.

Three ways to say how much: a ratio per group (or one ratio for all), a global
ranking with per-group normalisation, or a budget (``target_macs`` /
``target_params``) met by bisection on the global ratio. Every group keeps at
least one unit, and a multiple of ``round_to``.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Mapping

import numpy as np

from .channel_graph import ChannelGraph
from .errors import ArgumentError, FxPruneError
from .plan import PruningPlan

__all__ = ["check_ratio", "keep_count", "select_by_ratio", "select_global", "make_plan"]


def check_ratio(ratio: float, what: str = "ratio") -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
        raise ArgumentError(f"{what} must be a number in [0, 1) (the fraction removed), got "
                            f"{ratio!r} of type {type(ratio).__name__}; fix: {what}=0.5"
                            + (" or a {group id: ratio} dict" if what == "ratio" else ""))
    if not 0.0 <= float(ratio) < 1.0:
        raise ArgumentError(f"{what} must be in [0, 1), got {ratio!r}")
    return float(ratio)


def keep_count(size: int, ratio: float, round_to: int = 1) -> int:
    """Units kept in a group of ``size`` when removing ``ratio``: int(size*(1-ratio)),
    at least one, rounded down to a multiple of round_to (never below round_to)."""
    keep = max(1, int(math.floor(round(size * (1.0 - ratio), 6))))
    if round_to > 1 and size >= round_to:
        keep = max(round_to, (keep // round_to) * round_to)
    return min(keep, size)


def _lowest(scores: np.ndarray, n: int) -> list[int]:
    order = np.argsort(scores, kind="stable")
    return sorted(int(i) for i in order[:n])


def select_by_ratio(cg: ChannelGraph, scores: Mapping[str, np.ndarray], ratio: float | Mapping[str, float],
                    round_to: int = 1) -> dict[str, list[int]]:
    if isinstance(ratio, Mapping):
        known = {g.id for g in cg.groups}
        for gid, r in ratio.items():
            if gid not in known:
                raise FxPruneError(f"ratio names group {gid!r}, which is not a prunable group of this "
                                   f"model; see fxprune.analyze(model, x).groups for the ids")
            check_ratio(r, f"ratio for group {gid!r}")
    out = {}
    for g in cg.groups:
        r = ratio.get(g.id, 0.0) if isinstance(ratio, Mapping) else ratio
        if g.id not in scores or r <= 0:
            continue
        n_remove = g.size - keep_count(g.size, check_ratio(r, f"ratio for group {g.id}"), round_to)
        if n_remove > 0:
            out[g.id] = _lowest(np.asarray(scores[g.id]), n_remove)
    return out


def select_global(cg: ChannelGraph, scores: Mapping[str, np.ndarray], ratio: float,
                  round_to: int = 1) -> dict[str, list[int]]:
    """Remove the globally least important units; scores are divided by their
    group's mean so groups of different scale compete fairly."""
    groups = [g for g in cg.groups if g.id in scores]
    total = sum(g.size for g in groups)
    entries = []
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        norm = s / (s.mean() + 1e-12)
        entries.extend((v, g.id, i) for i, v in enumerate(norm))
    entries.sort(key=lambda e: e[0])
    budget = int(round(total * ratio))
    removed: dict[str, list[int]] = {g.id: [] for g in groups}
    sizes = {g.id: g.size for g in groups}
    for _, gid, i in entries:
        if budget <= 0:
            break
        if sizes[gid] - len(removed[gid]) > 1:
            removed[gid].append(i)
            budget -= 1
    out = {}
    for gid, units in removed.items():
        keep = keep_count(sizes[gid], len(units) / sizes[gid], round_to)
        n_remove = sizes[gid] - keep
        if n_remove > 0:
            out[gid] = _lowest(np.asarray(scores[gid]), n_remove) if len(units) != n_remove else sorted(units)
    return out


def _keep_every_member(cg: ChannelGraph, removed: Mapping[str, list[int]]) -> dict[str, list[int]]:
    """No tensor dim may lose all of its entries (a concat branch, a split piece):
    give back the last removed unit of any member that would be emptied."""
    out = {}
    for g in cg.groups:
        units = sorted(set(removed.get(g.id, ())))
        if not units:
            continue
        dead = np.zeros(g.size, dtype=bool)
        dead[units] = True
        for m in g.members:
            if m.unit.size == m.length and dead[m.unit].all():
                dead[m.unit.max()] = False
        out[g.id] = np.flatnonzero(dead).tolist()
    return out


def make_plan(cg: ChannelGraph, removed: Mapping[str, list[int]], criterion: str,
              settings: dict) -> PruningPlan:
    removed = _keep_every_member(cg, removed)
    return PruningPlan(
        removed={k: tuple(v) for k, v in removed.items() if v},
        group_sizes={g.id: g.size for g in cg.groups},
        signature=cg.signature, criterion=criterion, settings=settings)


def bisect_budget(measure: Callable[[float], float], target: float, tol: float = 0.02,
                  iters: int = 18) -> float:
    """The smallest global ratio whose kept fraction ``measure(ratio)`` is <= target."""
    lo, hi = 0.0, 0.999
    if measure(hi) > target + tol:
        raise FxPruneError(f"cannot reach the budget {target:.3f}: even removing 99.9% keeps "
                           f"{measure(hi):.3f}")
    for _ in range(iters):
        mid = (lo + hi) / 2
        if measure(mid) <= target:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-4:
            break
    return hi
