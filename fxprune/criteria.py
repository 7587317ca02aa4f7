"""Criterion registry: name → scoring function.

A scoring function takes the ChannelGraph (and, for data-driven criteria, the
model and calibration data) and returns ``{group id: per-unit importance}``
(higher = keep). Criteria that also change kept weights (ThiNet, LASSO) or
pick units themselves return a ``CriterionOutput``.

Each criterion declares the options it accepts: by default the named keyword
parameters of its function other than ``model`` and ``calibration`` (its
``**_`` catch-all accepts nothing), or ``register(name, options=(...))``.
The calibration settings ``num_batches`` and ``progress`` are accepted by every
criterion (so one call can loop over criteria, as ``calibration=`` is) and
passed on only to those that declare them. ``fxprune.prune`` rejects any other
keyword, naming the closest option.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .errors import UnknownArgumentError

__all__ = ["CRITERIA", "COMMON_OPTIONS", "register", "get_criterion", "criterion_options",
           "criterion_call_options", "CriterionOutput"]


@dataclass
class CriterionOutput:
    """Scores, or a ready selection, plus optional weight updates applied after shrink."""

    scores: dict[str, np.ndarray] = field(default_factory=dict)
    removed: dict[str, list[int]] | None = None  # the criterion picked the units itself
    weight_updates: dict[str, object] = field(default_factory=dict)  # param name -> tensor (pruned shape)
    removed_blocks: tuple[str, ...] = ()


CRITERIA: dict[str, Callable] = {}
OPTIONS: dict[str, frozenset[str]] = {}  # criterion name -> the options it declares
_SUPPLIED = ("model", "calibration")  # prune() passes these to every criterion itself
COMMON_OPTIONS = frozenset({"num_batches", "progress"})  # calibration settings, for any criterion


def register(name: str, options: Iterable[str] | None = None) -> Callable[[Callable], Callable]:
    """Register ``fn`` as criterion ``name``; ``options`` defaults to its keyword parameters."""
    def deco(fn: Callable) -> Callable:
        CRITERIA[name] = fn
        if options is not None:
            OPTIONS[name] = frozenset(options)
        return fn
    return deco


def criterion_options(name: str) -> frozenset[str]:
    """The options criterion ``name`` accepts (``prune(..., criterion=name, **options)``)."""
    fn = get_criterion(name)
    if name not in OPTIONS:
        from .arguments import parameter_names

        OPTIONS[name] = frozenset(parameter_names(fn)[1:]) - set(_SUPPLIED)  # [0] is the graph
    return OPTIONS[name] | COMMON_OPTIONS


def criterion_call_options(name: str, options: dict) -> dict:
    """``options`` less the common calibration settings criterion ``name`` does not declare."""
    criterion_options(name)
    return {k: v for k, v in options.items() if k in OPTIONS[name] or k not in COMMON_OPTIONS}


def get_criterion(name: str) -> Callable:
    _load_builtin()
    if not isinstance(name, str) or name not in CRITERIA:
        from .arguments import closest

        guess = closest(name, CRITERIA) if isinstance(name, str) else None
        did = f"did you mean {guess!r}? " if guess else ""
        raise UnknownArgumentError(f"unknown criterion {name!r}; {did}choose one of "
                                   f"{sorted(CRITERIA)}")
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
