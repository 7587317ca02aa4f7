"""Output shapes of common ops without running them.

Many meta kernels in torch are Python reference decompositions: an add on
meta tensors costs ~0.5 ms, a LayerNorm ~1 ms, more than the real op on a
small tensor. The shape run of ``shapes.py`` asks these functions first; each
takes the op's (meta) arguments and returns an empty meta result of the right
shape and dtype, or None to fall back to the op itself. Only ops whose output
shape is a closed formula of the input shapes live here.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nn import PrunedMultiheadAttention

__all__ = ["fast_function", "fast_method", "fast_module"]

Fast = Callable[..., Any]


def _empty(shape, dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def _is_meta(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "meta"


def _same(x, *args, **kwargs):
    """Elementwise unary ops, activations, norms: the input's shape (and dtype unless given)."""
    if not _is_meta(x) or "out" in kwargs:
        return None
    return _empty(x.shape, kwargs.get("dtype") or x.dtype)


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            return None  # let the op itself raise its error
        out.append(y if x == 1 else x)
    return tuple(reversed(out))


def _binary(true_div: bool = False) -> Fast:
    def shape(a, b, *args, **kwargs):
        if "out" in kwargs or not (_is_meta(a) or _is_meta(b)) or any(isinstance(v, torch.Tensor) for v in args):
            return None
        if not all(_is_meta(v) or isinstance(v, (int, float, bool)) for v in (a, b)):
            return None
        sa = tuple(a.shape) if isinstance(a, torch.Tensor) else ()
        sb = tuple(b.shape) if isinstance(b, torch.Tensor) else ()
        out = _broadcast(sa, sb)
        if out is None:
            return None
        dtype = torch.result_type(a, b)
        if true_div and kwargs.get("rounding_mode") is None and not dtype.is_floating_point \
                and not dtype.is_complex:
            dtype = torch.get_default_dtype()
        return _empty(out, dtype)
    return shape


def _reduce(x, dim=None, keepdim=False, *, dtype=None, **kwargs):
    if not _is_meta(x):
        return None
    if dim is None or (isinstance(dim, (tuple, list)) and not dim):
        shape = (1,) * x.ndim if keepdim else ()
    else:
        dims = {d % x.ndim for d in ((dim,) if isinstance(dim, int) else dim)}
        shape = tuple(1 if i in dims else s for i, s in enumerate(x.shape)
                      if keepdim or i not in dims)
    if dtype is None:
        dtype = x.dtype if x.dtype.is_floating_point or x.dtype.is_complex else None
    return None if dtype is None else _empty(shape, dtype)


def _pool_size(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    span = n + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


def _tup(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _spatial(x, nsp: int, sizes: tuple[int, ...], channels: int | None = None):
    """Replace the last ``nsp`` dims of x by ``sizes`` (and the channel dim if given)."""
    if x.ndim not in (nsp + 1, nsp + 2) or any(s <= 0 for s in sizes):
        return None
    lead = list(x.shape[:-nsp])
    if channels is not None:
        lead[-1] = channels
    return _empty(lead + list(sizes), x.dtype)


def _conv(m: nn.Module, x, *rest):
    if rest or not _is_meta(x) or isinstance(m.padding, str) and m.padding != "valid":
        return None
    nsp = len(m.kernel_size)
    pad = (0,) * nsp if m.padding == "valid" else m.padding
    sizes = tuple(_pool_size(n, k, s, p, d, False) for n, k, s, p, d in
                  zip(x.shape[-nsp:], m.kernel_size, m.stride, pad, m.dilation))
    if x.ndim >= 2 and x.shape[-nsp - 1] != m.in_channels:
        return None
    return _spatial(x, nsp, sizes, m.out_channels)


def _pool(nsp: int) -> Fast:
    def shape(m: nn.Module, x, *rest):
        if rest or not _is_meta(x) or getattr(m, "return_indices", False):
            return None
        k, s = _tup(m.kernel_size, nsp), _tup(m.stride or m.kernel_size, nsp)
        p, d = _tup(m.padding, nsp), _tup(getattr(m, "dilation", 1), nsp)
        sizes = tuple(_pool_size(n, *a, m.ceil_mode) for n, *a in zip(x.shape[-nsp:], k, s, p, d))
        return _spatial(x, nsp, sizes)
    return shape


def _adaptive(nsp: int) -> Fast:
    def shape(x, output_size, *rest, **kwargs):
        if not _is_meta(x) or kwargs.get("return_indices") or rest:
            return None
        sizes = tuple(n if o is None else o for n, o in zip(x.shape[-nsp:], _tup(output_size, nsp)))
        return _spatial(x, nsp, sizes)
    return shape


def _cat(tensors, dim=0, *, out=None):
    """torch.cat: sizes add up along ``dim``; 1-d empty tensors are skipped (as torch does)."""
    if out is not None or not tensors or not all(_is_meta(t) for t in tensors):
        return None
    tensors = [t for t in tensors if t.numel() or t.ndim > 1]
    d = dim % tensors[0].ndim
    shape = list(tensors[0].shape)
    shape[d] = sum(t.shape[d] for t in tensors)
    return _empty(shape, tensors[0].dtype)


def _module_adaptive(nsp: int) -> Fast:
    fn = _adaptive(nsp)
    return lambda m, x, *rest: fn(x, m.output_size, *rest)


def _linear(m: nn.Linear, x, *rest):
    if rest or not _is_meta(x) or x.ndim == 0 or x.shape[-1] != m.in_features:
        return None
    return _empty(tuple(x.shape[:-1]) + (m.out_features,), x.dtype)


_MHA_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
             "average_attn_weights", "is_causal")


def _mha(m: nn.Module, *args, **kwargs):
    """(output, weights or None): output is the query's shape with E = embed_dim (for
    nn.MultiheadAttention; embed_in -> embed_out for fxprune's PrunedMultiheadAttention)."""
    a = dict(zip(_MHA_ARGS, args)) | kwargs
    q, k = a.get("query"), a.get("key")
    e_in, e_out = getattr(m, "embed_in", None) or m.embed_dim, getattr(m, "embed_out", None) or m.embed_dim
    if not (_is_meta(q) and _is_meta(k)) or q.ndim not in (2, 3) or q.shape[-1] != e_in:
        return None
    out = _empty(tuple(q.shape[:-1]) + (e_out,), q.dtype)
    if not a.get("need_weights", True):
        return out, None
    batched = q.ndim == 3
    n = (q.shape[0] if m.batch_first else q.shape[1]) if batched else None
    L = q.shape[1 if m.batch_first else 0] if batched else q.shape[0]
    S = k.shape[1 if m.batch_first else 0] if batched else k.shape[0]
    shape = (L, S) if a.get("average_attn_weights", True) else (m.num_heads, L, S)
    return out, _empty(((n,) if batched else ()) + shape, q.dtype)


def _module_same(m: nn.Module, x, *rest, **kwargs):
    return None if rest or kwargs else _same(x)


_SAME_MODULES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.Mish, nn.ELU, nn.CELU, nn.SELU, nn.PReLU, nn.Softplus, nn.Hardtanh,
    nn.Softmax, nn.LogSoftmax, nn.Identity, nn.ChannelShuffle,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)

_MODULES: list[tuple[type, Fast]] = [
    (_SAME_MODULES, _module_same),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), _conv),
    (nn.Linear, _linear),
    ((nn.MultiheadAttention, PrunedMultiheadAttention), _mha),
    ((nn.MaxPool1d, nn.AvgPool1d), _pool(1)),
    ((nn.MaxPool2d, nn.AvgPool2d), _pool(2)),
    ((nn.MaxPool3d, nn.AvgPool3d), _pool(3)),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d), _module_adaptive(1)),
    ((nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), _module_adaptive(2)),
    ((nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d), _module_adaptive(3)),
]

_UNARY = (
    torch.relu, torch.sigmoid, torch.tanh, torch.exp, torch.neg, torch.abs, torch.sqrt, torch.rsqrt,
    torch.roll, torch.clamp, torch.softmax, torch.log_softmax,
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu,
    F.elu, F.mish, F.softmax, F.log_softmax, F.dropout, F.layer_norm, F.group_norm, F.batch_norm,
    F.normalize, F.hardtanh,
)
_BINARY = (operator.add, operator.sub, operator.mul, operator.iadd, operator.isub, operator.imul,
           torch.add, torch.sub, torch.mul)
_TRUE_DIV = (operator.truediv, operator.itruediv, torch.div, torch.true_divide)

_FUNCTIONS: dict[Any, Fast] = {
    **{f: _same for f in _UNARY},
    **{f: _binary() for f in _BINARY},
    **{f: _binary(true_div=True) for f in _TRUE_DIV},
    torch.mean: _reduce, torch.sum: _reduce, torch.amax: _reduce, torch.amin: _reduce,
    F.adaptive_avg_pool1d: _adaptive(1), F.adaptive_avg_pool2d: _adaptive(2),
    F.adaptive_avg_pool3d: _adaptive(3),
    torch.cat: _cat, torch.concat: _cat,
}

_METHODS: dict[str, Fast] = {
    **{name: _same for name in ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "exp", "neg", "abs",
                                "sqrt", "rsqrt", "clamp", "softmax", "log_softmax", "contiguous",
                                "clone", "roll", "detach")},
    **{name: _binary() for name in ("add", "add_", "sub", "sub_", "mul", "mul_")},
    **{name: _binary(true_div=True) for name in ("div", "div_")},
    "mean": _reduce, "sum": _reduce, "amax": _reduce, "amin": _reduce,
}


def _window_attention(x, qkv_weight, proj_weight, *args, **kwargs):
    """Swin's (shifted_)window_attention: [..., H, W, C] -> [..., H, W, proj rows]."""
    if not (_is_meta(x) and _is_meta(proj_weight)):
        return None
    return _empty(tuple(x.shape[:-1]) + (proj_weight.shape[0],), x.dtype)


def _relative_position_bias(table, index, window_size):
    """Swin's _get_relative_position_bias: [1, heads, N, N] with N the window area."""
    if not _is_meta(table) or table.ndim != 2:
        return None
    n = window_size[0] * window_size[1]
    return _empty((1, table.shape[1], n, n), table.dtype)


# fx-wrapped functions of other packages, by (module, name): no import of those packages
_NAMED: dict[tuple[str, str], Fast] = {
    ("torchvision.models.swin_transformer", "shifted_window_attention"): _window_attention,
    ("torchvision.models.swin_transformer", "_get_relative_position_bias"): _relative_position_bias,
    ("fxprune.nn_window", "window_attention"): _window_attention,
}


def fast_function(target: Any) -> Fast | None:
    try:
        fast = _FUNCTIONS.get(target)
    except TypeError:  # unhashable target
        return None
    if fast is None:
        fast = _NAMED.get((getattr(target, "__module__", None), getattr(target, "__name__", None)))
    return fast


def fast_method(name: str) -> Fast | None:
    return _METHODS.get(name)


_MODULE_TYPES: dict[type, Fast] = {
    t: fn for types, fn in _MODULES for t in (types if isinstance(types, tuple) else (types,))}


def fast_module(module: nn.Module) -> Fast | None:
    """A shape function ``f(module, *args)``, or None. Exact types only: a subclass may
    override ``forward``."""
    fn = _MODULE_TYPES.get(type(module))
    if fn is not None:
        return fn
    if type(module).__name__ == "StochasticDepth" and type(module).__module__.startswith("torchvision"):
        return _module_same
    return None

