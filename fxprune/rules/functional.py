"""Rules for the functional forms of layers: ``F.conv*d``, ``F.conv_transpose*d``,
``F.linear``, ``F.batch_norm``, ``F.instance_norm``, ``F.layer_norm``,
``F.group_norm``, ``F.embedding``.

The tracer meets them inside user modules that are not leaves (timm's
``BatchNormAct2d``, weight-standardised convs): their parameters are ``get_attr``
nodes, or tensors computed from them, passed as arguments. Each rule reads the
arguments by position or keyword (the functions' own signatures) and hands
them to the module rule in ``layers.py``, which links them like a module's
parameters. Shrink index-selects the parameters by name and rewrites the
constants these calls carry (``groups``, ``normalized_shape``, ``num_groups``).
"""
from __future__ import annotations

from . import layers as L
from .base import RuleContext

__all__ = ["conv", "conv_transpose", "linear", "batch_norm", "instance_norm", "layer_norm",
           "group_norm", "embedding"]


def conv(ctx: RuleContext) -> None:
    """F.conv{1,2,3}d(input, weight, bias, stride, padding, dilation, groups)."""
    L.conv(ctx, ctx.arg(1, "weight"), ctx.arg(2, "bias"), ctx.value(6, "groups", 1))


def conv_transpose(ctx: RuleContext) -> None:
    """F.conv_transpose{1,2,3}d(input, weight, bias, stride, padding, output_padding, groups, dilation)."""
    L.conv_transpose(ctx, ctx.arg(1, "weight"), ctx.arg(2, "bias"), ctx.value(6, "groups", 1))


def linear(ctx: RuleContext) -> None:
    """F.linear(input, weight, bias)."""
    L.linear(ctx, ctx.arg(1, "weight"), ctx.arg(2, "bias"))


def batch_norm(ctx: RuleContext) -> None:
    """F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps):
    batch statistics (training, or no running statistics) mix the non-channel dims."""
    stats = [ctx.arg(1, "running_mean"), ctx.arg(2, "running_var")]
    batch_stats = bool(ctx.value(5, "training", False)) or any(s is None for s in stats)
    L.batch_norm(ctx, tensors=stats + [ctx.arg(3, "weight"), ctx.arg(4, "bias")],
                 batch_stats=batch_stats)


def instance_norm(ctx: RuleContext) -> None:
    """F.instance_norm(input, running_mean, running_var, weight, bias, ...): per sample and
    channel, so channels stay independent whichever statistics it uses."""
    L.batch_norm(ctx, tensors=[ctx.arg(1, "running_mean"), ctx.arg(2, "running_var"),
                               ctx.arg(3, "weight"), ctx.arg(4, "bias")])


def layer_norm(ctx: RuleContext) -> None:
    """F.layer_norm(input, normalized_shape, weight, bias, eps)."""
    L.layer_norm(ctx, len(ctx.value(1, "normalized_shape")), ctx.arg(2, "weight"), ctx.arg(3, "bias"))


def group_norm(ctx: RuleContext) -> None:
    """F.group_norm(input, num_groups, weight, bias, eps)."""
    L.group_norm(ctx, ctx.value(1, "num_groups"), ctx.arg(2, "weight"), ctx.arg(3, "bias"))


def embedding(ctx: RuleContext) -> None:
    """F.embedding(input, weight, padding_idx, ...)."""
    L.embedding(ctx, ctx.arg(1, "weight"))


def rms_norm(ctx: RuleContext) -> None:
    """F.rms_norm(input, normalized_shape, weight, eps): as LayerNorm without a bias
    (prunable, marked mixing: a dead channel changes the mean square)."""
    L.layer_norm(ctx, len(ctx.value(1, "normalized_shape")), ctx.arg(2, "weight"))
