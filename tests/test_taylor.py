"""Taylor importance: the gradient-based value against finite differences of the loss."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune.passes.taylor import taylor_contributions, taylor_criterion, taylor_loss


class Tiny(nn.Module):
    """conv-BN-ReLU twice with a residual add (``residual=False``: without), then a
    linear head: a plain group and a residual one whose units own entries in several
    layers (a chain: two plain groups)."""

    def __init__(self, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + y) if self.residual else \
            torch.relu(self.bn2(self.conv2(y)))
        return self.fc(y.mean((2, 3)))


def _scaled_loss(model: nn.Module, group, unit: int, alpha: float, batch) -> float:
    """The loss with every parameter entry that ``unit`` owns multiplied by ``alpha``."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, dim, idx in group.slices(unit):
            p = m.get_parameter(name)
            p.index_copy_(dim, torch.tensor(idx), p.index_select(dim, torch.tensor(idx)) * alpha)
        return float(taylor_loss(m.eval()(batch[0]), batch[1]))


def _run_and_check(batch, eps: float = 1e-4) -> None:
    torch.manual_seed(0)
    model = Tiny().double().eval()
    with torch.no_grad():  # non-trivial BN statistics and affine terms
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    cg = fxprune.analyze(model, batch[0][:1])
    contrib = taylor_contributions(cg, [batch], 1, progress=False)
    for g in cg.groups:
        for u in range(g.size):
            fd = (_scaled_loss(model, g, u, 1 + eps, batch)
                  - _scaled_loss(model, g, u, 1 - eps, batch)) / (2 * eps)
            assert contrib[g.id][0, u] == pytest.approx(fd, rel=1e-3, abs=1e-6), (g.id, u)


def test_matches_finite_differences_with_targets() -> None:
    g = torch.Generator().manual_seed(0)
    _run_and_check((torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64),
                    torch.randint(0, 5, (4,), generator=g)))


def test_matches_finite_differences_without_targets() -> None:
    """No targets: the loss is the output's L2 norm."""
    g = torch.Generator().manual_seed(1)
    _run_and_check((torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64), None))


def test_scores_average_over_batches_and_leave_the_model_alone() -> None:
    torch.manual_seed(0)
    model = Tiny().eval()
    model.conv1.weight.requires_grad_(False)
    batches = [(torch.randn(2, 3, 6, 6), torch.randint(0, 5, (2,))) for _ in range(3)]
    cg = fxprune.analyze(model, batches[0][0][:1])
    contrib = taylor_contributions(cg, batches, 3, progress=False)
    abs_scores = taylor_criterion(cg, model=model, calibration=batches, num_batches=3,
                                  progress=False)
    sq_scores = taylor_criterion(cg, model=model, calibration=batches, num_batches=3,
                                 variant="squared", progress=False)
    for gid, t in contrib.items():
        assert t.shape == (3, cg.group(gid).size)
        np.testing.assert_allclose(abs_scores[gid], np.abs(t).mean(0))
        np.testing.assert_allclose(sq_scores[gid], (t ** 2).mean(0))
    assert all(p.grad is None for p in model.parameters())
    assert not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad
