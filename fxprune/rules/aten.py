"""The ATen rule table: rules for the ops of graphs captured by torch.export.

``ATEN_RULES`` maps an ``OpOverload`` (or its ``OpOverloadPacket``, for every
overload at once) to a rule. The rules are the ones of the module-level tables
(layers.py, elementwise.py, shape.py, attention.py) with small adapters for
ATen's argument conventions: parameters arrive as ``get_attr`` node arguments,
and hyper-parameters (groups, dims, sizes) as literal arguments. Ops with
tuple outputs (``native_layer_norm``, ``max_pool2d_with_indices`` ...) run the
rule on their first output.

Covered: the training IR of ``torch.export.export`` (torch >= 2.7, and 2.5/2.6's
``export_for_training``) and core ATen after ``run_decompositions``. Anything
else stays a barrier.
"""
from __future__ import annotations

import functools

import torch

from . import attention as A
from . import copies as C
from . import elementwise as E
from . import functional as FN
from . import layers as L
from . import shape as S
from . import slicing as SL
from .base import Rule, RuleContext, norm_dim

__all__ = ["ATEN_RULES", "aten_rule"]

aten = torch.ops.aten


class _FirstOutput(RuleContext):
    """The context of a tuple-output op, seen as if its first output were the only one."""

    def __init__(self, ctx: RuleContext):  # noqa: D107  (a view, no new state)
        self.__dict__.update(ctx.__dict__)

    def out(self, k: int | None = None):
        refs = self._node_refs.get(self.node.name) or []
        k = 0 if k is None else k
        return refs[k] if k < len(refs) else None


def _first(rule: Rule, same_as_first: tuple[int, ...] = ()) -> Rule:
    """Run ``rule`` on output 0; outputs ``same_as_first`` (indices of max_pool) follow it."""

    def wrapped(ctx: RuleContext) -> None:
        view = _FirstOutput(ctx)
        rule(view)
        first = view.out()
        for k in same_as_first:
            other = ctx.out(k)
            if first is not None and other is not None:
                ctx.space.couple_all(first, other, ctx.node.name)

    return wrapped


# ---- producers / consumers ---------------------------------------------------------

def conv(ctx: RuleContext, groups_pos: int = 6) -> None:
    """aten.conv{1,2,3}d(x, w, b, stride, padding, dilation, groups)."""
    L.conv(ctx, ctx.arg(1, "weight"), ctx.arg(2, "bias"), ctx.value(groups_pos, "groups", 1))


def conv_transpose(ctx: RuleContext, groups_pos: int = 6) -> None:
    """conv_transpose(x, w[Cin, Cout/g, k..], b, stride, padding, output_padding, groups)."""
    x, y, w, b = ctx.arg(0), ctx.out(), ctx.arg(1, "weight"), ctx.arg(2, "bias")
    if x is None or y is None or w is None:
        return
    ctx.couple(x, 0, y, 0)
    for r in (x, y):
        for k in range(2, r.ndim):
            ctx.freeze(r, k, "spatial dim", "structural")
    for k in range(2, w.ndim):
        ctx.freeze(w, k, "kernel dim", "structural")
    ctx.couple(w, 0, x, 1)
    if ctx.value(groups_pos, "groups", 1) != 1:
        ctx.freeze(y, 1, "grouped ConvTranspose output", "barrier")
        ctx.freeze(x, 1, "grouped ConvTranspose input", "barrier")
        return
    ctx.couple(w, 1, y, 1)
    ctx.couple(b, 0, y, 1)


def convolution(ctx: RuleContext) -> None:
    """core aten.convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups)."""
    if ctx.value(6, "transposed", False):
        conv_transpose(ctx, groups_pos=8)
    else:
        conv(ctx, groups_pos=8)


def linear(ctx: RuleContext) -> None:
    L.linear(ctx, ctx.arg(1, "weight"), ctx.arg(2, "bias"))


def addmm(ctx: RuleContext) -> None:
    """addmm(bias, a, b) = bias + a @ b: the matmul rule on (a, b), bias broadcast to the output."""
    bias, a, b, y = ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.out()
    if a is None or b is None or y is None:
        return
    ctx.couple(a, -1, b, -2)
    ctx.couple(a, -2, y, -2)
    ctx.couple(b, -1, y, -1)
    if bias is not None:
        for j in range(1, bias.ndim + 1):
            if bias.shape[-j] == y.shape[-j]:
                ctx.couple(bias, -j, y, -j)


def t(ctx: RuleContext) -> None:
    """t(x): a 2-d transpose (1-d and 0-d tensors pass through)."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    n = x.ndim
    for k in range(n):
        ctx.couple(x, k, y, n - 1 - k if n == 2 else k)


def embedding(ctx: RuleContext) -> None:
    """aten.embedding(weight, indices, ...): the vocabulary is frozen, the width is a producer output."""
    w, idx, y = ctx.arg(0), ctx.arg(1), ctx.out()
    if w is None or y is None:
        return
    ctx.freeze(w, 0, "vocabulary rows", "structural")
    if idx is not None:
        for k in range(idx.ndim):
            ctx.couple(idx, k, y, k)
    ctx.couple(w, 1, y, -1)


# ---- normalisations --------------------------------------------------------------

def per_channel(ctx: RuleContext, tensors: tuple[int, ...] = (1, 2, 3, 4)) -> None:
    """batch_norm / instance_norm family: weight, bias and running stats follow channel dim 1."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    ctx.space.couple_all(x, y, ctx.node.name)
    for i in tensors:
        ctx.couple(ctx.arg(i), 0, y, 1)


def batch_norm(ctx: RuleContext) -> None:
    """batch_norm(x, weight, bias, running_mean, running_var, training, ...) and
    _native_batch_norm_legit (.no_stats: no running statistics): per channel; batch
    statistics (training, or none kept) also mix the non-channel dims, where dead entries
    shift the mean and variance (timm's weight-standardised convs normalise a weight's
    input-channel dim this way: prunable, marked mixing, as LayerNorm's)."""
    per_channel(ctx)
    no_stats = getattr(ctx.node.target, "_overloadname", "") == "no_stats"
    y = ctx.out()
    if y is not None and (no_stats or bool(ctx.value(5, "training", False))
                          or (len(ctx.node.args) > 3 and ctx.node.args[3] is None)):
        L.mark_batch_statistics(ctx, y)


def _bn_functional(ctx: RuleContext) -> None:
    """_native_batch_norm_legit_functional: (out, mean, rstd, new_running_mean, new_running_var)."""
    per_channel(_FirstOutput(ctx))
    y = ctx.out(0)
    for k in range(1, 5):
        ctx.couple(ctx.out(k), 0, y, 1)


def layer_norm(ctx: RuleContext) -> None:
    """layer_norm(x, normalized_shape, weight, bias, eps)."""
    L.layer_norm(ctx, len(ctx.value(1, "normalized_shape")), ctx.arg(2, "weight"), ctx.arg(3, "bias"))


def group_norm(ctx: RuleContext) -> None:
    """group_norm(x, num_groups, weight, bias, eps)."""
    L.group_norm(ctx, ctx.value(1, "num_groups"), ctx.arg(2, "weight"), ctx.arg(3, "bias"))


def native_group_norm(ctx: RuleContext) -> None:
    """native_group_norm(x, weight, bias, N, C, HxW, group, eps) -> (out, mean, rstd)."""
    L.group_norm(_FirstOutput(ctx), ctx.value(6, "group"), ctx.arg(1, "weight"), ctx.arg(2, "bias"))


# ---- shape ops -------------------------------------------------------------------

def transpose(ctx: RuleContext) -> None:
    """transpose(x, d0, d1)."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    perm = list(range(x.ndim))
    d0, d1 = norm_dim(ctx.value(1, "dim0"), x.ndim), norm_dim(ctx.value(2, "dim1"), x.ndim)
    perm[d0], perm[d1] = perm[d1], perm[d0]
    for o, i in enumerate(perm):
        ctx.couple(x, i, y, o)


def permute(ctx: RuleContext) -> None:
    """permute(x, dims)."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    for o, i in enumerate(ctx.value(1, "dims")):
        ctx.couple(x, norm_dim(i, x.ndim), y, o)


def slice_(ctx: RuleContext) -> None:
    """slice(x, dim, start, end, step): a step-1 slice is an offset (shrink moves its bounds)."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    d = norm_dim(ctx.value(1, "dim", 0), x.ndim)
    start, stop, step = slice(ctx.value(2, "start"), ctx.value(3, "end"),
                              ctx.value(4, "step", 1)).indices(x.shape[d])
    for k in range(x.ndim):
        if k != d:
            ctx.couple(x, k, y, k)
        elif step == 1:
            ctx.shift(x, k, start, y, k, 0, y.shape[k])
        else:
            ctx.freeze(x, k, "strided slice")
            ctx.freeze(y, k, "strided slice")


def select(ctx: RuleContext) -> None:
    """select(x, dim, index): the indexed dim is frozen, the others pass through."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    d = norm_dim(ctx.value(1, "dim"), x.ndim)
    ctx.freeze(x, d, "indexed by an integer")
    for k in range(x.ndim):
        if k != d:
            ctx.couple(x, k, y, k if k < d else k - 1)


def index(ctx: RuleContext) -> None:
    """index(x, [None, .., idx]): one index tensor gathers along its dim (frozen); the
    dims before and after it pass through. Several index tensors: frozen."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    indices = list(ctx.raw(1) or ())
    real = [p for p, i in enumerate(indices) if i is not None]
    idx = ctx.ref(indices[real[0]]) if len(real) == 1 else None
    if idx is None:
        ctx.freeze_all(x, "advanced indexing", "barrier")
        ctx.freeze_all(y, "advanced indexing", "barrier")
        return
    p = real[0]
    ctx.freeze(x, p, "gathered by an index tensor")
    for k in range(p):
        ctx.couple(x, k, y, k)
    for k in range(idx.ndim):
        ctx.freeze(y, p + k, "gathered rows")
    for k in range(p + 1, x.ndim):
        ctx.couple(x, k, y, k - 1 + idx.ndim)


def constant_pad_nd(ctx: RuleContext) -> None:
    """constant_pad_nd(x, pad, value): like F.pad in constant mode."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    widths = list(ctx.value(1, "pad", ()))
    padded = {x.ndim - 1 - j: (widths[2 * j], widths[2 * j + 1]) for j in range(len(widths) // 2)}
    for k in range(x.ndim):
        lo, hi = padded.get(k, (0, 0))
        if (lo, hi) == (0, 0):
            ctx.couple(x, k, y, k)
        elif lo >= 0 and hi >= 0:
            ctx.shift(x, k, 0, y, k, lo, x.shape[k])
        else:
            ctx.freeze(x, k, "negative padding (crop)")
            ctx.freeze(y, k, "negative padding (crop)")


def unsafe_split(ctx: RuleContext) -> None:
    SL.split(ctx, dim_pos=2)


def created(ctx: RuleContext) -> None:
    """A tensor created from size constants (zeros, full, arange): its dims are fixed."""
    for r in ctx.outs():
        ctx.freeze_all(r, f"{ctx.node.target} creates a tensor of fixed size")


def pooling(spatial: int) -> Rule:
    return functools.partial(E.channel_first_spatial, spatial=spatial)


def _op(name: str, overload: str = "default"):
    packet = getattr(aten, name, None)
    return getattr(packet, overload, None) if packet is not None else None


def _table(entries: dict) -> dict:
    """Drop the ops this torch does not have (keeps one table for torch 2.5 ... 2.14)."""
    out = {}
    for key, rule in entries.items():
        name, _, overload = key.partition(".")
        op = _op(name, overload) if overload else getattr(aten, name, None)
        if op is not None:
            out[op] = rule
    return out


_ELEMENTWISE = [
    "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh",
    "tanh_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_",
    "mish", "mish_", "elu", "elu_", "selu", "celu", "leaky_relu", "leaky_relu_", "softplus",
    "log_sigmoid", "erf", "exp", "log", "abs", "sqrt", "rsqrt", "neg", "reciprocal", "sin", "cos",
    "square", "sign", "floor", "ceil", "round", "trunc",
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "pow", "where", "clamp",
    "clamp_", "clamp_min", "clamp_max", "maximum", "minimum", "masked_fill", "masked_fill_",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_not", "logical_and", "logical_or",
    "bitwise_not", "bitwise_and", "bitwise_or", "type_as", "threshold",
    "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "dropout_",
    "feature_dropout_", "alpha_dropout_", "feature_alpha_dropout_", "lerp",
    "addcmul", "addcmul_", "addcdiv", "addcdiv_",
]

_IDENTITY = ["clone", "_to_copy", "to", "contiguous", "alias", "detach", "detach_",
             "lift_fresh_copy"]

_RESHAPE = ["view", "reshape", "_unsafe_view", "flatten", "unflatten", "unsqueeze", "squeeze",
            "unsqueeze_copy", "squeeze_copy", "view_copy"]

_FIXED_SIZE = ["zeros", "ones", "full", "empty", "arange", "scalar_tensor", "new_zeros",
               "new_ones", "new_full", "new_empty", "rand", "randn", "linspace"]

# shaped like their input: the channels follow it (a dead unit's consumer weights are dead too)
_LIKE = ["zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like"]

ATEN_RULES: dict = {
    # producers / consumers
    **_table({"conv1d": conv, "conv2d": conv, "conv3d": conv, "convolution.default": convolution,
              "conv_transpose1d": conv_transpose, "conv_transpose2d": conv_transpose,
              "conv_transpose3d": conv_transpose, "linear": linear, "addmm.default": addmm,
              "mm": A.matmul, "bmm": A.matmul, "matmul": A.matmul, "embedding": embedding,
              "t": t}),
    # normalisations
    **_table({"batch_norm": batch_norm, "instance_norm": per_channel,
              "_native_batch_norm_legit_no_training": _first(per_channel),
              "_native_batch_norm_legit": _first(batch_norm),
              "native_batch_norm": _first(per_channel),
              "_native_batch_norm_legit_functional": _bn_functional,
              "layer_norm": layer_norm, "native_layer_norm": _first(layer_norm),
              "rms_norm": FN.rms_norm, "_fused_rms_norm": _first(FN.rms_norm),
              "group_norm": group_norm, "native_group_norm": native_group_norm}),
    # elementwise
    **_table({n: E.elementwise for n in _ELEMENTWISE + _LIKE}),
    **_table({"native_dropout": _first(E.elementwise, same_as_first=(1,))}),
    # shape
    **_table({n: S.identity for n in _IDENTITY}),
    **_table({n: S.reshape for n in _RESHAPE}),
    **_table({"permute": permute, "transpose": transpose, "expand": S.expand,
              "repeat": C.repeat, "tile": C.repeat, "unfold": C.unfold,
              "expand_as": S.expand_as, "reshape_as": S.reshape_as, "view_as": S.reshape_as,
              "cat": SL.cat, "concat": SL.cat, "stack": SL.stack, "split": SL.split,
              "split_with_sizes": SL.split, "chunk": SL.split, "unsafe_split": unsafe_split,
              # all three overloads: .indices, .sections, .tensor_indices_or_sections
              "tensor_split": SL.tensor_split, "copy_": SL.copy_into, "copy": SL.copy_into,
              "unbind": SL.unbind, "slice": slice_, "select": select, "index": index,
              "constant_pad_nd": constant_pad_nd, "pad": S.pad, "roll": S.roll,
              "pixel_shuffle": S.pixel_shuffle, "pixel_unshuffle": S.pixel_unshuffle,
              "channel_shuffle": S.channel_shuffle}),
    # reductions, softmax
    **_table({"mean": functools.partial(E.reduction, inert_zero=False),
              "amax": functools.partial(E.reduction, inert_zero=False),
              "sum": functools.partial(E.reduction, inert_zero=True),
              "linalg_vector_norm": E.vector_norm,
              "var": functools.partial(E.reduction, inert_zero=False),
              "std": functools.partial(E.reduction, inert_zero=False),
              "norm": functools.partial(E.vector_norm, order_name="p"),
              "softmax": E.softmax_like, "_softmax": E.softmax_like,
              "log_softmax": E.softmax_like, "_log_softmax": E.softmax_like}),
    # pooling and resampling: channels kept, spatial frozen
    **_table({"adaptive_avg_pool1d": pooling(1), "adaptive_avg_pool2d": pooling(2),
              "_adaptive_avg_pool2d": pooling(2), "adaptive_avg_pool3d": pooling(3),
              "_adaptive_avg_pool3d": pooling(3),
              "adaptive_max_pool1d": _first(pooling(1), (1,)),
              "adaptive_max_pool2d": _first(pooling(2), (1,)),
              "max_pool1d": pooling(1), "max_pool2d": pooling(2), "max_pool3d": pooling(3),
              "max_pool2d_with_indices": _first(pooling(2), (1,)),
              "max_pool3d_with_indices": _first(pooling(3), (1,)),
              "avg_pool1d": pooling(1), "avg_pool2d": pooling(2), "avg_pool3d": pooling(3),
              "upsample_nearest1d": pooling(1), "upsample_nearest2d": pooling(2),
              "upsample_nearest3d": pooling(3), "upsample_bilinear2d": pooling(2),
              "upsample_bicubic2d": pooling(2), "upsample_linear1d": pooling(1),
              "upsample_trilinear3d": pooling(3), "_upsample_nearest_exact2d": pooling(2),
              "_upsample_bilinear2d_aa": pooling(2),
              "grid_sampler": pooling(2), "grid_sampler_2d": pooling(2),
              "grid_sampler_3d": pooling(3)}),
    # attention
    **_table({"scaled_dot_product_attention": A.sdpa,
              "einsum": A.einsum}),  # einsum(equation, [operands]): letters shared are one dim
    # shapes only, and tensors of fixed size
    **_table({"sym_size": E.sink, "sym_numel": E.sink, "sym_stride": E.sink, "size": E.sink}),
    **_table({n: created for n in _FIXED_SIZE}),
}


def aten_rule(target) -> Rule | None:
    """The rule of an ATen op (by overload, then by packet); None: a barrier."""
    rule = ATEN_RULES.get(target)
    if rule is None and isinstance(target, torch._ops.OpOverload):
        rule = ATEN_RULES.get(target.overloadpacket)
    return rule


# Attention rules for Hugging Face models (another file; absent until it lands).
try:
    from .aten_attention import RULES as _ATTN

    ATEN_RULES.update(_ATTN)
except ImportError:
    pass

