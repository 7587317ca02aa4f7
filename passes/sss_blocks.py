"""Sparse Structure Selection (Huang & Wang, 2018): learnable residual-block scales.

SSS multiplies the residual branch of every block by a scalar ``lambda`` (init 1)
and trains the scalars with a sparsity penalty ``gamma * |lambda|`` using an
accelerated proximal gradient (APG) method; a block whose ``lambda`` reaches
exactly zero computes ``out = shortcut(x)`` (then any post-add activation) and
can be removed.

Since the block's ``forward`` is user code, the scale is inserted where the
branch *ends*: :func:`attach_block_scales` wraps the module producing the branch
output (by default the block's last direct BatchNorm child, e.g. ``bn2`` of a
torchvision ``BasicBlock``, ``bn3`` of a ``Bottleneck``) in :class:`ScaledBN`,
which returns ``module(x) * lambda``.  For pre-activation blocks, whose branch
ends in a conv, name that child with ``branch_end``.  The model is modified in
place (that is the point: the returned parameters belong to it).

    lams = attach_block_scales(model)
    weights = [p for p in model.parameters() if all(p is not l for l in lams.values())]
    opt_w = torch.optim.SGD(weights, lr=0.1, momentum=0.9)
    opt_l = APG(lams.values(), lr=0.1, gamma=1e-2, momentum=0.9)
    ...
    zero_blocks(lams)   # -> ["layer2.1", ...]
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

__all__ = [
    "APG",
    "ScaledBN",
    "apg_step",
    "attach_block_scales",
    "fold_block_scales",
    "l1_subgradient",
    "soft_threshold",
    "zero_blocks",
]

Lams = Mapping[str, Tensor] | Iterable[Tensor]


class ScaledBN(nn.Module):
    """``bn(x) * scale`` with a learnable scalar ``scale`` (init 1).

    Wraps the module that ends a residual branch, normally a BatchNorm (hence the
    name) but any module works.  Traced by torch.fx as the wrapped call followed by
    a ``mul`` with a scalar parameter, which passes channels through unchanged.
    """

    def __init__(self, bn: nn.Module, init: float = 1.0) -> None:
        super().__init__()
        self.bn = bn
        ref = next((t for t in (*bn.parameters(), *bn.buffers()) if t.is_floating_point()), None)
        kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        self.scale = nn.Parameter(torch.tensor(float(init), **kw))

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x) * self.scale


def _default_block_types() -> tuple[type, ...]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return (BasicBlock, Bottleneck)


def _last_bn_child(block: nn.Module) -> str:
    names = [n for n, c in block.named_children() if isinstance(c, (_BatchNorm, ScaledBN))]
    if not names:
        raise ValueError(f"{type(block).__name__} has no direct BatchNorm child to scale; "
                         "pass branch_end= naming the child that ends the residual branch")
    return names[-1]


def attach_block_scales(model: nn.Module, block_types: tuple[type, ...] | None = None, *,
                        branch_end: str | Callable[[nn.Module], str] | None = None
                        ) -> dict[str, nn.Parameter]:
    """Wrap the branch end of every block of ``block_types`` in :class:`ScaledBN`.

    ``block_types`` defaults to torchvision's ``BasicBlock`` and ``Bottleneck``.
    ``branch_end``: the child's name, or a function block -> name; default: the
    block's last direct BatchNorm child (shortcut BNs live inside a ``downsample``
    or ``shortcut`` submodule and are not direct children).  Returns
    ``{block qualified name: lambda}``; calling it again reuses existing scales.
    """
    types = block_types if block_types is not None else _default_block_types()
    pick = branch_end if callable(branch_end) else (
        (lambda _b: branch_end) if branch_end is not None else _last_bn_child)
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, types)]
    if not blocks:
        raise ValueError(f"no module of types {[t.__name__ for t in types]} in the model; "
                         "pass block_types= with your residual block classes")
    scales = {}
    for name, block in blocks:
        child = pick(block)
        end = getattr(block, child, None)
        if end is None:
            raise ValueError(f"block {name!r} ({type(block).__name__}) has no child module "
                             f"{child!r}")
        if not isinstance(end, nn.Module):
            raise TypeError(f"block {name!r}: {child!r} is a {type(end).__name__}, not a module")
        if not isinstance(end, ScaledBN):
            end = ScaledBN(end)
            setattr(block, child, end)
        scales[name] = end.scale
    return scales


def _named(lams: Lams) -> list[tuple[str, Tensor]]:
    if isinstance(lams, Mapping):
        return list(lams.items())
    return [(str(i), p) for i, p in enumerate(lams)]


def soft_threshold(x: Tensor, threshold: float) -> Tensor:
    """``sign(x) * max(|x| - threshold, 0)``: the proximal operator of ``threshold * |x|``."""
    return torch.sign(x) * (x.abs() - threshold).clamp_min(0)


@torch.no_grad()
def apg_step(lams: Lams, lr: float, gamma: float, momentum: float = 0.9,
             state: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """One APG step on the scales (SSS eq. 10-12, the NAG form of their code).

    ``z = S_{lr*gamma}(lam - lr*grad)``; ``v = z - lam + momentum*v``;
    ``lam = z + momentum*v``.  Once ``z`` is zero on two consecutive steps, ``v`` and
    ``lam`` are exactly zero.  ``state`` holds the ``v`` buffers by name (index for a
    plain iterable); pass back what the previous call returned.  A missing gradient
    counts as zero, so the penalty still acts.
    """
    if lr <= 0 or gamma < 0 or not 0 <= momentum < 1:
        raise ValueError("need lr > 0, gamma >= 0, 0 <= momentum < 1; "
                         f"got {lr}, {gamma}, {momentum}")
    state = {} if state is None else state
    for name, lam in _named(lams):
        grad = lam.grad if lam.grad is not None else torch.zeros_like(lam)
        v = state.get(name)
        v = torch.zeros_like(lam) if v is None else v * momentum
        z = soft_threshold(lam - lr * grad, lr * gamma)
        v = z - lam + v
        lam.copy_(z + momentum * v)
        state[name] = v
    return state


class APG(torch.optim.Optimizer):
    """:func:`apg_step` as a ``torch.optim.Optimizer`` (works with LR schedulers)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float, gamma: float,
                 momentum: float = 0.9) -> None:
        super().__init__(params, {"lr": lr, "gamma": gamma, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state[p]
                buf = apg_step([p], group["lr"], group["gamma"], group["momentum"],
                               {"0": st["v"]} if "v" in st else None)
                st["v"] = buf["0"]
        return loss


@torch.no_grad()
def l1_subgradient(lams: Lams, gamma: float) -> None:
    """Add ``gamma * sign(lambda)`` to each scale's gradient (plain SGD variant; no exact zeros)."""
    for _, lam in _named(lams):
        step = gamma * torch.sign(lam)
        if lam.grad is None:
            lam.grad = step
        else:
            lam.grad.add_(step)


def zero_blocks(lams: Mapping[str, Tensor], tol: float = 0.0) -> list[str]:
    """Names of the blocks whose scale is zero (``|lambda| <= tol``; APG gives exact zeros)."""
    return [name for name, lam in lams.items() if bool((lam.detach().abs() <= tol).all())]


@torch.no_grad()
def fold_block_scales(model: nn.Module) -> nn.Module:
    """Replace every :class:`ScaledBN` by its module with ``lambda`` folded in (in place).

    ``lambda * BN(x)`` is a BN with weight and bias times ``lambda``; the same holds
    for a conv or linear layer.  Other wrapped modules are an error.
    """
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, ScaledBN):
                continue
            inner, lam = child.bn, child.scale.detach()
            if not isinstance(inner, (_BatchNorm, _ConvNd, nn.Linear)) or inner.weight is None:
                raise ValueError(f"cannot fold the scale of {name}.{child_name} into a "
                                 f"{type(inner).__name__}; need an affine BN, conv or linear")
            inner.weight.mul_(lam)
            if inner.bias is not None:
                inner.bias.mul_(lam)
            setattr(parent, child_name, inner)
    return model
