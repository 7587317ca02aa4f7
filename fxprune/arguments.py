"""Argument checks shared by the public entry points.

Every check raises an :class:`~fxprune.errors.ArgumentError` that names the
argument and the fix. Unknown keywords are rejected with the closest accepted
name (``ratoi`` -> ``ratio``): the accepted names come from the function's own
signature plus the criterion's declared options, so a new parameter of
``prune()`` is checked with no extra line here.
"""
from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Callable, Collection, Iterable
from typing import Any

import torch

from .errors import ArgumentError, UnknownArgumentError

__all__ = ["parameter_names", "reject_unknown", "closest", "as_items", "check_positive_int",
           "check_bool"]


def parameter_names(fn: Callable) -> tuple[str, ...]:
    """The named parameters of ``fn`` (no ``*args`` / ``**kwargs``)."""
    return tuple(p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def closest(name: str, choices: Iterable[str]) -> str | None:
    hits = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return hits[0] if hits else None


def reject_unknown(where: str, given: Iterable[str], accepted: Collection[str],
                   also_known: Collection[str] = (), describe: str | None = None) -> None:
    """Raise UnknownArgumentError for the first name of ``given`` not in ``accepted``,
    suggesting the closest of ``accepted`` and ``also_known``; ``describe`` says what
    is accepted (default: the sorted names)."""
    for name in given:
        if name in accepted:
            continue
        guess = closest(name, [*accepted, *also_known])
        did = f"did you mean {guess!r}? " if guess else ""
        describe = describe or f"accepted: {', '.join(sorted(accepted)) or 'none'}"
        raise UnknownArgumentError(f"{where}: unknown keyword argument {name!r}; {did}{describe}")


def as_items(value: Any, what: str) -> tuple:
    """A list argument given as one item (``ignore="fc"``, ``ignore=model.fc``,
    ``leaf_modules=MyBlock``) is that one item, not its letters or its children
    (an ``nn.Sequential`` iterates over them); ``None`` is no items."""
    if value is None:
        return ()
    if isinstance(value, (str, type, torch.nn.Module, torch.Tensor)):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ArgumentError(f"{what} must be a list of names or modules, got "
                            f"{type(value).__name__}; fix: {what}=[...]") from None


def check_positive_int(value: Any, what: str, example: str = "8") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ArgumentError(f"{what} must be a positive integer (e.g. {what}={example}), "
                            f"got {value!r}")
    return int(value)


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ArgumentError(f"{what} must be True or False, got {value!r}")
    return value
