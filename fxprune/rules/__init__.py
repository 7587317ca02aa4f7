"""The op rule table: how every known op couples channel dimensions.

Three small tables map module types, functions and method names to rules.
An op found in none of them is a *barrier*: the analysis freezes every
dimension it touches and records why. Never guess that an op passes channels
through.
"""
from __future__ import annotations

import functools
import operator
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import aten_attention as AA
from . import attention as A
from . import copies as C
from . import elementwise as E
from . import functional as FN
from . import layers as L
from . import shape as S
from . import slicing as SL
from .base import Rule, RuleContext

__all__ = ["MODULE_RULES", "FUNCTION_RULES", "METHOD_RULES", "NAMED_RULES", "rule_for", "RuleContext",
           "inherits_behaviour", "module_rule_class"]


def _p(fn: Callable, **kw) -> Rule:
    return functools.partial(fn, **kw)


def _activation_types() -> list[type]:
    special = {"MultiheadAttention", "PReLU", "Softmax", "Softmin", "LogSoftmax", "Softmax2d", "GLU"}
    out = []
    for name in nn.modules.activation.__all__:
        cls = getattr(nn, name, None)
        if isinstance(cls, type) and name not in special:
            out.append(cls)
    return out


MODULE_RULES: dict[type, Rule] = {
    # producers / consumers
    nn.Conv1d: L.conv, nn.Conv2d: L.conv, nn.Conv3d: L.conv,
    nn.ConvTranspose1d: L.conv_transpose, nn.ConvTranspose2d: L.conv_transpose,
    nn.ConvTranspose3d: L.conv_transpose,
    nn.Linear: L.linear, nn.Embedding: L.embedding,
    # per-channel layers
    nn.BatchNorm1d: L.batch_norm, nn.BatchNorm2d: L.batch_norm, nn.BatchNorm3d: L.batch_norm,
    nn.SyncBatchNorm: L.batch_norm, nn.InstanceNorm1d: L.batch_norm,
    nn.InstanceNorm2d: L.batch_norm, nn.InstanceNorm3d: L.batch_norm,
    nn.GroupNorm: L.group_norm, nn.LayerNorm: L.layer_norm, nn.PReLU: L.prelu,
    # activations and friends: elementwise
    **{t: E.elementwise for t in _activation_types()},
    nn.Identity: E.elementwise, nn.Dropout: E.elementwise, nn.Dropout1d: E.elementwise,
    nn.Dropout2d: E.elementwise, nn.Dropout3d: E.elementwise, nn.AlphaDropout: E.elementwise,
    nn.FeatureAlphaDropout: E.elementwise,
    nn.Softmax: lambda ctx: E.softmax_like(ctx, ctx.module.dim if ctx.module.dim is not None else 1),
    nn.Softmin: lambda ctx: E.softmax_like(ctx, ctx.module.dim if ctx.module.dim is not None else 1),
    nn.LogSoftmax: lambda ctx: E.softmax_like(ctx, ctx.module.dim if ctx.module.dim is not None else 1),
    nn.Softmax2d: _p(E.softmax_like, dim=-3),
    nn.GLU: E.glu,
    # pooling and resampling: channels kept, spatial frozen
    **{t: _p(E.channel_first_spatial, spatial=int(t.__name__[-2])) for t in (
        nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
        nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
        nn.LPPool1d, nn.LPPool2d, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d,
        nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
        nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ConstantPad1d, nn.ConstantPad2d,
        nn.ConstantPad3d, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)},
    nn.Upsample: E.channel_first_spatial,
    # shape
    nn.Flatten: S.reshape, nn.Unflatten: S.reshape,
    nn.PixelShuffle: S.pixel_shuffle, nn.PixelUnshuffle: S.pixel_unshuffle,
    nn.ChannelShuffle: S.channel_shuffle,
    nn.MultiheadAttention: A.multihead_attention,
}

_ELEMENTWISE_FUNCS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd,
    operator.imul, operator.isub, torch.add, torch.sub, torch.mul, torch.div, torch.neg,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.sqrt,
    torch.rsqrt, torch.clamp, torch.where, torch.maximum, torch.minimum, torch.erf,
    F.relu, F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh,
    F.leaky_relu, F.elu, F.selu, F.celu, F.softplus, F.hardtanh, F.dropout, F.dropout1d,
    F.dropout2d, F.dropout3d, F.alpha_dropout, F.logsigmoid, F.threshold,
]

def _inplace_twins(funcs) -> list[Callable]:
    """``torch.relu_``, ``F.elu_``, ...: the in-place twin of each function, where it exists."""
    out = []
    for f in funcs:
        home = {"torch.nn.functional": F}.get(getattr(f, "__module__", ""), torch)
        twin = getattr(home, f"{getattr(f, '__name__', '')}_", None)
        if callable(twin) and twin not in funcs:
            out.append(twin)
    return out


_ELEMENTWISE_FUNCS += [operator.itruediv, *_inplace_twins(_ELEMENTWISE_FUNCS)]

FUNCTION_RULES: dict[Callable, Rule] = {
    **{f: E.elementwise for f in _ELEMENTWISE_FUNCS},
    operator.getitem: SL.getitem,
    torch.flatten: S.reshape, torch.reshape: S.reshape, torch.squeeze: S.reshape,
    torch.unsqueeze: S.reshape,
    torch.permute: S.permute, torch.transpose: S.permute, torch.swapaxes: S.permute,
    torch.swapdims: S.permute,
    torch.cat: SL.cat, torch.concat: SL.cat, torch.stack: SL.stack,
    torch.split: SL.split, torch.chunk: SL.split, torch.tensor_split: SL.tensor_split,
    torch.unbind: SL.unbind,
    torch.roll: S.roll, F.pad: S.pad,
    torch.matmul: A.matmul, operator.matmul: A.matmul, torch.bmm: A.matmul,
    torch.einsum: A.einsum,
    # same arguments as the ATen op: one rule ties heads, GQA groups and per-head masks
    F.scaled_dot_product_attention: AA.sdpa,
    F.softmax: E.softmax_like, torch.softmax: E.softmax_like, F.log_softmax: E.softmax_like,
    torch.log_softmax: E.softmax_like,
    torch.mean: _p(E.reduction, inert_zero=False), torch.amax: _p(E.reduction, inert_zero=False),
    torch.sum: _p(E.reduction, inert_zero=True),
    torch.norm: _p(E.vector_norm, order_name="p"), torch.linalg.vector_norm: E.vector_norm,
    torch.var: _p(E.reduction, inert_zero=False), torch.std: _p(E.reduction, inert_zero=False),
    torch.tile: C.repeat, F.rms_norm: FN.rms_norm,
    F.normalize: E.normalize, torch.addcmul: E.elementwise, torch.addcdiv: E.elementwise,
    F.adaptive_avg_pool1d: E.channel_first_spatial, F.adaptive_avg_pool2d: E.channel_first_spatial,
    F.adaptive_avg_pool3d: E.channel_first_spatial, F.adaptive_max_pool2d: E.channel_first_spatial,
    F.avg_pool2d: E.channel_first_spatial, F.max_pool2d: E.channel_first_spatial,
    F.interpolate: E.channel_first_spatial, F.upsample: E.channel_first_spatial,
    F.grid_sample: E.channel_first_spatial,  # samples each channel at the grid's points
    # functional layers: parameters are get_attr nodes (or computed from them)
    F.conv1d: FN.conv, F.conv2d: FN.conv, F.conv3d: FN.conv,
    F.conv_transpose1d: FN.conv_transpose, F.conv_transpose2d: FN.conv_transpose,
    F.conv_transpose3d: FN.conv_transpose,
    F.linear: FN.linear, F.embedding: FN.embedding,
    F.batch_norm: FN.batch_norm, F.instance_norm: FN.instance_norm,
    F.layer_norm: FN.layer_norm, F.group_norm: FN.group_norm,
    F.pixel_shuffle: S.pixel_shuffle, F.pixel_unshuffle: S.pixel_unshuffle,
    torch.pixel_shuffle: S.pixel_shuffle, torch.pixel_unshuffle: S.pixel_unshuffle,
    torch.channel_shuffle: S.channel_shuffle, F.channel_shuffle: S.channel_shuffle,
    getattr: E.sink,
}

_ELEMENTWISE_METHODS = ("add", "sub", "mul", "div", "relu", "sigmoid", "tanh", "exp", "abs",
                        "neg", "sqrt", "rsqrt", "clamp", "masked_fill", "pow", "__add__",
                        "__mul__", "__sub__", "__truediv__")
# every in-place twin (``relu_``, ``add_``, ``clamp_``...) has the rule of its out-of-place
# form: it writes its result into self, whose shape it keeps
_ELEMENTWISE_INPLACE = tuple(f"{m}_" for m in _ELEMENTWISE_METHODS
                             if not m.startswith("__") and hasattr(torch.Tensor, f"{m}_"))

METHOD_RULES: dict[str, Rule] = {
    **{m: E.elementwise for m in _ELEMENTWISE_METHODS + _ELEMENTWISE_INPLACE},
    "type_as": S.self_only,
    **{m: S.identity for m in ("contiguous", "clone", "to", "float", "half", "double", "detach",
                               "requires_grad_", "cpu", "cuda")},
    **{m: S.reshape for m in ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze")},
    "permute": S.permute, "transpose": S.permute, "swapaxes": S.permute, "swapdims": S.permute,
    "chunk": _p(SL.split, dim_pos=2), "split": _p(SL.split, dim_pos=2), "unbind": SL.unbind,
    "tensor_split": SL.tensor_split, "copy_": SL.copy_into,
    "expand": S.expand, "expand_as": S.expand_as,
    "reshape_as": S.reshape_as, "view_as": S.reshape_as,
    "mean": _p(E.reduction, inert_zero=False), "amax": _p(E.reduction, inert_zero=False),
    "sum": _p(E.reduction, inert_zero=True), "norm": _p(E.vector_norm, order_name="p"),
    "var": _p(E.reduction, inert_zero=False), "std": _p(E.reduction, inert_zero=False),
    "repeat": C.repeat, "tile": C.repeat, "unfold": C.unfold,
    **{m: E.elementwise for m in ("addcmul", "addcdiv", "addcmul_", "addcdiv_")},
    "softmax": E.softmax_like, "log_softmax": E.softmax_like,
    "matmul": A.matmul, "bmm": A.matmul, "roll": S.roll,
    "size": E.sink, "dim": E.sink,
}


# Known third-party ops, looked up by (module, name) so torchvision is never imported here.
# torchvision wraps Swin's attention in torch.fx.wrap; shrink rewrites those calls to
# fxprune.nn_window.window_attention, whose head width is explicit.
NAMED_RULES: dict[tuple[str, str], Rule] = {
    ("torchvision.ops.stochastic_depth", "StochasticDepth"): E.elementwise,
    ("torchvision.models.swin_transformer", "shifted_window_attention"): A.window_attention,
    ("fxprune.nn_window", "window_attention"): A.window_attention,
    ("torchvision.models.swin_transformer", "_get_relative_position_bias"): A.relative_position_bias,
    ("torchvision.models.swin_transformer", "_patch_merging_pad"): A.patch_merging_pad,
}


def _named(obj) -> Rule | None:
    return NAMED_RULES.get((getattr(obj, "__module__", ""), getattr(obj, "__name__", "")))


# methods a subclass may redefine without changing what forward computes
_HARMLESS_OVERRIDES = {"__init__", "extra_repr", "reset_parameters", "__repr__", "__setstate__",
                       "_load_from_state_dict", "__init_subclass__", "__class_getitem__"}


@functools.lru_cache(maxsize=None)
def inherits_behaviour(cls: type, base: type) -> bool:
    """``cls`` computes what ``base`` computes: between them in the MRO no class redefines
    a method, property or other callable of ``base`` (``__init__`` and the like aside).
    torchvision's ``Conv3DSimple(nn.Conv3d)`` (a new ``__init__`` and a static helper) does."""
    for klass in cls.__mro__:
        if klass is base:
            return True
        for name, value in vars(klass).items():
            if name in _HARMLESS_OVERRIDES or not hasattr(base, name):
                continue
            if callable(value) or isinstance(value, (property, staticmethod, classmethod)):
                return False
    return False


def module_rule_class(module: nn.Module) -> type | None:
    """The rule-table class whose behaviour ``module`` has, if any (see inherits_behaviour)."""
    for cls in type(module).__mro__:
        if cls in MODULE_RULES:
            return cls if inherits_behaviour(type(module), cls) else None
    return None


def rule_for(op: str, target, module: nn.Module | None) -> Rule | None:
    """Look up the rule of a node; None means the op is a barrier."""
    if op == "call_module":
        for cls in type(module).__mro__:
            if cls in MODULE_RULES:
                # a subclass that overrides forward (or a method it calls) may do anything
                return MODULE_RULES[cls] if inherits_behaviour(type(module), cls) else None
        return _named(type(module))
    if op == "call_function":
        if isinstance(target, torch._ops.OpOverload):  # --- ATen ops (torch.export): rules/aten.py ---
            from .aten import aten_rule
            return aten_rule(target)
        return FUNCTION_RULES.get(target) or _named(target)
    if op == "call_method":
        return METHOD_RULES.get(target)
    return None
