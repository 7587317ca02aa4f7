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

    def __init__(self, space: ElementSpace, param_dims: np.ndarray):
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
        owns_param = np.zeros(nunits, bool)
        owns_param[self.lab[self._rows(param_dims)]] = True
        self.dead = frozen | ~owns_param

    def _rows(self, dims) -> np.ndarray:
        c = np.unique(self.cls[np.asarray(dims, np.int64)])
        return expand_runs(self.cbase[c], self.csize[c])

    def live(self, groups: list[np.ndarray]):
        """For each group of dims: its number of live units, and for each class of its
        dims the live indices and their unit numbers (numbered per group, in element order).

        Returns (sizes per group, {class: (index, unit)}); the arrays are read-only
        views into two shared arrays.
        """
        dims = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        group_of_dim = np.repeat(np.arange(len(groups)), [g.size for g in groups])
        classes, first = np.unique(self.cls[dims], return_index=True)  # a class lies in one group
        group_of_class = group_of_dim[first]
        sizes = self.csize[classes]
        starts = np.concatenate(([0], np.cumsum(sizes)))
        labels = self.lab[expand_runs(self.cbase[classes], sizes)]
        live = ~self.dead[labels]
        group_of_elem = np.repeat(group_of_class, sizes)
        units, at = np.unique(labels[live], return_index=True)  # a unit lies in one group
        group_of_unit = group_of_elem[live][at]
        counts = np.bincount(group_of_unit, minlength=len(groups))
        order = np.argsort(group_of_unit, kind="stable")  # by group, then element order
        rank = np.empty(units.size, np.int64)
        rank[order] = np.arange(units.size) - (np.cumsum(counts) - counts)[group_of_unit[order]]
        pos = np.flatnonzero(live)
        index = _readonly(pos - np.repeat(starts[:-1], sizes)[pos])
        unit = _readonly(rank[np.searchsorted(units, labels[pos])])
        cut = np.searchsorted(pos, starts).tolist()
        per_class = {c: (index[cut[k]:cut[k + 1]], unit[cut[k]:cut[k + 1]])
                     for k, c in enumerate(classes.tolist()) if cut[k + 1] > cut[k]}
        return counts.tolist(), per_class


def find_groups(space: ElementSpace, ignored: set[str]) -> tuple[list[Group], list[FrozenGroup]]:
    """The prunable groups and the frozen ones (with their reasons), in dim order."""
    ndims = len(space.dim_size)
    param_dims = np.asarray([d for ref in space.refs.values() if ref.key[0] == "p"
                             for d in ref.dims], np.int64)
    units = _Units(space, param_dims)
    grp = _components(ndims, space.edge_a, space.edge_b)
    is_param = np.zeros(ndims, bool)
    is_param[param_dims] = True
    has_param = np.zeros(int(grp.max()) + 1 if ndims else 0, bool)
    has_param[grp[param_dims]] = True
    order = np.argsort(grp, kind="stable")  # dims of a group, ascending; groups by first dim
    bounds = np.cumsum(np.bincount(grp)).tolist()
    freezes_by_dim: dict[int, list[Freeze]] = {}
    for d, f in zip(space.frozen_dims, space.freezes):
        freezes_by_dim.setdefault(d, []).append(f)
    keys = space.dim_key
    names = lambda dims: tuple(f"{keys[d][0][2:]}:{keys[d][1]}" for d in dims)  # noqa: E731
    candidates, out = [], []  # out: FrozenGroup, or the index of a candidate
    for g in np.flatnonzero(has_param).tolist():
        dims = order[bounds[g - 1] if g else 0:bounds[g]]
        dim_list = dims.tolist()
        reasons = tuple(f for d in dim_list for f in freezes_by_dim.get(d, ()))
        if reasons and all(f.kind == "structural" for f in reasons):
            continue  # kernel taps, spatial dims: never channels
        pkey, paxis = keys[next(d for d in dim_list if is_param[d])]
        gid = f"{pkey[2:]}:{paxis}"
        hit = sorted({keys[d][0][2:] for d in dim_list if is_param[d]} & ignored)
        if hit:
            reasons = (Freeze(pkey, paxis, f"ignored by the user ({hit[0]})", hit[0], "ignored"),
                       *reasons)
            out.append(FrozenGroup(gid, names(dim_list), reasons))
            continue
        out.append(len(candidates))
        candidates.append((gid, dims, dim_list, reasons))
    sizes, per_class = units.live([c[1] for c in candidates])
    groups, frozen_groups = [], []
    for item in out:
        if isinstance(item, FrozenGroup):
            frozen_groups.append(item)
            continue
        gid, _, dim_list, reasons = candidates[item]
        if not sizes[item]:
            frozen_groups.append(FrozenGroup(gid, names(dim_list), reasons))
            continue
        members = []
        for d in dim_list:
            found = per_class.get(int(units.cls[d]))
            if found is not None:
                key, axis = keys[d]
                members.append(Member(key, axis, space.dim_size[d], *found))
        mixing = any(d in space.mixing for d in dim_list)
        groups.append(Group(gid, sizes[item], tuple(members), mixing, reasons))
    return groups, frozen_groups
