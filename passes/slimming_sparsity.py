"""Network Slimming's sparsity training and global BN threshold (Liu et al., 2017).

Slimming trains with an extra ``s * |gamma|`` penalty on every BatchNorm scale,
implemented as a subgradient added after ``backward()`` and before
``optimizer.step()``::

    hook = bn_sparsity_hook(SLIMMING_S_VGG)
    loss.backward()
    hook(model)          # grad(gamma) += s * sign(gamma)
    optimizer.step()

then prunes the channels whose ``|gamma|`` falls below one global threshold,
:func:`slimming_threshold`.  The paper's values of ``s``: 1e-4 for VGG, 1e-5 for
ResNet and DenseNet.  This module only does the arithmetic; turning the
threshold into a pruning plan is the slimming criterion pass's job.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "SLIMMING_S_RESNET",
    "SLIMMING_S_VGG",
    "add_bn_l1_subgradient",
    "bn_sparsity_hook",
    "slimming_threshold",
]

SLIMMING_S_VGG = 1e-4
SLIMMING_S_RESNET = 1e-5  # also DenseNet


def add_bn_l1_subgradient(model: nn.Module, s: float = SLIMMING_S_VGG) -> int:
    """Add ``s * sign(gamma)`` to the weight gradient of every BatchNorm; return how many.

    Covers BatchNorm1d/2d/3d and SyncBatchNorm (any ``_BatchNorm`` with an affine
    weight that requires grad).  A weight without a gradient yet gets one equal to
    the subgradient, so the penalty also applies to a BN the loss did not reach.
    ``sign(0) = 0``: a scale that is exactly zero is left alone.
    """
    if s < 0:
        raise ValueError(f"sparsity strength s must be >= 0, got {s}")
    touched = 0
    for module in model.modules():
        if not isinstance(module, _BatchNorm) or module.weight is None:
            continue
        weight = module.weight
        if not weight.requires_grad:
            continue
        step = s * torch.sign(weight.detach())
        if weight.grad is None:
            weight.grad = step
        else:
            weight.grad.add_(step)
        touched += 1
    return touched


def bn_sparsity_hook(s: float = SLIMMING_S_VGG) -> Callable[[nn.Module], int]:
    """A ``grad_hook(model)`` for a training loop: :func:`add_bn_l1_subgradient` with ``s``."""
    if s < 0:
        raise ValueError(f"sparsity strength s must be >= 0, got {s}")

    def grad_hook(model: nn.Module, *_: object) -> int:  # fxprune.train passes (model, optimizer)
        return add_bn_l1_subgradient(model, s)

    grad_hook.s = s  # type: ignore[attr-defined]  # so a checkpoint can record it
    return grad_hook


def slimming_threshold(bn_weights: Sequence[Tensor], percent: float) -> float:
    """One global threshold ``t`` on ``|gamma|`` over all given BN weights.

    Let ``a`` be all ``N`` values ``|gamma|`` sorted ascending and
    ``k = floor(percent * N)`` (with a 1e-9 allowance so that e.g. 0.29 * 100 is 29,
    not 28).  Returns ``t = a[k]``; pruning the channels with ``|gamma| < t``
    (strictly) removes exactly ``k`` channels whenever ``a[k-1] < a[k]``, and fewer
    when values tie across the boundary (tied channels are never split).  ``percent``
    must be in [0, 1): at least one channel always survives.
    """
    if not 0.0 <= percent < 1.0:
        raise ValueError(f"percent must be in [0, 1), got {percent}")
    if not bn_weights:
        raise ValueError("slimming_threshold needs at least one BN weight tensor")
    values = torch.cat([w.detach().abs().flatten().float().cpu() for w in bn_weights])
    if values.numel() == 0:
        raise ValueError("the given BN weights hold no channels")
    k = math.floor(percent * values.numel() + 1e-9)
    return float(values.sort().values[k])
