"""``sss``: Sparse Structure Selection (Huang & Wang, 2018) -- depth pruning.

Train the residual-block scales with a sparsity penalty, then prune the blocks
whose scale reached zero:

    lams = train_sss(model, loader, epochs=1, gamma=1e-2,
                     block_types=(fxprune.models.cifar_resnet.BasicBlock,))
    res = fxprune.prune(model, x, criterion="sss")   # res.plan.removed_blocks

:func:`train_sss` wraps every block's branch end in ``ScaledBN`` (in place,
:func:`~fxprune.passes.sss_blocks.attach_block_scales`) and trains weights
with SGD and scales with APG (exact zeros) or the plain L1 subgradient. The
criterion returns ``CriterionOutput(removed_blocks=...)``: the ScaledBN module
names with ``|lambda| <= tol``; ``fxprune.prune`` deletes those branches
(:func:`~fxprune.passes.remove_branches.remove_branches`) before channel
analysis. With ``tol=0`` (the default) the pruned module computes exactly what
the model computes. A zero scale on a block without a residual add (nothing
to fall back to) is left in place with a warning. No channel is scored, so no
channel is pruned; prune the result again for that.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fxprune.channel_graph import ChannelGraph
from fxprune.criteria import CriterionOutput
from fxprune.errors import FxPruneError

from .calibration import iter_batches, module_device
from .remove_branches import branch_add
from .sss_blocks import APG, ScaledBN, attach_block_scales, l1_subgradient, zero_blocks

__all__ = ["train_sss", "sss_criterion", "block_scales"]


def block_scales(model: nn.Module) -> dict[str, Tensor]:
    """{ScaledBN module name: its scale} -- the names ``remove_branches`` takes."""
    return {n: m.scale for n, m in model.named_modules() if isinstance(m, ScaledBN)}


def _step_loss(model: nn.Module, batch, loss_fn: Callable | None) -> Tensor:
    out = model(*batch.inputs)
    if loss_fn is not None:
        return loss_fn(out, batch.target)
    if batch.target is None:
        raise FxPruneError("train_sss needs (input, target) batches, or loss_fn=")
    return F.cross_entropy(out, batch.target)


def train_sss(model: nn.Module, data: Iterable, *, epochs: int = 1, lr: float = 0.1,
              gamma: float = 1e-2, momentum: float = 0.9, weight_decay: float = 1e-4,
              method: str = "apg", block_types: tuple[type, ...] | None = None,
              branch_end: str | Callable | None = None, loss_fn: Callable | None = None,
              num_batches: int | None = None, progress: bool = True) -> dict[str, Tensor]:
    """Attach block scales (in place) and train model + scales with the SSS penalty
    ``gamma * |lambda|``; returns ``{ScaledBN module name: lambda}``.

    ``method="apg"``: accelerated proximal gradient on the scales (exact zeros);
    ``"subgradient"``: SGD with ``gamma * sign(lambda)`` added (near zeros: prune
    with ``tol``). ``num_batches`` caps the batches per epoch. Leaves the model in
    train mode.
    """
    if method not in ("apg", "subgradient"):
        raise FxPruneError(f"train_sss: method must be 'apg' or 'subgradient', got {method!r}")
    by_block = attach_block_scales(model, block_types, branch_end=branch_end)
    lams = block_scales(model)
    ids = {id(p) for p in by_block.values()}
    weights = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    opt_w = torch.optim.SGD(weights, lr=lr, momentum=momentum, weight_decay=weight_decay)
    opt_l = APG(list(lams.values()), lr=lr, gamma=gamma, momentum=momentum) if method == "apg" \
        else torch.optim.SGD(list(lams.values()), lr=lr, momentum=momentum)
    model.train()
    device = module_device(model)
    for epoch in range(epochs):
        for batch in iter_batches(data, num_batches or 2**62, device=device, progress=progress,
                                  description=f"SSS epoch {epoch + 1}/{epochs}"):
            opt_w.zero_grad()
            opt_l.zero_grad()
            _step_loss(model, batch, loss_fn).backward()
            if method == "subgradient":
                l1_subgradient(lams, gamma)
            opt_w.step()
            opt_l.step()
    return lams


def sss_criterion(cg: ChannelGraph, *, model: nn.Module, calibration=None, tol: float = 0.0,
                  **_) -> CriterionOutput:
    """The blocks whose SSS scale is zero (``|lambda| <= tol``), as ``removed_blocks``."""
    lams = block_scales(model)
    if not lams:
        raise FxPruneError(
            "criterion 'sss' found no block scales (ScaledBN) in the model; train them first: "
            "fxprune.passes.sss.train_sss(model, data, block_types=(YourBlock,))")
    removed = []
    for name in zero_blocks(lams, tol):
        try:
            branch_add(cg.gm, name)
        except FxPruneError as e:  # a zero scale on a block without a shortcut
            warnings.warn(f"sss: block scale {name!r} is zero but cannot be removed: {e}",
                          stacklevel=3)
            continue
        removed.append(name)
    return CriterionOutput(removed_blocks=tuple(removed))
