"""The timed layers of a model: which conv/linear/attention layers exist, their shapes,
and which pruning group sets each of their widths.

    sites = layer_sites(cg)                   # from a ChannelGraph, either frontend
    sites[0].spec, [(a.name, a.group) for a in sites[0].axes]
    widths = axis_widths(axis, rank)          # the layer's width when a group keeps k units

A site's *axes* are the widths pruning can change (conv in/out channels, a depthwise
conv's channels, attention heads); each is tied to the member (a parameter dim) of
the group that owns it. Grouped (non-depthwise) convolutions and layers whose shapes
are not known are not timed; their cost stays in the "rest of the model" that the
whole-model measurement accounts for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .channel_graph import ChannelGraph, Member
from .latency_table import LayerSpec
from .nn import PrunedMultiheadAttention

__all__ = ["Axis", "Site", "layer_sites", "axis_widths"]


@dataclass
class Axis:
    """One prunable width of a layer: ``group``'s ``member`` sets it, ``scale`` entries
    of that dim make one unit of the width (3 x head_dim for attention heads)."""

    name: str
    group: str
    member: Member
    scale: int
    full: int


@dataclass
class Site:
    """One timed layer at its full widths."""

    name: str
    spec: LayerSpec
    axes: list[Axis] = field(default_factory=list)
    macs: int = 0


def _shape(n: object) -> tuple[int, ...] | None:
    if not isinstance(n, fx.Node):
        return None
    meta = n.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "shape"):
        return tuple(int(s) for s in meta.shape)
    val = n.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


def _members(cg: ChannelGraph) -> dict[tuple[str, int], tuple[str, Member]]:
    """(parameter name or alias, dim) -> (group id, member) for every prunable dim."""
    out = {}
    for g in cg.groups:
        for m in g.params():
            for n in cg.tensor_names.get(m.key, (m.name,)):
                out[(n, m.dim)] = (g.id, m)
    return out


def _axis(lookup, name: str, param: str, dim: int, full: int, scale: int = 1) -> list[Axis]:
    hit = lookup.get((param, dim))
    return [Axis(name, hit[0], hit[1], scale, full)] if hit else []


def _conv_site(lookup, name: str, m: nn.Module, x: tuple[int, ...], y: tuple[int, ...]):
    if isinstance(m.padding, str) or len(x) != 2 + len(m.kernel_size):
        return None
    attrs = (("kernel", tuple(m.kernel_size)), ("stride", tuple(m.stride)),
             ("padding", tuple(m.padding)), ("dilation", tuple(m.dilation)),
             ("bias", m.bias is not None), ("spatial", tuple(x[2:])))
    w = f"{name}.weight"
    macs = math.prod(y) * math.prod(m.weight.shape[1:])
    if m.groups == 1:
        spec = LayerSpec("conv", (("in", m.in_channels), ("out", m.out_channels)), attrs)
        axes = (_axis(lookup, "in", w, 1, m.in_channels)
                + _axis(lookup, "out", w, 0, m.out_channels))
        return Site(name, spec, axes, macs)
    if m.groups == m.in_channels == m.out_channels:
        spec = LayerSpec("depthwise", (("ch", m.in_channels),), attrs)
        return Site(name, spec, _axis(lookup, "ch", w, 0, m.in_channels), macs)
    return None


def _linear_site(lookup, name: str, m: nn.Linear, x: tuple[int, ...], y: tuple[int, ...]):
    spec = LayerSpec("linear", (("in", m.in_features), ("out", m.out_features)),
                     (("bias", m.bias is not None), ("lead", tuple(x[1:-1]))))
    w = f"{name}.weight"
    axes = _axis(lookup, "in", w, 1, m.in_features) + _axis(lookup, "out", w, 0, m.out_features)
    return Site(name, spec, axes, math.prod(y) * m.in_features)


def _mha_site(lookup, name: str, m: nn.Module, x: tuple[int, ...]):
    if isinstance(m, nn.MultiheadAttention):
        if not m._qkv_same_embed_dim:
            return None
        heads, head_dim, e_in = m.num_heads, m.head_dim, m.embed_dim
    else:
        heads, head_dim, e_in = m.num_heads, m.head_dim, m.embed_in
    e_out = m.out_proj.out_features
    tokens = x[1] if m.batch_first else x[0]
    spec = LayerSpec("mha", (("in", e_in), ("heads", heads), ("out", e_out)),
                     (("head_dim", head_dim), ("tokens", tokens)))
    w = f"{name}.in_proj_weight"
    axes = (_axis(lookup, "in", w, 1, e_in) + _axis(lookup, "heads", w, 0, heads, 3 * head_dim)
            + _axis(lookup, "out", f"{name}.out_proj.weight", 0, e_out))
    macs = tokens * x[1 - int(m.batch_first)] * (4 * e_in * heads * head_dim
                                                 + 2 * tokens * heads * head_dim)
    return Site(name, spec, axes, macs)


_ATEN_CONVS = {torch.ops.aten.conv1d.default: nn.Conv1d, torch.ops.aten.conv2d.default: nn.Conv2d,
               torch.ops.aten.conv3d.default: nn.Conv3d}


def _aten_layer(gm: fx.GraphModule, n: fx.Node) -> tuple[str, nn.Module] | None:
    """(owner name, a stand-in module with the layer's settings) for an exported graph's
    ``aten.conv*d``/``aten.linear`` call on a parameter (export frontend: no module calls),
    so one set of site builders serves both frontends."""
    if n.op != "call_function" or len(n.args) < 2:
        return None
    w = n.args[1]
    if not (isinstance(w, fx.Node) and w.op == "get_attr" and w.target.endswith(".weight")):
        return None
    weight = gm.get_parameter(w.target)
    bias = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
    kind = _ATEN_CONVS.get(n.target)
    if kind is not None:
        settings = dict(zip(("stride", "padding", "dilation", "groups"), n.args[3:]), **n.kwargs)
        groups = int(settings.get("groups", 1))
        m = kind(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                 stride=settings.get("stride", 1), padding=settings.get("padding", 0),
                 dilation=settings.get("dilation", 1), groups=groups, bias=bias is not None,
                 device="meta")
    elif n.target is torch.ops.aten.linear.default:
        m = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    else:
        return None
    return w.target[: -len(".weight")], m


def layer_sites(cg: ChannelGraph) -> list[Site]:
    """Every timed layer of ``cg``'s graph (module calls of conv/linear/attention, or the
    exported graph's aten convolutions and linears)."""
    gm, lookup, sites = cg.gm, _members(cg), []
    for n in gm.graph.nodes:
        if n.op == "call_module":
            name, m = n.target, gm.get_submodule(n.target)
        elif (layer := _aten_layer(gm, n)) is not None:
            name, m = layer
        else:
            continue
        x, y = _shape(n.args[0]) if n.args else None, _shape(n)
        if x is None:
            continue
        site = None
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and y:
            site = _conv_site(lookup, name, m, x, y)
        elif isinstance(m, nn.Linear) and y:
            site = _linear_site(lookup, name, m, x, y)
        elif isinstance(m, (nn.MultiheadAttention, PrunedMultiheadAttention)) and len(x) == 3:
            site = _mha_site(lookup, name, m, x)
        if site is not None:
            sites.append(site)
    return sites


def axis_widths(axis: Axis, rank: np.ndarray) -> np.ndarray:
    """``w[k]``: the axis' width when its group keeps its ``k`` best units
    (``rank[u]`` = 0 for the best unit), k = 0..size."""
    m = axis.member
    per_rank = np.bincount(rank[m.unit], minlength=rank.size)
    entries = (m.length - m.index.size) + np.concatenate([[0], np.cumsum(per_rank)])
    return np.maximum(entries // axis.scale, 0)
