"""The fxprune error hierarchy: every error says where (node, module) and what to do."""
from __future__ import annotations

__all__ = [
    "FxPruneError",
    "TraceError",
    "UnsupportedOpError",
    "PlanMismatchError",
    "ShrinkError",
    "VerificationError",
    "ArgumentError",
    "UnknownArgumentError",
    "CalibrationError",
    "InputMismatchError",
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


class ArgumentError(FxPruneError, ValueError):
    """An argument of a public function has the wrong type or value (names it and the fix)."""


class UnknownArgumentError(ArgumentError, TypeError):
    """A keyword argument (or criterion option) that nothing accepts: a misspelling, usually."""


class CalibrationError(FxPruneError):
    """A calibration batch does not fit the model (names the batch and the expected shape)."""


class InputMismatchError(TraceError):
    """``example_inputs`` do not fit the model's forward (names the node and the real cause)."""
