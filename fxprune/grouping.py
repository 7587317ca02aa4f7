"""From linked elements to pruning groups: two rounds of connected components.

1. Dims joined by whole-dim identities collapse into *classes*. All dims of a
   class have the same size and the same channels, so a class needs one row of
   elements instead of one per dim (this is most of the graph: elementwise
   ops, norms, producer rows).
2. The other links (concat/split runs, index arrays), mapped onto class rows,
   join elements into *units*. A unit touching a frozen dim, or owning no
   parameter entry, cannot be removed.

Dims joined by any link form the *groups*. Unit ids follow the first element
(lowest dim id, then index) they contain, so the numbering is deterministic.
Everything is vectorised with numpy and scipy; Python loops run once per
group and once per class of a group.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .channel_graph import FrozenGroup, Group, Member, _readonly
from .elements import ElementSpace, Freeze

__all__ = ["find_groups", "expand_runs"]


def expand_runs(starts, lengths) -> np.ndarray:
    """The ids ``starts[k] + j`` for every run k and j < lengths[k], concatenated."""
    n = np.asarray(lengths, np.int64)
    if n.size == 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum(n)
    return np.repeat(np.asarray(starts, np.int64) - (ends - n), n) + np.arange(int(ends[-1]))


def _components(n: int, a, b) -> np.ndarray:
    """Component label of each of ``n`` vertices, numbered in order of their lowest vertex."""
    if n == 0:
        return np.zeros(0, np.int64)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    graph = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n, n))
    ncomp, lab = connected_components(graph, directed=False)
    first = np.unique(lab, return_index=True)[1]  # every label occurs
    rank = np.empty(ncomp, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(ncomp)
    return rank[lab]


class _Units:
    """Element rows per dim class, their unit labels, and which units are dead."""

    def __init__(self, space: ElementSpace):
        size = np.asarray(space.dim_size, np.int64)
        self.cls = _components(size.size, space.same_a, space.same_b)
        ncls = int(self.cls.max()) + 1 if size.size else 0
        self.csize = np.zeros(ncls, np.int64)
        self.csize[self.cls] = size
        self.cbase = np.concatenate(([0], np.cumsum(self.csize)))
        row = self.cbase[self.cls]  # first element of each dim's class row
        a, b = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        if space.runs:
            r = np.asarray(space.runs, np.int64)
            a.append(expand_runs(row[r[:, 0]] + r[:, 1], r[:, 4]))
            b.append(expand_runs(row[r[:, 2]] + r[:, 3], r[:, 4]))
        for da, ia, db, ib in space.arrays:
            a.append(row[da] + ia)
            b.append(row[db] + ib)
        self.lab = _components(int(self.cbase[-1]), np.concatenate(a), np.concatenate(b))
        nunits = int(self.lab.max()) + 1 if self.lab.size else 0
        frozen = np.zeros(nunits, bool)
        frozen[self.lab[self._rows(space.frozen_dims)]] = True
        param_dims = [d for ref in space.refs.values() if ref.key[0] == "p" for d in ref.dims]
        owns_param = np.zeros(nunits, bool)
        owns_param[self.lab[self._rows(param_dims)]] = True
        self.dead = frozen | ~owns_param

    def _rows(self, dims) -> np.ndarray:
        c = np.unique(self.cls[np.asarray(dims, np.int64)])
        return expand_runs(self.cbase[c], self.csize[c])

    def group(self, gid: str, dims: np.ndarray, space: ElementSpace,
              reasons: tuple[Freeze, ...]) -> Group | None:
        """The live units of one group of dims, or None if every unit is dead."""
        classes = np.unique(self.cls[dims])
        labels = self.lab[expand_runs(self.cbase[classes], self.csize[classes])]
        live = ~self.dead[labels]
        units = np.unique(labels[live])
        if units.size == 0:
            return None
        per_class = {}
        start = 0
        for c, n in zip(classes.tolist(), self.csize[classes].tolist()):
            keep = live[start:start + n]
            idx = np.flatnonzero(keep)
            if idx.size:
                unit = np.searchsorted(units, labels[start:start + n][keep])
                per_class[c] = (_readonly(idx), _readonly(unit))
            start += n
        members = []
        for d in dims.tolist():
            found = per_class.get(int(self.cls[d]))
            if found is not None:
                key, axis = space.dim_key[d]
                members.append(Member(key, axis, space.dim_size[d], *found))
        mixing = any(d in space.mixing for d in dims.tolist())
        return Group(gid, int(units.size), tuple(members), mixing, reasons)


def find_groups(space: ElementSpace, ignored: set[str]) -> tuple[list[Group], list[FrozenGroup]]:
    """The prunable groups and the frozen ones (with their reasons), in dim order."""
    units = _Units(space)
    ndims = len(space.dim_size)
    grp = _components(ndims, space.edge_a, space.edge_b)
    is_param = np.fromiter((k[0] == "p" for k, _ in space.dim_key), bool, ndims)
    has_param = np.zeros(int(grp.max()) + 1 if ndims else 0, bool)
    has_param[grp[is_param]] = True
    order = np.argsort(grp, kind="stable")  # dims of a group, ascending; groups by first dim
    bounds = np.cumsum(np.bincount(grp))
    freezes_by_dim: dict[int, list[Freeze]] = {}
    dim_id = {kd: i for i, kd in enumerate(space.dim_key)}
    for f in space.freezes:
        freezes_by_dim.setdefault(dim_id[(f.key, f.dim)], []).append(f)
    groups, frozen_groups = [], []
    for g in np.flatnonzero(has_param).tolist():
        dims = order[bounds[g - 1] if g else 0:bounds[g]]
        dim_list = dims.tolist()
        reasons = tuple(f for d in dim_list for f in freezes_by_dim.get(d, ()))
        if reasons and all(f.kind == "structural" for f in reasons):
            continue  # kernel taps, spatial dims: never channels
        pdims = [space.dim_key[d] for d in dim_list if is_param[d]]
        gid = f"{pdims[0][0][2:]}:{pdims[0][1]}"
        names = [f"{space.dim_key[d][0][2:]}:{space.dim_key[d][1]}" for d in dim_list]
        hit = sorted({k[2:] for k, _ in pdims} & ignored)
        if hit:
            reasons = (Freeze(pdims[0][0], pdims[0][1], f"ignored by the user ({hit[0]})",
                              hit[0], "ignored"),) + reasons
            frozen_groups.append(FrozenGroup(gid, tuple(names), reasons))
            continue
        group = units.group(gid, dims, space, reasons)
        if group is None:
            frozen_groups.append(FrozenGroup(gid, tuple(names), reasons))
        else:
            groups.append(group)
    return groups, frozen_groups
