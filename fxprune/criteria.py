"""Criterion registry: name → scoring function.

A scoring function takes the ChannelGraph (and, for data-driven criteria, the
model and calibration data) and returns ``{group id: per-unit importance}``
(higher = keep). Criteria that also change kept weights (ThiNet, LASSO) or
pick units themselves return a ``CriterionOutput``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import FxPruneError

__all__ = ["CRITERIA", "register", "get_criterion", "CriterionOutput"]


@dataclass
class CriterionOutput:
    """Scores, or a ready selection, plus optional weight updates applied after shrink."""

    scores: dict[str, np.ndarray] = field(default_factory=dict)
    removed: dict[str, list[int]] | None = None  # the criterion picked the units itself
    weight_updates: dict[str, object] = field(default_factory=dict)  # param name -> tensor (pruned shape)
    removed_blocks: tuple[str, ...] = ()


CRITERIA: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        CRITERIA[name] = fn
        return fn
    return deco


def get_criterion(name: str) -> Callable:
    _load_builtin()
    if name not in CRITERIA:
        raise FxPruneError(f"unknown criterion {name!r}; choose one of {sorted(CRITERIA)}")
    return CRITERIA[name]


def _load_builtin() -> None:
    if CRITERIA.get("l1"):
        return
    from fxprune.passes import magnitude

    CRITERIA.setdefault("l1", magnitude.l1_scores)
    CRITERIA.setdefault("l2", magnitude.l2_scores)
    CRITERIA.setdefault("random", magnitude.random_scores)
    try:  # criterion passes from passes/ register themselves on import
        import fxprune.passes.criteria  # noqa: F401
        import fxprune.passes.jackpot_criterion  # noqa: F401
    except ImportError:
        pass
