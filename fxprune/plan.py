"""PruningPlan: plain data saying which units of which groups to remove.

Produced by any criterion pass, editable by hand, saved as JSON and replayed
on a fresh model of the same architecture. The graph signature it carries
lets a replay name the first node where another model differs.
"""
from __future__ import annotations

import hashlib
import json
import numbers
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import PlanMismatchError
from .file_errors import InvalidPlanError, PlanFileError

__all__ = ["PruningPlan"]


@dataclass(frozen=True)
class PruningPlan:
    """For each group id, the sorted unit indices to remove."""

    removed: dict[str, tuple[int, ...]]
    group_sizes: dict[str, int]
    signature: tuple[str, ...] = ()
    criterion: str = "manual"
    settings: dict[str, Any] = field(default_factory=dict)
    removed_blocks: tuple[str, ...] = ()  # depth pruning: residual branches to delete
    version: int = 1

    def __post_init__(self) -> None:
        """Check the fields and normalise them (tuples, sorted units); raise
        ``InvalidPlanError`` naming the field otherwise."""
        if not isinstance(self.removed, Mapping):
            raise InvalidPlanError(f"plan removed must map group ids to unit lists, "
                                   f"got {type(self.removed).__name__}")
        removed = {_group_id(k, "removed"): _units(k, v) for k, v in self.removed.items()}
        if not isinstance(self.group_sizes, Mapping):
            raise InvalidPlanError("plan group_sizes must map group ids to sizes")
        sizes = {_group_id(k, "group_sizes"): _size(k, v) for k, v in self.group_sizes.items()}
        object.__setattr__(self, "removed", removed)
        object.__setattr__(self, "group_sizes", sizes)
        object.__setattr__(self, "removed_blocks", _names(self.removed_blocks, "removed_blocks"))
        object.__setattr__(self, "signature", _names(self.signature, "signature"))
        if not isinstance(self.criterion, str):
            raise InvalidPlanError(f"plan criterion must be a string, got {self.criterion!r}")
        if not isinstance(self.settings, Mapping):
            raise InvalidPlanError(f"plan settings must be a mapping, got {self.settings!r}")
        if not _is_int(self.version) or self.version < 1:
            raise InvalidPlanError(f"plan version must be a positive integer, got {self.version!r}")

    @property
    def num_removed(self) -> int:
        return sum(len(v) for v in self.removed.values())

    def kept(self, gid: str) -> int:
        return self.group_sizes[gid] - len(self.removed.get(gid, ()))

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps({
            "format": "fxprune.plan", "version": self.version, "criterion": self.criterion,
            "settings": self.settings, "removed": {k: list(v) for k, v in self.removed.items()},
            "group_sizes": self.group_sizes, "removed_blocks": list(self.removed_blocks),
            "signature": list(self.signature),
        }, indent=indent)

    @classmethod
    def from_json(cls, s: str | bytes, source: str | None = None) -> "PruningPlan":
        """Parse a plan; ``PlanFileError`` (naming ``source``, e.g. the file) if ``s`` is
        not JSON, not an fxprune plan, or an invalid one."""
        where = source or "the plan JSON"
        fix = "restore it, or write it again with PruningPlan.to_json()"
        try:
            text = s.decode("utf-8") if isinstance(s, (bytes, bytearray)) else s
        except UnicodeDecodeError as e:
            raise PlanFileError(f"{where} is not text (binary data at byte {e.start}); "
                                f"{fix}") from e
        if not text.strip():
            raise PlanFileError(f"{where} is empty; {fix}")
        try:
            d = json.loads(text)
        except ValueError as e:
            raise PlanFileError(f"{where} is not valid JSON ({e}); it may be truncated: "
                                f"{fix}") from e
        if not isinstance(d, dict) or d.get("format") != "fxprune.plan":
            raise PlanFileError(f"{where} is not an fxprune plan (missing format: fxprune.plan); "
                                f"{fix}")
        missing = [k for k in ("removed", "group_sizes") if k not in d]
        if missing:
            raise PlanFileError(f"{where} has no {' or '.join(missing)} field; {fix}")
        try:
            return cls(
                removed=d["removed"], group_sizes=d["group_sizes"],
                signature=d.get("signature", ()), criterion=d.get("criterion", "manual"),
                settings=d.get("settings", {}), removed_blocks=d.get("removed_blocks", ()),
                version=d.get("version", 1),
            )
        except InvalidPlanError as e:
            raise PlanFileError(f"{where}: {e}; {fix}") from e

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def check_against(self, signature: tuple[str, ...], group_sizes: dict[str, int]) -> None:
        """Raise PlanMismatchError naming the first node or group that differs."""
        if self.signature and tuple(self.signature) != tuple(signature):
            for i, (a, b) in enumerate(zip(self.signature, signature)):
                if a != b:
                    raise PlanMismatchError(
                        f"plan was made for another model: node {i} differs\n"
                        f"  plan : {a}\n  model: {b}\n"
                        "  fix: build the same architecture (and example input shape) the plan was made for")
            raise PlanMismatchError(
                f"plan was made for another model: {len(self.signature)} nodes in the plan, "
                f"{len(signature)} in the model (first extra node: "
                f"{(self.signature[len(signature):] or signature[len(self.signature):])[0]})")
        for gid, units in self.removed.items():
            if gid not in group_sizes:
                raise PlanMismatchError(f"plan names group {gid!r}, which this model does not have")
            if group_sizes[gid] != self.group_sizes.get(gid):
                raise PlanMismatchError(
                    f"group {gid!r} has {group_sizes[gid]} units here, {self.group_sizes.get(gid)} in the plan")
            if units and (min(units) < 0 or max(units) >= group_sizes[gid]):
                raise PlanMismatchError(f"group {gid!r}: unit index out of range 0..{group_sizes[gid] - 1}")
            if len(units) >= group_sizes[gid]:
                raise PlanMismatchError(f"group {gid!r}: the plan removes every unit; keep at least one")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _group_id(k: Any, field_name: str) -> str:
    if not isinstance(k, str):
        raise InvalidPlanError(f"plan {field_name}: group id {k!r} is not a string")
    return k


def _units(gid: str, units: Any) -> tuple[int, ...]:
    """The sorted unit indices of group ``gid``; each an int (not bool, float or str), once."""
    if isinstance(units, (str, bytes)) or not hasattr(units, "__iter__"):
        raise InvalidPlanError(f"plan removed[{gid!r}] = {units!r} must be a list of unit "
                               "indices, e.g. [0, 3, 7]")
    units = list(units.tolist() if hasattr(units, "tolist") else units)
    if not all(type(u) is int for u in units):  # the common case (plain ints) checks nothing more
        bad = [u for u in units if not _is_int(u)]
        if bad:
            raise InvalidPlanError(f"plan removed[{gid!r}] holds {bad[0]!r} "
                                   f"({type(bad[0]).__name__}): unit indices must be integers")
        units = [int(u) for u in units]
    if len(set(units)) != len(units):
        dup = sorted(u for u, n in Counter(units).items() if n > 1)
        raise InvalidPlanError(f"plan removed[{gid!r}] lists unit {dup[0]} more than once "
                               f"(duplicates: {dup[:8]}); list each removed unit once")
    neg = [u for u in units if u < 0]
    if neg:
        raise InvalidPlanError(f"plan removed[{gid!r}] holds the negative index {neg[0]}")
    return tuple(sorted(units))


def _size(gid: str, size: Any) -> int:
    if not _is_int(size) or size < 1:
        raise InvalidPlanError(f"plan group_sizes[{gid!r}] = {size!r} must be a positive integer")
    return int(size)


def _names(names: Any, field_name: str) -> tuple[str, ...]:
    if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
        raise InvalidPlanError(f"plan {field_name} = {names!r} must be a list of strings, "
                               f"e.g. [{names!r}]")
    names = tuple(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise InvalidPlanError(f"plan {field_name} holds {bad[0]!r}, not a string")
    return names
