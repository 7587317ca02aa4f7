"""Errors about files fxprune reads and writes: saved directories, plans, weights,
checkpoints. Each names the file and says what the user can do about it.

They live beside :mod:`fxprune.errors` (the compiler's errors) and subclass its
``FxPruneError``, so ``except FxPruneError`` catches them and the CLI prints them
as one-line errors, not as "internal error".
"""
from __future__ import annotations

from .errors import FxPruneError

__all__ = [
    "ChecksumError",
    "CorruptFileError",
    "InvalidPlanError",
    "MetaFileError",
    "NotASaveError",
    "PlanFileError",
    "RefusedOverwriteError",
    "UnexpectedFilesError",
    "UntrustedFactoryError",
    "WeightsFileError",
]


class CorruptFileError(FxPruneError, ValueError):
    """A file fxprune reads is truncated, empty, not the format it should be, or damaged."""


class ChecksumError(CorruptFileError):
    """A file's sha256 differs from the one its manifest (or checkpoint) recorded."""


class MetaFileError(CorruptFileError):
    """A saved directory's ``meta.json`` (or ``manifest.json``) is unreadable or invalid."""


class WeightsFileError(CorruptFileError):
    """A weights file (``model.safetensors``, ``state_dict.pt``, a checkpoint) is unreadable."""


class InvalidPlanError(FxPruneError, ValueError):
    """A PruningPlan's contents are invalid: duplicate or non-integer unit indices,
    a string where a list belongs, a missing field."""


class PlanFileError(CorruptFileError, InvalidPlanError):
    """A ``plan.json`` is unreadable (truncated, empty, binary) or holds an invalid plan."""


class RefusedOverwriteError(FxPruneError):
    """Saving would replace or delete files fxprune did not write; nothing was changed."""


class NotASaveError(RefusedOverwriteError):
    """The target directory exists and is not an fxprune save."""


class UnexpectedFilesError(RefusedOverwriteError):
    """The target is an fxprune save, but it holds files the save did not write
    (or files changed since), which replacing it would delete."""


class UntrustedFactoryError(FxPruneError):
    """A saved directory names a model factory that is not a known registry model;
    loading never imports or calls code a file names."""
