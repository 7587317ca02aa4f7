"""PruningPlan: plain data saying which units of which groups to remove.

Produced by any criterion pass, editable by hand, saved as JSON and replayed
on a fresh model of the same architecture. The graph signature it carries
lets a replay name the first node where another model differs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import PlanMismatchError

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
    def from_json(cls, s: str) -> "PruningPlan":
        d = json.loads(s)
        if d.get("format") != "fxprune.plan":
            raise PlanMismatchError("not an fxprune plan (missing format: fxprune.plan)")
        return cls(
            removed={k: tuple(int(i) for i in v) for k, v in d["removed"].items()},
            group_sizes={k: int(v) for k, v in d["group_sizes"].items()},
            signature=tuple(d.get("signature", ())), criterion=d.get("criterion", "manual"),
            settings=d.get("settings", {}), removed_blocks=tuple(d.get("removed_blocks", ())),
            version=int(d.get("version", 1)),
        )

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
