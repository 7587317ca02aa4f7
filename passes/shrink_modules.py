"""Module hyper-parameters after shrink: one small updater per module kind.

The tensors are already index-selected; an updater makes the module's
attributes (in/out channels, groups, num_features, normalized_shape, heads...)
agree with them, or swaps in a module that can express the pruned layer.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import TensorMetadata

from fxprune.channel_graph import ChannelGraph
from fxprune.nn import PrunedMultiheadAttention
from fxprune.rewrite import set_submodule, submodule

__all__ = ["update_modules", "MODULE_UPDATERS", "new_shape"]


def new_shape(node: fx.Node, keep: dict[tuple[str, int], np.ndarray],
              k: int | None = None) -> list[int] | None:
    """The shape of ``node``'s output (its k-th, for tuples) once the plan is applied."""
    meta = node.meta.get("tensor_meta")
    if k is not None:
        meta = meta[k] if isinstance(meta, (list, tuple)) and k < len(meta) else None
    if not isinstance(meta, TensorMetadata):
        return None
    key = f"n:{node.name}" if k is None else f"n:{node.name}.{k}"
    return [len(keep[(key, d)]) if (key, d) in keep else s for d, s in enumerate(meta.shape)]


class _Sizes:
    """New sizes of node dims, given the kept indices."""

    def __init__(self, keep: dict[tuple[str, int], np.ndarray]):
        self.keep = keep

    def shape(self, node: fx.Node, k: int | None = None) -> list[int] | None:
        return new_shape(node, self.keep, k)


def _conv(m, old, node, sizes):
    x = sizes.shape(node.args[0])
    if old.groups > 1 and old.weight.shape[1] == 1:  # depthwise: one group per input channel
        m.groups = x[1]
    m.in_channels = x[1]
    m.out_channels = m.weight.shape[0]


def _conv_t(m, old, node, sizes):
    m.in_channels = m.weight.shape[0]
    m.out_channels = m.weight.shape[1] * m.groups


def _linear(m, old, node, sizes):
    m.out_features, m.in_features = m.weight.shape


def _per_channel(m, old, node, sizes):
    m.num_features = sizes.shape(node)[1]


def _group_norm(m, old, node, sizes):
    c = sizes.shape(node)[1]
    m.num_groups = old.num_groups * c // old.num_channels
    m.num_channels = c


def _layer_norm(m, old, node, sizes):
    k = len(old.normalized_shape)
    m.normalized_shape = tuple(sizes.shape(node)[-k:])


def _prelu(m, old, node, sizes):
    m.num_parameters = m.weight.numel()


def _embedding(m, old, node, sizes):
    m.embedding_dim = m.weight.shape[1]


def _mha(m, old, node, sizes):
    head_dim = old.embed_dim // old.num_heads
    new = PrunedMultiheadAttention.from_pruned(
        old, m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias, head_dim)
    new.train(old.training)
    return new


MODULE_UPDATERS: dict[type, Callable] = {
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.ConvTranspose1d: _conv_t, nn.ConvTranspose2d: _conv_t, nn.ConvTranspose3d: _conv_t,
    nn.Linear: _linear,
    nn.BatchNorm1d: _per_channel, nn.BatchNorm2d: _per_channel, nn.BatchNorm3d: _per_channel,
    nn.SyncBatchNorm: _per_channel, nn.InstanceNorm1d: _per_channel,
    nn.InstanceNorm2d: _per_channel, nn.InstanceNorm3d: _per_channel,
    nn.GroupNorm: _group_norm, nn.LayerNorm: _layer_norm, nn.PReLU: _prelu,
    nn.Embedding: _embedding, nn.MultiheadAttention: _mha,
}


def update_modules(gm: fx.GraphModule, cg: ChannelGraph, keep) -> None:
    sizes = _Sizes(keep)
    touched_nodes = {k[2:].split(".")[0] for k, _ in keep if k[0] == "n"}
    # every module path that holds a changed parameter or buffer, at any depth
    changed_owners = {name.rsplit(".", i)[0] for k, _ in keep if k[0] in "pb"
                      for name in (k[2:],) for i in range(1, name.count(".") + 1)}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        hit = node.name in touched_nodes or any(a.name in touched_nodes for a in node.all_input_nodes)
        hit = hit or node.target in changed_owners
        if not hit:
            continue
        m, old = submodule(gm, node.target), submodule(cg.traced.root, node.target)
        for cls in type(m).__mro__:
            if cls in MODULE_UPDATERS:
                new = MODULE_UPDATERS[cls](m, old, node, sizes)
                if isinstance(new, nn.Module):
                    set_submodule(gm, node.target, new)
                break
