"""Building blocks of the TAS supernet: channel-wise interpolation (CWI), per-width
BatchNorm, depth aggregation, the two-of-K Gumbel sampler, and block removal.

How widths are searched on any model the core can prune (the approximation):
a group ``g`` of the ChannelGraph has ``C`` units ranked by L1 importance; width
``w`` keeps the ``w`` most important units. At every *CWI point* of ``g`` (each
BatchNorm whose channels are all units of ``g``; where ``g`` has no BatchNorm,
each conv/linear producing ``g``'s channels) the module is replaced by
:class:`CWIPoint`, which computes, for the two sampled candidates ``j``,

    out = sum_j  p_j * CWI(BN_j(x), keep_j)

``BN_j`` is the point's own copy of the BatchNorm for candidate ``j`` (one BN per
width, as in TAS); ``CWI`` takes the kept channels in importance order (a
feature map of ``k_j`` channels) and stretches it back to the full ``n``
channels with an adaptive average pool along the channel axis (TAS's
``ChannelWiseInterV2``, ``adaptive_avg_pool3d`` to ``(n, H, W)``), then puts
position ``i`` of the stretched map on the channel of importance rank ``i``.
This follows the paper's CWI: the narrower map is interpolated to a common
width so that candidates of different widths can be summed, and the full-width
candidate is the identity. The difference: TAS aligns to the larger of the two
sampled widths and lets the next layer slice its input weights; aligning every
point to the full width needs no per-layer weight slicing, so it works on any
graph the analysis understands (residual adds, concat, option-A padding), at
the price of keeping the next layer's full input width during the search.
The final architecture is read off the logits, not these weights.

Depth: a stage of blocks ``[b_0 .. b_{n-1}]`` whose blocks after the first keep
the shape (identity shortcut) is replaced by :class:`DepthStage`, returning
``sum_d p_d * h_d`` over the candidate depths ``d`` (``h_d``: output after the
first ``d`` blocks; ``p = softmax(depth logits)``).
"""
from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.errors import FxPruneError

if TYPE_CHECKING:
    from .tas import TASSpace

__all__ = ["ArchState", "CWIPoint", "DepthStage", "branch_ends", "channel_align", "cwi",
           "cwi_matrix",
           "find_stages", "gumbel_select2", "is_identity_block", "remove_blocks", "Supernet"]


class ArchState:
    """What the next forward uses: per group ``(candidate indices, weights)``, per stage
    depth probabilities. An absent entry means the full network."""

    def __init__(self) -> None:
        self.width: dict[int, tuple[list[int], torch.Tensor]] = {}
        self.depth: dict[int, torch.Tensor] = {}


def channel_align(x: torch.Tensor, n: int) -> torch.Tensor:
    """Resize dim 1 of ``x`` to ``n`` channels by adaptive average pooling along it."""
    if x.shape[1] == n:
        return x
    moved = x.movedim(1, -1)
    flat = moved.reshape(1, -1, x.shape[1])
    out = F.adaptive_avg_pool1d(flat, n).reshape(*moved.shape[:-1], n)
    return out.movedim(-1, 1)


def cwi(x: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the channels ``order[:k]`` of ``x`` (importance order), interpolate that
    ``k``-channel map back to ``x``'s width, and place rank ``i`` on channel ``order[i]``."""
    n = x.shape[1]
    if k >= n:
        return x
    narrow = x.index_select(1, order[: max(k, 1)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=order.device)
    return channel_align(narrow, n).index_select(1, inverse)


def cwi_matrix(order: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """The ``n x n`` matrix ``M`` with ``cwi(x, order, k) == M @ x`` along dim 1 (adaptive
    average pooling from ``k`` to ``n``: output ``i`` averages inputs
    ``floor(i*k/n) .. ceil((i+1)*k/n) - 1``, as ``F.adaptive_avg_pool1d`` does)."""
    k = max(min(k, n), 1)
    pool = torch.zeros(n, k)
    for i in range(n):
        lo, hi = (i * k) // n, -((-(i + 1) * k) // n)
        pool[i, lo:hi] = 1.0 / (hi - lo)
    m = torch.zeros(n, n)
    m[order.long()] = pool @ torch.eye(n)[order[:k].long()]
    return m


def _apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:  # a 1x1 convolution: the fast path for conv nets
        return F.conv2d(x, m.to(x.dtype)[:, :, None, None])
    return torch.tensordot(x.movedim(1, -1), m.to(x.dtype).t(), dims=1).movedim(-1, 1)


class CWIPoint(nn.Module):
    """A BatchNorm (one copy per candidate width) or a producing layer, followed by CWI.

    ``ks[j]``: channels of this point kept by candidate ``j`` (the last is the full
    width). CWI runs as one precomputed channel-mixing matrix per candidate
    (:func:`cwi_matrix`), which equals :func:`cwi` and is much faster on CPU.
    """

    def __init__(self, module: nn.Module, group: int, order: torch.Tensor, ks: Sequence[int],
                 state: ArchState, per_width_bn: bool) -> None:
        super().__init__()
        self.group, self.ks, self.state = group, list(ks), state
        n = len(order)
        self.register_buffer("maps", torch.stack([cwi_matrix(order, k, n) for k in ks]),
                             persistent=False)
        self.bns = nn.ModuleList(copy.deepcopy(module) for _ in ks) if per_width_bn else None
        self.inner = None if per_width_bn else module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sel = self.state.width.get(self.group)
        if sel is None:  # no sample: the full-width network
            return self.bns[-1](x) if self.bns is not None else self.inner(x)
        idx, weights = sel
        y = self.inner(x) if self.inner is not None else None
        out = None
        for j, p in zip(idx, weights):
            h = self.bns[j](x) if y is None else y
            h = (h if self.ks[j] >= h.shape[1] else _apply(self.maps[j], h)) * p
            out = h if out is None else out + h
        return out


class DepthStage(nn.Module):
    """A stage of blocks whose output is the depth-distribution-weighted sum of the
    outputs after each candidate depth."""

    def __init__(self, blocks: nn.Sequential, stage: int, depths: Sequence[int],
                 state: ArchState) -> None:
        super().__init__()
        self.blocks, self.stage, self.depths, self.state = blocks, stage, list(depths), state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.state.depth.get(self.stage)
        if probs is None:
            return self.blocks(x)
        out, h = None, x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i + 1 in self.depths:
                term = probs[self.depths.index(i + 1)] * h
                out = term if out is None else out + term
        return out


def gumbel_select2(logits: torch.Tensor, tau: float, *, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[list[int], torch.Tensor]:
    """TAS's ``select2withP``: perturb ``log_softmax(logits)`` with Gumbel noise, divide
    by ``tau``, draw two distinct candidates from the softmax of that, and weight them
    by a softmax over just their two perturbed logits (differentiable in ``logits``).
    ``noise`` replaces the Gumbel draw (zeros: no noise, the argmax wins)."""
    if logits.numel() == 1:
        return [0], torch.ones(1, dtype=logits.dtype, device=logits.device)
    if noise is None:
        u = torch.rand(logits.shape, generator=generator).clamp_(1e-10, 1 - 1e-10)
        noise = -torch.log(-torch.log(u)).to(logits.device, logits.dtype)
    perturbed = (logits.log_softmax(-1) + noise) / tau
    with torch.no_grad():
        probs = perturbed.softmax(-1).double().cpu() + 1e-7
        first = int(probs.argmax()) if noise.abs().sum() == 0 else \
            int(torch.multinomial(probs, 1, generator=generator))
        probs[first] = 0
        second = int(torch.multinomial(probs, 1, generator=generator))
    idx = [first, second]
    return idx, perturbed[idx].softmax(-1)


def _points(space: "TASSpace", gi: int) -> list[tuple[str, Any, bool]]:
    """(module name, member, is_bn) of the CWI points of group ``gi``."""
    bns, prods = [], []
    for m in space.cg.group(space.gids[gi]).params():
        mod_name, _, pname = space.cg.tensor_names[m.key][0].rpartition(".")
        if m.dim != 0 or pname != "weight" or m.unit.size != m.length:
            continue  # a point must be wholly owned by the group
        mod = space.cg.gm.get_submodule(mod_name)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            bns.append((mod_name, m, True))
        elif isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            prods.append((mod_name, m, False))
    return bns or prods


class Supernet(nn.Module):
    """A deep copy of the model with CWI points and depth stages, plus the logits."""

    def __init__(self, model: nn.Module, space: "TASSpace", seed: int = 0) -> None:
        super().__init__()
        self.space, self.state = space, ArchState()
        self.net = copy.deepcopy(model)
        g = torch.Generator().manual_seed(seed)
        self.width_logits = nn.ParameterList(
            nn.Parameter(torch.randn(len(c), generator=g) * 1e-2) for c in space.widths)
        self.depth_logits = nn.ParameterList(
            nn.Parameter(torch.randn(len(c), generator=g) * 1e-2) for c in space.depths)
        for gi in range(len(space.gids)):
            for name, m, is_bn in _points(space, gi):
                r = space.ranks[gi][m.unit]
                order = torch.as_tensor(m.index[np.lexsort((m.index, r))])
                ks = [int((r < w).sum()) for w in space.widths[gi]]
                mod = self.net.get_submodule(name)
                self._set(name, CWIPoint(mod, gi, order, ks, self.state, is_bn))
        for s, (name, _) in enumerate(space.stages):
            self._set(name, DepthStage(self.net.get_submodule(name), s, space.depths[s], self.state))

    def _set(self, name: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(self.net.get_submodule(parent) if parent else self.net, child, module)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [*self.width_logits, *self.depth_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def sample(self, tau: float, generator: torch.Generator | None = None) -> None:
        """Draw two widths per group and set the depth distributions for the next forward."""
        self.state.width = {gi: gumbel_select2(lg, tau, generator=generator)
                            for gi, lg in enumerate(self.width_logits)}
        self.state.depth = {s: lg.softmax(-1) for s, lg in enumerate(self.depth_logits)}

    def expected_macs(self) -> torch.Tensor:
        return self.space.macs([lg.softmax(-1) for lg in self.width_logits],
                               [lg.softmax(-1) for lg in self.depth_logits])

    def argmax(self) -> tuple[list[int], list[int]]:
        return ([int(lg.argmax()) for lg in self.width_logits],
                [int(lg.argmax()) for lg in self.depth_logits])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def is_identity_block(block: nn.Module) -> bool:
    """A known residual block (CIFAR ResNet, torchvision BasicBlock/Bottleneck) whose
    shortcut is the identity (no projection, no option-A padding)."""
    from torchvision.models.resnet import BasicBlock as TvBasic, Bottleneck

    from fxprune.models.cifar_resnet import BasicBlock as CifarBasic

    if not isinstance(block, (CifarBasic, TvBasic, Bottleneck)):
        return False
    return getattr(block, "downsample", None) is None and not getattr(block, "pad_shortcut", False)


def find_stages(model: nn.Module) -> list[tuple[str, int]]:
    """``(name, n_blocks)`` of every ``nn.Sequential`` of >= 2 known residual blocks whose
    blocks after the first all have identity shortcuts."""
    out = []
    for name, m in model.named_modules():
        kids = list(m.children()) if isinstance(m, nn.Sequential) else []
        if len(kids) >= 2 and all(is_identity_block(b) for b in kids[1:]):
            out.append((name, len(kids)))
    return out


_ADDS = (operator.add, operator.iadd, torch.add)


def _block_add(gm: fx.GraphModule, block: str) -> fx.Node:
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _ADDS
            and list(n.meta.get("nn_module_stack", {}))[-1:] == [block]]
    if len(adds) != 1:
        raise FxPruneError(f"block {block!r}: expected one residual add directly in the block, "
                           f"found {len(adds)}; only identity-shortcut blocks can be removed")
    return adds[0]


def _split_add(add: fx.Node, block: str) -> tuple[fx.Node, fx.Node]:
    """(shortcut operand: computed outside the block, branch operand: inside it)."""
    ops = [a for a in add.args[:2] if isinstance(a, fx.Node)]
    outside = [a for a in ops if block not in a.meta.get("nn_module_stack", {})]
    if len(ops) != 2 or len(outside) != 1:
        raise FxPruneError(f"block {block!r}: {add.format_node()} has no single operand "
                           "from outside the block (not an identity shortcut)")
    return outside[0], ops[1] if ops[0] is outside[0] else ops[0]


def branch_ends(gm: fx.GraphModule, blocks: Sequence[str]) -> list[str]:
    """The module ending each block's residual branch (``bn2`` of a basic block, ``bn3``
    of a bottleneck): the names ``passes/remove_branches.py`` expects."""
    out = []
    for block in blocks:
        _, branch = _split_add(_block_add(gm, block), block)
        if branch.op != "call_module":
            raise FxPruneError(f"block {block!r}: the branch ends in {branch.format_node()}, "
                               "not a module call")
        out.append(str(branch.target))
    return out


def remove_blocks(gm: fx.GraphModule, blocks: Sequence[str]) -> fx.GraphModule:
    """Replace each named block's residual add by its shortcut operand (a deep copy of
    ``gm`` is rewritten). The shortcut is the operand computed outside the block; the
    branch becomes dead code and its modules are deleted. Equivalent to the block with
    its branch output zeroed. (Local stand-in for ``passes/remove_branches.py``.)"""
    gm = copy.deepcopy(gm)
    for block in blocks:
        add = _block_add(gm, block)
        add.replace_all_uses_with(_split_add(add, block)[0])
        gm.graph.erase_node(add)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return gm
