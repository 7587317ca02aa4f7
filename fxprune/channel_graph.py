"""ChannelGraph: the immutable result of the channel-dependency analysis.

``groups`` are the prunable groups: sets of coupled tensor dims whose units
(connected components of the element link graph) must be removed together.
``frozen`` lists groups that cannot be pruned and why. ``graph`` is the
networkx graph of tensor dims whose connected components are the groups; it
and the architecture ``signature`` are built on first use (the groups
themselves are computed with scipy from the same edges, see grouping.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Iterator, Mapping

import networkx as nx
import numpy as np
import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata

from .elements import ElementSpace, Freeze
from .trace import Traced

__all__ = ["ChannelGraph", "Group", "Member", "FrozenGroup", "graph_signature"]


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    a.setflags(write=False)
    return a


def graph_signature(gm: torch.nn.Module, graph: fx.Graph | None = None) -> tuple[str, ...]:
    """One line per node of ``graph`` (default ``gm.graph``), whose targets name submodules
    of ``gm``: enough to tell two architectures apart."""
    lines = []
    for n in (gm.graph if graph is None else graph).nodes:
        meta = n.meta.get("tensor_meta")
        shape = list(meta.shape) if isinstance(meta, TensorMetadata) else ""
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        extra = ""
        if n.op == "call_module":
            m = gm.get_submodule(n.target)
            extra = f"{type(m).__name__}({m.extra_repr()})"
        lines.append(f"{n.name}|{n.op}|{target}|{extra}|{shape}")
    return tuple(lines)


@dataclass(frozen=True)
class Member:
    """One tensor dim of a group; ``index[k]`` belongs to unit ``unit[k]``."""

    key: str  # "n:<node>" | "p:<param>" | "b:<buffer>"
    dim: int
    length: int
    index: np.ndarray
    unit: np.ndarray

    @property
    def kind(self) -> str:
        return {"n": "node", "p": "param", "b": "buffer"}[self.key[0]]

    @property
    def name(self) -> str:
        return self.key[2:]


@dataclass(frozen=True)
class Group:
    """A set of coupled dims; unit ``i`` owns the entries ``slices(i)``."""

    id: str
    size: int
    members: tuple[Member, ...]
    mixing: bool = False
    frozen_reasons: tuple[Freeze, ...] = ()

    def _select(self, i: int, kinds: tuple[str, ...]) -> list[tuple[str, int, list[int]]]:
        if not 0 <= i < self.size:
            raise IndexError(f"group {self.id} has {self.size} units, asked for unit {i}")
        out = []
        for m in self.members:
            if m.kind in kinds:
                idx = m.index[m.unit == i]
                if idx.size:
                    out.append((m.name, m.dim, idx.tolist()))
        return out

    def slices(self, i: int) -> list[tuple[str, int, list[int]]]:
        """[(qualified_param_name, dim, [indices])] owned by unit i."""
        return self._select(i, ("param",))

    def buffer_slices(self, i: int) -> list[tuple[str, int, list[int]]]:
        return self._select(i, ("buffer",))

    def node_slices(self, i: int) -> list[tuple[str, int, list[int]]]:
        return self._select(i, ("node",))

    def params(self) -> Iterator[Member]:
        return (m for m in self.members if m.kind == "param")

    def __repr__(self) -> str:
        return f"Group({self.id!r}, size={self.size}, members={len(self.members)})"


@dataclass(frozen=True)
class FrozenGroup:
    """Coupled dims that own parameters but cannot be pruned, with the reasons."""

    id: str
    members: tuple[str, ...]
    reasons: tuple[Freeze, ...]

    @property
    def barrier(self) -> bool:
        return any(r.kind == "barrier" for r in self.reasons)

    def describe(self) -> str:
        seen, parts = set(), []
        for r in self.reasons:
            if (r.node, r.reason) not in seen and r.kind != "uncoupled":
                seen.add((r.node, r.reason))
                parts.append(f"{r.node}: {r.reason}")
        return "; ".join(parts[:4]) + (" ..." if len(parts) > 4 else "")


@dataclass(frozen=True)
class ChannelGraph:
    """What can be pruned in a traced model, and how."""

    traced: Traced = field(repr=False)
    groups: tuple[Group, ...]
    frozen: tuple[FrozenGroup, ...]
    tensor_names: dict = field(repr=False, default_factory=dict)  # "p:x" -> all aliases of x
    space: ElementSpace = field(repr=False, compare=False, default_factory=ElementSpace)

    # --- frontend record (frontend_export.py) ---
    @property
    def frontend(self) -> str:
        """"fx" or "export": the frontend that made the graph."""
        return getattr(self.traced, "frontend", "fx")

    @property
    def frontend_reason(self) -> str:
        return getattr(self.traced, "frontend_reason", "")

    @cached_property
    def dim_sizes(self) -> dict[tuple[str, int], int]:
        """(tensor key, dim) -> length, for every dim of the graph."""
        return dict(zip(self.space.dim_key, self.space.dim_size))

    @cached_property
    def dim_edges(self) -> tuple[tuple[tuple[str, int], tuple[str, int], str], ...]:
        """((key, dim), (key, dim), kind) for every link a rule made."""
        keys = self.space.dim_key
        return tuple((keys[a], keys[b], k) for a, b, k in
                     zip(self.space.edge_a, self.space.edge_b, self.space.edge_kind))

    @cached_property
    def gm(self) -> fx.GraphModule:
        """The traced model as a GraphModule (with shapes); shared by every pass that reads it."""
        return self.traced.module()

    @cached_property
    def graph(self) -> nx.Graph:
        """Tensor dims (``(key, dim)``, with their ``size``) joined by the links of the rules."""
        g = nx.Graph()
        for kd, n in self.dim_sizes.items():
            g.add_node(kd, size=n)
        for u, v, kind in self.dim_edges:
            g.add_edge(u, v, kind=kind)
        return g

    @cached_property
    def signature(self) -> tuple[str, ...]:
        """One line per graph node: what a plan is checked against."""
        return graph_signature(self.traced.root, self.traced.graph)

    @cached_property
    def _root_tensors(self) -> dict[str, torch.Tensor]:
        root = self.traced.root
        return {**dict(root.named_parameters(remove_duplicate=False)),
                **dict(root.named_buffers(remove_duplicate=False))}

    def tensor(self, key: str) -> torch.Tensor:
        """The model's parameter or buffer for a tensor key ("p:name" / "b:name"), read
        from the traced model without building ``gm`` (shrink and the magnitude
        criteria need nothing else from it)."""
        name = self.tensor_names[key][0]
        found = self._root_tensors.get(name)
        if found is None:  # an attribute that is not registered (a plain tensor attribute)
            owner, _, attr = name.rpartition(".")
            found = getattr(self.traced.root.get_submodule(owner) if owner else self.traced.root, attr)
        return found

    def group(self, gid: str) -> Group:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(gid)

    def removed_masks(self, removal: Mapping[str, Iterable[int]]) -> dict[tuple[str, int], np.ndarray]:
        """Map {group id: removed units} to {(tensor key, dim): boolean mask of removed
        entries}: one lookup table per group, so no per-member sort or set operation."""
        out: dict[tuple[str, int], np.ndarray] = {}
        for g in self.groups:
            units = removal.get(g.id)
            if units is None or not len(units):
                continue
            dead = np.zeros(g.size, dtype=bool)
            dead[np.asarray(list(units), dtype=np.int64)] = True
            for m in g.members:
                sel = m.index[dead[m.unit]]
                if sel.size:
                    kd = (m.key, m.dim)
                    mask = out.get(kd)
                    if mask is None:
                        mask = out[kd] = np.zeros(self.dim_sizes[kd], dtype=bool)
                    mask[sel] = True
        return out

    def removed_indices(self, removal: Mapping[str, Iterable[int]]) -> dict[tuple[str, int], np.ndarray]:
        """Map {group id: removed units} to {(tensor key, dim): removed local indices}."""
        return {kd: np.flatnonzero(mask) for kd, mask in self.removed_masks(removal).items()}
