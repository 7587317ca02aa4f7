"""``slimming``: Network Slimming (Liu et al., 2017) -- one global threshold on |gamma|.

Train with the BN L1 penalty (:mod:`.slimming_sparsity`), then

    fxprune.prune(model, x, criterion="slimming", percent=0.4)

The threshold ``t`` is :func:`~.slimming_sparsity.slimming_threshold` over the
``|gamma|`` of every BatchNorm channel that lies in a prunable group (each BN
entry counted once), as the paper's code does over all BNs. A unit's score is
the **max** of ``|gamma|`` over the BN entries it owns: a unit that several BNs
scale (a residual stream, where every block's last BN writes into the same
channels; a pre-activation net's BN after an add or concat) is removed only if
*every* one of them is below ``t``, i.e. only when the channel is small
everywhere it is produced. Units with ``score < t`` are removed; every group
keeps at least one unit (its largest). Groups without a BN are not pruned.

Without ``percent`` the scores go to the planner (``ratio``, ``global_ranking``,
``target_macs``) like any other criterion.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from fxprune.channel_graph import ChannelGraph, Group
from fxprune.criteria import CriterionOutput

from .slimming_sparsity import slimming_threshold

__all__ = ["bn_entries", "slimming_scores", "slimming_criterion"]


def bn_entries(cg: ChannelGraph, group: Group) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(BN weight name, entry indices, owning units) for every BN weight in ``group``."""
    out = []
    for m in group.params():
        mod_name, _, attr = m.name.rpartition(".")
        if attr == "weight" and m.dim == 0 and \
                isinstance(cg.gm.get_submodule(mod_name), _BatchNorm):
            out.append((m.name, np.asarray(m.index), np.asarray(m.unit)))
    return out


def _gamma(cg: ChannelGraph, name: str) -> np.ndarray:
    return cg.gm.get_parameter(name).detach().abs().double().cpu().numpy()


def slimming_scores(cg: ChannelGraph) -> dict[str, np.ndarray]:
    """Per group with a BN: each unit's max |gamma| over its BN entries."""
    scores = {}
    for g in cg.groups:
        entries = bn_entries(cg, g)
        if not entries:
            continue
        s = np.full(g.size, -np.inf)
        for name, index, unit in entries:
            np.maximum.at(s, unit, _gamma(cg, name)[index])
        scores[g.id] = np.where(np.isfinite(s), s, 0.0)  # a unit no BN scales: 0
    return scores


def _threshold(cg: ChannelGraph, percent: float) -> float:
    seen: dict[str, set[int]] = {}
    for g in cg.groups:
        for name, index, _ in bn_entries(cg, g):
            seen.setdefault(name, set()).update(index.tolist())
    values = [torch.from_numpy(_gamma(cg, n)[sorted(idx)]) for n, idx in seen.items()]
    return slimming_threshold(values, percent)


def slimming_criterion(cg: ChannelGraph, *, model: nn.Module | None = None, calibration=None,
                       percent: float | None = None, **_) -> CriterionOutput:
    """|gamma| scores; with ``percent``, the channels below the global threshold."""
    scores = slimming_scores(cg)
    if percent is None or not scores:
        return CriterionOutput(scores=scores)
    t = _threshold(cg, percent)
    removed = {}
    for gid, s in scores.items():
        below = np.flatnonzero(s < t)
        if below.size == s.size:  # keep the group's largest unit
            below = below[below != int(np.argmax(s))]
        if below.size:
            removed[gid] = below.tolist()
    return CriterionOutput(scores=scores, removed=removed)
