"""The element space the op rules write into.

Every dimension of every tensor in the graph (node outputs, parameters,
buffers) gets a contiguous range of integer *element* ids, one per index along
that dimension. Rules *link* elements that must be removed together and
*freeze* elements that must never be removed. Connected components of the link
graph are the pruning units; a unit touching a frozen element is frozen.

Links are stored as numpy index arrays, so a flatten that ties one channel to
49 features, or a head that owns 64 rows, costs one vectorised call.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TensorRef", "ElementSpace", "Freeze"]


@dataclass(frozen=True)
class TensorRef:
    """One tensor of the graph: ``key`` is ``n:<node>`` or ``p:<param>``/``b:<buffer>``."""

    key: str
    shape: tuple[int, ...]
    base: tuple[int, ...]  # first element id of each dim

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def norm(self, d: int) -> int:
        return d % self.ndim if self.ndim else 0

    def ids(self, d: int, idx: np.ndarray | None = None) -> np.ndarray:
        d = self.norm(d)
        local = np.arange(self.shape[d]) if idx is None else np.asarray(idx, dtype=np.int64)
        return self.base[d] + local


@dataclass(frozen=True)
class Freeze:
    """Why a range of elements may never be removed."""

    key: str
    dim: int
    reason: str
    node: str
    kind: str  # "boundary" | "barrier" | "rule" | "ignored" | "uncoupled"


@dataclass
class ElementSpace:
    """Mutable while rules run; the analysis turns it into an immutable ChannelGraph."""

    size: int = 0
    refs: dict[str, TensorRef] = field(default_factory=dict)
    link_a: list[np.ndarray] = field(default_factory=list)
    link_b: list[np.ndarray] = field(default_factory=list)
    dim_edges: list[tuple[tuple[str, int], tuple[str, int], str]] = field(default_factory=list)
    frozen_ids: list[np.ndarray] = field(default_factory=list)
    freezes: list[Freeze] = field(default_factory=list)
    touched: set[tuple[str, int]] = field(default_factory=set)
    mixing: set[tuple[str, int]] = field(default_factory=set)

    def tensor(self, key: str, shape: tuple[int, ...]) -> TensorRef:
        """Allocate (or return) the element ranges of one tensor."""
        if key in self.refs:
            return self.refs[key]
        base = tuple(self.size + int(s) for s in np.cumsum((0,) + tuple(shape))[:-1])
        self.size += int(sum(shape))
        ref = TensorRef(key, tuple(int(s) for s in shape), base)
        self.refs[key] = ref
        return ref

    def link(self, a: TensorRef, da: int, ia, b: TensorRef, db: int, ib, kind: str) -> None:
        """Elements ``a[da][ia[k]]`` and ``b[db][ib[k]]`` live or die together."""
        da, db = a.norm(da), b.norm(db)
        ea, eb = a.ids(da, ia), b.ids(db, ib)
        if ea.size == 0:
            return
        self.link_a.append(ea)
        self.link_b.append(eb)
        self.touched.update(((a.key, da), (b.key, db)))
        self.dim_edges.append(((a.key, da), (b.key, db), kind))

    def couple(self, a: TensorRef, da: int, b: TensorRef, db: int, node: str) -> None:
        """Identity: index i of ``a[da]`` is index i of ``b[db]``."""
        da, db = a.norm(da), b.norm(db)
        if a.shape[da] != b.shape[db]:
            reason = f"sizes {a.shape[da]} and {b.shape[db]} differ"
            self.freeze(a, da, reason, node, "rule")
            self.freeze(b, db, reason, node, "rule")
            return
        n = a.shape[da]
        self.link(a, da, np.arange(n), b, db, np.arange(n), "identity")

    def couple_all(self, a: TensorRef, b: TensorRef, node: str) -> None:
        """Identity on every dim of two same-rank tensors."""
        for d in range(min(a.ndim, b.ndim)):
            self.couple(a, d, b, d, node)

    def freeze(self, ref: TensorRef, d: int, reason: str, node: str, kind: str = "rule") -> None:
        if ref.ndim == 0:
            return
        d = ref.norm(d)
        self.frozen_ids.append(ref.ids(d))
        self.touched.add((ref.key, d))
        self.freezes.append(Freeze(ref.key, d, reason, node, kind))

    def freeze_all(self, ref: TensorRef, reason: str, node: str, kind: str = "rule") -> None:
        for d in range(ref.ndim):
            self.freeze(ref, d, reason, node, kind)

    def mark_mixing(self, ref: TensorRef, d: int) -> None:
        """The dim is normalised across channels (LayerNorm): dead units are not exactly inert."""
        self.mixing.add((ref.key, ref.norm(d)))
