"""``l1-filter``: Li et al. 2017 ("Pruning Filters for Efficient ConvNets"), as
re-implemented in Liu et al. 2019 ("Rethinking the Value of Network Pruning").

A unit's score is the L1 norm of its *filter* in the group's first producer
conv (the weight rows ``W[c]`` of the first Conv/Linear, in forward order, whose
output channels are the group) -- not the whole group's mass as ``l1`` does.
Residual-stream groups (those that meet a residual ``add``) are left alone by
default, so in a ResNet only the first conv of each block is pruned, as in the
paper; ``prune_residual=True`` scores them too (by their first producer).

How much to prune:

* nothing given: scores only; ``fxprune.prune``'s ``ratio`` / ``global_ranking``
  / ``target_macs`` decide, over the eligible groups;
* ``layer_ratios={k: p}``: per conv layer (``k`` = 1-based forward index of the
  conv, stem = 1, as in the Rethinking code, or its qualified module name);
  ``int(C * (1 - p))`` filters are kept;
* ``skip=[k, ...]``: conv layers never pruned;
* ``preset="resnet56-a"``: a published configuration (:mod:`.presets`).
"""
from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from fxprune.channel_graph import ChannelGraph, Group
from fxprune.criteria import CriterionOutput
from fxprune.errors import FxPruneError
from fxprune.select import check_ratio, keep_count

__all__ = ["conv_layers", "producers", "is_residual", "filter_l1", "l1_filter_criterion"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ADD = {operator.add, operator.iadd, torch.add}


def _module_order(cg: ChannelGraph) -> dict[str, int]:
    order: dict[str, int] = {}
    for n in cg.gm.graph.nodes:
        if n.op == "call_module":
            order.setdefault(n.target, len(order))
    return order


def conv_layers(cg: ChannelGraph) -> list[tuple[str, int]]:
    """(module name, out_channels) of every conv, in forward (graph) order."""
    out = []
    for name in _module_order(cg):
        m = cg.gm.get_submodule(name)
        if isinstance(m, _CONV):
            out.append((name, m.out_channels))
    return out


def producers(cg: ChannelGraph, group: Group) -> list[str]:
    """Conv/Linear modules whose output channels (weight dim 0) are in ``group``,
    in forward order. Depthwise convs that only pass channels through count too,
    but always come after the producer that made the channels."""
    order = _module_order(cg)
    found = set()
    for m in group.params():
        mod_name, _, attr = m.name.rpartition(".")
        if attr != "weight" or m.dim != 0 or mod_name not in order:
            continue
        if isinstance(cg.gm.get_submodule(mod_name), (*_CONV, nn.Linear)):
            found.add(mod_name)
    return sorted(found, key=order.__getitem__)


def is_residual(cg: ChannelGraph, group: Group) -> bool:
    """True when the group's channels meet an add of two computed tensors."""
    nodes = {n.name: n for n in cg.gm.graph.nodes}
    for m in group.members:
        n = nodes.get(m.name) if m.kind == "node" else None
        if n is None:
            continue
        is_add = (n.op == "call_function" and n.target in _ADD) or \
            (n.op == "call_method" and n.target in ("add", "add_"))
        computed = [a for a in n.args if hasattr(a, "op") and a.op != "get_attr"]
        if is_add and len(computed) >= 2:
            return True
    return False


def filter_l1(cg: ChannelGraph, group: Group, producer: str) -> np.ndarray:
    """Per unit, Σ|W| of the filters (weight rows) of ``producer`` that the unit owns."""
    w = cg.gm.get_submodule(producer).weight.detach().float()
    per_row = w.abs().reshape(w.shape[0], -1).sum(1).double().cpu().numpy()
    scores = np.zeros(group.size)
    for m in group.params():
        if m.dim == 0 and producer + ".weight" in cg.tensor_names.get(m.key, (m.name,)):
            np.add.at(scores, m.unit, per_row[m.index])
    return scores


def _layer_name(key: int | str, convs: list[tuple[str, int]]) -> str:
    names = [n for n, _ in convs]
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if not 1 <= key <= len(names):
            raise FxPruneError(f"l1-filter: conv layer {key} does not exist; the model has "
                               f"{len(names)} convs, numbered 1..{len(names)} in forward order")
        return names[key - 1]
    if key not in names:
        raise FxPruneError(f"l1-filter: {key!r} is not a conv module of the model; "
                           f"conv layers are {names[:4]} ...")
    return str(key)


def _eligible(cg: ChannelGraph, prune_residual: bool) -> dict[str, tuple[Group, str]]:
    """{producer conv: (group, producer)} for every group l1-filter may prune."""
    out = {}
    for g in cg.groups:
        prods = producers(cg, g)
        if prods and (prune_residual or not is_residual(cg, g)):
            out[g.id] = (g, prods[0])
    return out


def _per_layer(cg, eligible, scores, layer_ratios, skipped, convs) -> dict[str, list[int]]:
    by_producer = {prod: g for g, prod in eligible.values()}
    removed = {}
    for key, ratio in layer_ratios.items():
        name = _layer_name(key, convs)
        if name in skipped:
            continue
        g = by_producer.get(name)
        if g is None:
            raise FxPruneError(
                f"l1-filter: conv {name!r} (layer {key}) does not start a prunable group: its "
                "filters are a residual stream, frozen, or not the group's first producer; "
                "drop it from layer_ratios (or pass prune_residual=True for residual streams)")
        n = g.size - keep_count(g.size, check_ratio(ratio, f"layer_ratios[{key!r}]"))
        if n > 0:
            removed[g.id] = sorted(np.argsort(scores[g.id], kind="stable")[:n].tolist())
    return removed


def l1_filter_criterion(cg: ChannelGraph, *, model: nn.Module | None = None, calibration=None,
                        preset: str | None = None, layer_ratios: Mapping | None = None,
                        skip: Iterable[int | str] = (), prune_residual: bool = False,
                        **_) -> CriterionOutput:
    """Filter-L1 scores; with ``layer_ratios`` or ``preset``, the selection too."""
    convs = conv_layers(cg)
    if preset is not None:
        from .presets import get_preset

        if layer_ratios is not None:
            raise FxPruneError("l1-filter: give preset= or layer_ratios=, not both")
        p = get_preset(preset)
        layer_ratios, skip = p.layer_ratios(convs), tuple(skip) + p.skip
    skipped = {_layer_name(k, convs) for k in skip}
    eligible = _eligible(cg, prune_residual)
    scores = {gid: filter_l1(cg, g, prod) for gid, (g, prod) in eligible.items()
              if prod not in skipped}
    if layer_ratios is None:
        return CriterionOutput(scores=scores)
    return CriterionOutput(scores=scores,
                           removed=_per_layer(cg, eligible, scores, layer_ratios, skipped, convs))
