"""Rules for layers with parameters: producers/consumers (conv, linear,
embedding) and per-channel layers (norms, PReLU)."""
from __future__ import annotations

import numpy as np
import torch

from .base import RuleContext

__all__ = ["conv", "conv_transpose", "linear", "batch_norm", "mark_batch_statistics", "group_norm", "layer_norm", "prelu", "embedding"]


def _freeze_spatial(ctx: RuleContext, ref, first: int) -> None:
    if ref is not None:
        for k in range(first, ref.ndim):
            ctx.freeze(ref, k, "spatial dim", "structural")


def conv(ctx: RuleContext, weight=None, bias=None, groups: int | None = None) -> None:
    """y[:, o] = sum_c W[o, c] * x[:, c]; grouped convs keep their group count.

    Depthwise (one input channel per group): input channel c owns output block
    [c*m, (c+1)*m) and groups shrink with it. Other grouped convs: unit j is the
    j-th channel of every group (strided), so the group count stays valid.
    """
    x, y = ctx.arg(0, "input"), ctx.out()
    w = weight if weight is not None else ctx.param("weight")
    b = bias if bias is not None else ctx.param("bias")
    g = groups if groups is not None else ctx.module.groups
    if x is None or y is None or w is None:
        return
    cin, cout = x.shape[1], y.shape[1]
    ctx.couple(x, 0, y, 0)
    _freeze_spatial(ctx, x, 2)
    _freeze_spatial(ctx, y, 2)
    for k in range(2, w.ndim):
        ctx.freeze(w, k, "kernel dim", "structural")
    if b is not None:
        ctx.couple(b, 0, y, 1)
    ctx.couple(w, 0, y, 1)
    if g == 1:
        ctx.couple(w, 1, x, 1)
        return
    if w.shape[1] == 1:  # depthwise: channel c feeds outputs [c*m, (c+1)*m)
        ctx.freeze(w, 1, "per-group input dim of a depthwise conv", "structural")
        m = cout // cin
        out_idx = np.arange(cout)
        ctx.link(x, 1, out_idx // m, y, 1, out_idx, "block")
        return
    per_in, per_out = cin // g, cout // g
    cin_idx, cout_idx = np.arange(cin), np.arange(cout)
    ctx.link(x, 1, cin_idx, w, 1, cin_idx % per_in, "strided")
    # output channel j of every group is one unit
    ctx.link(y, 1, cout_idx, y, 1, cout_idx % per_out, "strided")


def conv_transpose(ctx: RuleContext, weight=None, bias=None, groups: int | None = None) -> None:
    """ConvTranspose: weight is [Cin, Cout/groups, k...]; grouped variants are frozen."""
    x, y = ctx.arg(0, "input"), ctx.out()
    w = weight if weight is not None else ctx.param("weight")
    b = bias if bias is not None else ctx.param("bias")
    g = groups if groups is not None else ctx.module.groups
    if x is None or y is None or w is None:
        return
    ctx.couple(x, 0, y, 0)
    _freeze_spatial(ctx, x, 2)
    _freeze_spatial(ctx, y, 2)
    for k in range(2, w.ndim):
        ctx.freeze(w, k, "kernel dim", "structural")
    ctx.couple(w, 0, x, 1)
    if g != 1:
        ctx.freeze(y, 1, "grouped ConvTranspose output", "barrier")
        ctx.freeze(x, 1, "grouped ConvTranspose input", "barrier")
        return
    ctx.couple(w, 1, y, 1)
    if b is not None:
        ctx.couple(b, 0, y, 1)


def linear(ctx: RuleContext, weight=None, bias=None) -> None:
    """y[..., o] = sum_i W[o, i] x[..., i]: leading dims pass through."""
    x, y = ctx.arg(0, "input"), ctx.out()
    w = weight if weight is not None else ctx.param("weight")
    b = bias if bias is not None else ctx.param("bias")
    if x is None or y is None or w is None:
        return
    for k in range(1, x.ndim):
        ctx.couple(x, -k - 1, y, -k - 1)
    ctx.couple(w, 1, x, -1)
    ctx.couple(w, 0, y, -1)
    if b is not None:
        ctx.couple(b, 0, y, -1)


def _per_channel(ctx: RuleContext, x, y, dim: int, names=("weight", "bias", "running_mean", "running_var"),
                 tensors=()) -> None:
    for k in range(x.ndim):
        ctx.couple(x, k, y, k)
    for name in names:
        ctx.couple(ctx.param(name), 0, y, dim)
    for t in tensors:
        ctx.couple(t, 0, y, dim)


def batch_norm(ctx: RuleContext, tensors=None, batch_stats: bool = False) -> None:
    """BatchNorm/InstanceNorm: every per-channel parameter and statistic follows channel dim 1.

    ``tensors``: the functional form's weight/bias/statistics (get_attr nodes). With
    ``batch_stats`` (F.batch_norm in training mode, or without running statistics)
    the other dims are normalised together: dead entries there are not inert (mixing)."""
    x, y = ctx.arg(0, "input"), ctx.out()
    if x is None or y is None:
        return
    if tensors is None:
        _per_channel(ctx, x, y, 1)
    else:
        _per_channel(ctx, x, y, 1, names=(), tensors=[t for t in tensors if t is not None])
    if batch_stats:
        mark_batch_statistics(ctx, y)


def mark_batch_statistics(ctx: RuleContext, y) -> None:
    """Batch statistics normalise every dim but the channel dim together: a dead entry
    there shifts the mean and variance, so those dims are marked mixing."""
    for d in range(y.ndim):
        if d != 1:
            ctx.space.mark_mixing(y, d)


def prelu(ctx: RuleContext) -> None:
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    names = ("weight",) if ctx.module.num_parameters > 1 else ()
    _per_channel(ctx, x, y, 1, names)


def group_norm(ctx: RuleContext, num_groups: int | None = None, weight=None, bias=None) -> None:
    """GroupNorm: statistics are per group, so a unit is one whole group of C/G channels."""
    x, y = ctx.arg(0, "input"), ctx.out()
    if x is None or y is None:
        return
    G = num_groups if num_groups is not None else ctx.module.num_groups
    w = weight if weight is not None else ctx.param("weight")
    b = bias if bias is not None else ctx.param("bias")
    for k in range(x.ndim):
        ctx.couple(x, k, y, k)
    ctx.couple(w, 0, y, 1)
    ctx.couple(b, 0, y, 1)
    C = y.shape[1]
    per = C // G
    idx = np.arange(C)
    ctx.link(y, 1, idx, y, 1, (idx // per) * per, "block")  # channels of one group live together


def layer_norm(ctx: RuleContext, normalized_ndim: int | None = None, weight=None, bias=None) -> None:
    """LayerNorm over the last k dims: prunable, but marked channel-mixing (inexact oracle)."""
    x, y = ctx.arg(0, "input"), ctx.out()
    if x is None or y is None:
        return
    k = normalized_ndim if normalized_ndim is not None else len(ctx.module.normalized_shape)
    w = weight if weight is not None else ctx.param("weight")
    b = bias if bias is not None else ctx.param("bias")
    for d in range(x.ndim):
        ctx.couple(x, d, y, d)
    for j in range(k):
        d = x.ndim - k + j
        ctx.couple(w, j, y, d)
        ctx.couple(b, j, y, d)
        ctx.space.mark_mixing(y, d)


def embedding(ctx: RuleContext, weight=None) -> None:
    """Embedding: the vocabulary is frozen; the embedding dim is a producer output."""
    idx, y = ctx.arg(0, "input"), ctx.out()
    w = weight if weight is not None else ctx.param("weight")
    if y is None or w is None:
        return
    ctx.freeze(w, 0, "vocabulary rows", "structural")
    if idx is not None:
        for k in range(idx.ndim):
            ctx.couple(idx, k, y, k)
    ctx.couple(w, 1, y, -1)


def is_depthwise(module: torch.nn.Module) -> bool:
    return getattr(module, "groups", 1) > 1 and module.weight.shape[1] == 1
