"""The fxprune error hierarchy: every error says where (node, module) and what to do."""
from __future__ import annotations

__all__ = [
    "FxPruneError",
    "TraceError",
    "UnsupportedOpError",
    "PlanMismatchError",
    "ShrinkError",
    "VerificationError",
]


class FxPruneError(Exception):
    """Base class of every error fxprune raises on purpose."""


class TraceError(FxPruneError):
    """The model could not be traced to a torch.fx graph."""


class UnsupportedOpError(FxPruneError):
    """An op has no channel rule and the caller asked for it to be pruned through."""


class PlanMismatchError(FxPruneError):
    """A pruning plan was applied to a model it was not made for."""


class ShrinkError(FxPruneError):
    """The rewrite produced a graph whose shapes disagree with the plan."""


class VerificationError(FxPruneError):
    """The pruned module does not match the dead-channel oracle."""
