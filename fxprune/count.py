"""count(): multiply-accumulates of conv, linear and matmul, and parameters.

torchvision's convention (weights meta ``_ops``): only conv, linear and matrix
products count; normalisation, activations and pooling do not.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import TensorMetadata

from .nn import PrunedMultiheadAttention
from .trace import trace

__all__ = ["Counts", "count", "macs_of_graph"]


@dataclass(frozen=True)
class Counts:
    macs: int
    params: int

    def __str__(self) -> str:
        return f"{self.macs / 1e6:.2f} MMACs, {self.params / 1e6:.3f} M params"


def _shape(n: Any) -> tuple[int, ...]:
    meta = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
    if isinstance(meta, TensorMetadata):
        return tuple(meta.shape)
    if isinstance(meta, (tuple, list)) and meta and isinstance(meta[0], TensorMetadata):
        return tuple(meta[0].shape)
    return ()


def _conv_macs(out: tuple, weight_shape: tuple) -> int:
    # every output element sums over in_channels/groups × kernel taps
    return math.prod(out) * math.prod(weight_shape[1:])


def _module_macs(m: nn.Module, node: fx.Node) -> int:
    out = _shape(node)
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return _conv_macs(out, tuple(m.weight.shape))
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        x = _shape(node.args[0])
        return math.prod(x) * math.prod(m.weight.shape[1:])
    if isinstance(m, nn.Linear):
        return math.prod(out) * m.in_features
    if isinstance(m, (nn.MultiheadAttention, PrunedMultiheadAttention)):
        q = _shape(node.args[0])
        L, B = (q[1], q[0]) if m.batch_first else (q[0], q[1])
        k = _shape(node.args[1]) or q
        S = k[1] if m.batch_first else k[0]
        if isinstance(m, nn.MultiheadAttention):
            e_in = e_out = inner = m.embed_dim
        else:  # heads and widths pruned apart
            e_in, e_out, inner = m.embed_in, m.embed_out, m.num_heads * m.head_dim
        proj = B * (L + 2 * S) * e_in * inner + B * L * inner * e_out  # q, k, v; out_proj
        return proj + 2 * B * L * S * inner  # q·kᵀ and attn·v
    return 0


def _aten_macs(node: fx.Node) -> int:
    """ATen ops of torch.export graphs (same convention as the module rules)."""
    name = node.target.overloadpacket.__name__.rsplit(".", 1)[-1]
    out = _shape(node)
    if name in ("conv1d", "conv2d", "conv3d") or (name == "convolution" and not node.args[6]):
        return _conv_macs(out, _shape(node.args[1]))
    if name.startswith("conv_transpose") or name == "convolution":
        return math.prod(_shape(node.args[0])) * math.prod(_shape(node.args[1])[1:])
    if name == "linear":
        return math.prod(out) * _shape(node.args[1])[-1]
    if name in ("addmm", "baddbmm"):
        return math.prod(out) * _shape(node.args[1])[-1]
    if name in ("mm", "bmm", "matmul"):
        a = _shape(node.args[0])
        return math.prod(out) * (a[-1] if a else 1)
    if name == "scaled_dot_product_attention":  # q·kᵀ and attn·v
        q, k = _shape(node.args[0]), _shape(node.args[1])
        return math.prod(q[:-1]) * k[-2] * (q[-1] + out[-1])
    return 0


def _function_macs(node: fx.Node) -> int:
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return _aten_macs(node)
    name = node.target if node.op == "call_method" else getattr(t, "__name__", "")
    out = _shape(node)
    if t in (F.linear,) and len(node.args) > 1:
        return math.prod(out) * _shape(node.args[1])[-1]
    if t in (F.conv1d, F.conv2d, F.conv3d):
        return _conv_macs(out, _shape(node.args[1]))
    if name in ("shifted_window_attention", "window_attention"):
        return _window_attention_macs(node)
    if t in (torch.matmul, operator.matmul, torch.bmm) or name in ("matmul", "bmm"):
        a = _shape(node.args[0])
        return math.prod(out) * (a[-1] if a else 1)
    return 0


def _window_attention_macs(node: fx.Node) -> int:
    """Swin's fused window attention: qkv and proj linears plus q·kᵀ and attn·v per window."""
    B, H, W, c_in = _shape(node.args[0])
    window = node.args[4]
    window = [getattr(w, "meta", {}).get("fxprune.value", w) for w in window]
    rows = _shape(node.args[1])[0]
    c_out = _shape(node)[-1]
    tokens = B * math.ceil(H / window[0]) * window[0] * math.ceil(W / window[1]) * window[1]
    n = window[0] * window[1]
    inner = rows // 3
    return tokens * (c_in * rows + inner * c_out) + 2 * tokens * n * inner


def macs_of_graph(gm: fx.GraphModule) -> int:
    total = 0
    for node in gm.graph.nodes:
        if node.op == "call_module":
            total += _module_macs(gm.get_submodule(node.target), node)
        elif node.op in ("call_function", "call_method"):
            total += _function_macs(node)
    return int(total)


def count(module: nn.Module, example_inputs: Any) -> Counts:
    """MACs (conv + linear + matmul) for one forward on ``example_inputs``, and parameters."""
    gm = trace(module, example_inputs)
    params = sum(p.numel() for p in module.parameters())
    return Counts(macs_of_graph(gm), int(params))
