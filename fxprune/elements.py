"""The element space the op rules write into.

Every dimension of every tensor in the graph (node outputs, parameters,
buffers) is a *dim* with an integer id; index ``i`` along dim ``d`` is the
*element* ``(d, i)``. Rules *link* elements that must be removed together and
*freeze* dims that must never be pruned. Connected components of the element
links are the pruning units; a unit touching a frozen dim is frozen.

Links come in three shapes, cheapest first:

- *same*: two whole dims of equal size are the same channels (identity).
  Most links are of this kind: elementwise ops, norms, producer outputs.
- *runs*: ``a[sa + k]`` is ``b[sb + k]`` for k < n (concat and split offsets).
- *arrays*: any other index map (flatten blocks, head strides, shuffles).

The first two are stored as plain ints, so a rule pays no numpy call for
them; ``fxprune.grouping`` expands everything once, vectorised.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["TensorRef", "ElementSpace", "Freeze"]


class TensorRef:
    """One tensor of the graph: ``key`` is ``n:<node>`` or ``p:<param>``/``b:<buffer>``."""

    __slots__ = ("key", "shape", "dims", "ndim")

    def __init__(self, key: str, shape: tuple[int, ...], dims: tuple[int, ...]):
        self.key = key
        self.shape = shape
        self.dims = dims  # the dim id of each axis
        self.ndim = len(shape)

    def __repr__(self) -> str:
        return f"TensorRef({self.key!r}, shape={self.shape})"


@dataclass(frozen=True)
class Freeze:
    """Why a dim may never be pruned."""

    key: str
    dim: int
    reason: str
    node: str
    kind: str  # "boundary" | "barrier" | "rule" | "ignored" | "uncoupled" | "structural"


@dataclass
class ElementSpace:
    """Mutable while rules run; ``fxprune.grouping`` turns it into groups."""

    refs: dict[str, TensorRef] = field(default_factory=dict)
    dim_key: list[tuple[str, int]] = field(default_factory=list)  # dim id -> (tensor key, axis)
    dim_size: list[int] = field(default_factory=list)
    same_a: list[int] = field(default_factory=list)  # whole-dim identities (dim ids)
    same_b: list[int] = field(default_factory=list)
    runs: list[tuple[int, int, int, int, int]] = field(default_factory=list)  # (da, sa, db, sb, n)
    arrays: list[tuple[int, np.ndarray, int, np.ndarray]] = field(default_factory=list)
    edge_a: list[int] = field(default_factory=list)  # every link at dim level, for the groups
    edge_b: list[int] = field(default_factory=list)
    edge_kind: list[str] = field(default_factory=list)
    frozen_dims: list[int] = field(default_factory=list)
    freezes: list[Freeze] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)
    mixing: set[int] = field(default_factory=set)

    def tensor(self, key: str, shape: tuple[int, ...]) -> TensorRef:
        """Allocate (or return) the dims of one tensor."""
        ref = self.refs.get(key)
        if ref is not None:
            return ref
        shape = tuple(shape)  # torch.Size or tuple of ints
        first = len(self.dim_size)
        self.dim_size.extend(shape)
        self.dim_key.extend([(key, d) for d in range(len(shape))])
        ref = self.refs[key] = TensorRef(key, shape, tuple(range(first, first + len(shape))))
        return ref

    def dim(self, ref: TensorRef, d: int) -> int:
        """The dim id of axis ``d`` of ``ref`` (negative axes allowed)."""
        return ref.dims[d % ref.ndim]

    def link(self, a: TensorRef, da: int, ia, b: TensorRef, db: int, ib, kind: str) -> None:
        """Elements ``a[da][ia[k]]`` and ``b[db][ib[k]]`` live or die together."""
        ia = np.asarray(ia, dtype=np.int64)
        if ia.size == 0:
            return
        ida, idb = self.dim(a, da), self.dim(b, db)
        self.arrays.append((ida, ia, idb, np.asarray(ib, dtype=np.int64)))
        self._edge(ida, idb, kind)

    def shift(self, a: TensorRef, da: int, start_a: int, b: TensorRef, db: int, start_b: int,
              n: int, kind: str = "offset") -> None:
        """A run: ``a[da][start_a + k]`` is ``b[db][start_b + k]`` for k < n."""
        if n <= 0:
            return
        ida, idb = self.dim(a, da), self.dim(b, db)
        size = self.dim_size
        if start_a == 0 and start_b == 0 and n == size[ida] == size[idb]:
            self.same_a.append(ida)
            self.same_b.append(idb)
        else:
            self.runs.append((ida, start_a, idb, start_b, n))
        self._edge(ida, idb, kind)

    def _edge(self, ida: int, idb: int, kind: str) -> None:
        self.touched.add(ida)
        self.touched.add(idb)
        self.edge_a.append(ida)
        self.edge_b.append(idb)
        self.edge_kind.append(kind)

    def couple(self, a: TensorRef, da: int, b: TensorRef, db: int, node: str) -> None:
        """Identity: index i of ``a[da]`` is index i of ``b[db]`` (the most common link)."""
        ida, idb = a.dims[da % a.ndim], b.dims[db % b.ndim]
        na, nb = self.dim_size[ida], self.dim_size[idb]
        if na != nb:
            reason = f"sizes {na} and {nb} differ"
            self.freeze(a, da, reason, node, "rule")
            self.freeze(b, db, reason, node, "rule")
            return
        if na:
            self.same_a.append(ida)
            self.same_b.append(idb)
            self._edge(ida, idb, "identity")

    def couple_all(self, a: TensorRef, b: TensorRef, node: str) -> None:
        """Identity on every dim of two same-rank tensors."""
        for d in range(min(a.ndim, b.ndim)):
            self.couple(a, d, b, d, node)

    def freeze(self, ref: TensorRef, d: int, reason: str, node: str, kind: str = "rule") -> None:
        if ref.ndim == 0:
            return
        d = d % ref.ndim
        self.frozen_dims.append(ref.dims[d])
        self.touched.add(ref.dims[d])
        self.freezes.append(Freeze(ref.key, d, reason, node, kind))

    def freeze_all(self, ref: TensorRef, reason: str, node: str, kind: str = "rule") -> None:
        for d in range(ref.ndim):
            self.freeze(ref, d, reason, node, kind)

    def mark_mixing(self, ref: TensorRef, d: int) -> None:
        """The dim is normalised across channels (LayerNorm): dead units are not exactly inert."""
        self.mixing.add(self.dim(ref, d))
