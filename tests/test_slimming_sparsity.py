"""Tests for passes/slimming_sparsity.py: the BN L1 subgradient and the global threshold."""
from __future__ import annotations

import math

import pytest
import torch
from fxprune.passes.slimming_sparsity import (
    SLIMMING_S_RESNET,
    SLIMMING_S_VGG,
    add_bn_l1_subgradient,
    bn_sparsity_hook,
    slimming_threshold,
)
from torch import nn


class BNZoo(nn.Module):
    """BatchNorm 1d, 2d and 3d, one without affine, next to a conv: which BNs get the penalty."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.bn1 = nn.BatchNorm1d(4)
        self.bn3 = nn.BatchNorm3d(4)
        self.plain = nn.BatchNorm1d(4, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv(x))
        z = self.bn1(y.mean((2, 3)))
        w = self.bn3(y.unsqueeze(2))
        return z.sum() + w.pow(2).mean() + self.plain(z).sum()


def _model() -> BNZoo:
    torch.manual_seed(0)
    model = BNZoo()
    with torch.no_grad():  # mixed signs and an exact zero, so sign() is exercised
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.weight.copy_(torch.randn(4))
        model.bn2.weight[1] = 0.0
    return model


def _run_and_check(apply, s: float) -> None:
    """``apply(model)`` adds exactly s*sign(gamma) to BN weight grads and nothing else."""
    model = _model()
    model(torch.randn(3, 2, 5, 5)).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert apply(model) == 3
    for name, p in model.named_parameters():
        if name in ("bn1.weight", "bn2.weight", "bn3.weight"):
            expected = before[name] + s * torch.sign(p.detach())
            assert torch.equal(p.grad, expected), name
            assert not torch.equal(p.grad, before[name])
        else:
            assert torch.equal(p.grad, before[name]), name
    assert model.bn2.weight.grad[1] == before["bn2.weight"][1]  # sign(0) = 0


@pytest.mark.parametrize("s", [SLIMMING_S_VGG, SLIMMING_S_RESNET, 0.5])
def test_subgradient_is_exact(s: float) -> None:
    _run_and_check(lambda m: add_bn_l1_subgradient(m, s), s)


def test_hook_factory_matches_function() -> None:
    hook = bn_sparsity_hook(0.25)
    _run_and_check(hook, 0.25)
    assert hook.s == 0.25


def test_missing_grad_and_frozen_bn() -> None:
    model = _model()
    model.bn3.weight.requires_grad_(False)
    assert add_bn_l1_subgradient(model, 0.1) == 2
    assert torch.equal(model.bn1.weight.grad, 0.1 * torch.sign(model.bn1.weight.detach()))
    assert model.bn3.weight.grad is None
    with pytest.raises(ValueError, match="s must be"):
        add_bn_l1_subgradient(model, -1.0)


def test_sparsity_training_shrinks_scales() -> None:
    """Only the penalty acts (zero task gradient): |gamma| falls by lr*s per step."""
    model = _model()
    start = model.bn1.weight.detach().abs().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad(set_to_none=False)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        add_bn_l1_subgradient(model, 0.01)
        opt.step()
    expected = (start - 5 * 0.1 * 0.01).clamp_min(0)
    torch.testing.assert_close(model.bn1.weight.detach().abs(), expected)


@pytest.mark.parametrize("percent", [0.0, 0.1, 0.29, 0.5, 0.7, 0.99])
def test_threshold_prunes_exact_count(percent: float) -> None:
    g = torch.Generator().manual_seed(int(percent * 100))
    weights = [torch.randn(n, generator=g) for n in (16, 32, 52)]  # 100 channels, no ties
    t = slimming_threshold(weights, percent)
    pruned = sum(int((w.abs() < t).sum()) for w in weights)
    assert pruned == round(percent * 100)
    assert pruned == math.floor(percent * 100 + 1e-9)
    below = torch.cat(weights).abs().sort().values
    assert below[pruned] == t  # the threshold is the smallest surviving |gamma|


def test_threshold_ties_and_errors() -> None:
    w = [torch.tensor([0.1, 0.2, 0.2, 0.2, 0.5])]
    t = slimming_threshold(w, 0.4)  # k = 2 falls inside the tie 0.2 x3
    assert int((w[0].abs() < t).sum()) == 1  # ties are kept together
    assert slimming_threshold([torch.tensor([-3.0, 1.0, 2.0])], 0.34) == 2.0  # uses |gamma|
    with pytest.raises(ValueError, match="percent"):
        slimming_threshold(w, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        slimming_threshold([], 0.5)
