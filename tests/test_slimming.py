"""Network Slimming: one global |gamma| threshold decides exactly which channels go."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import fxprune
from fxprune.passes.slimming_sparsity import slimming_threshold


class VGGToy(nn.Module):
    """Three conv-BN-ReLU layers and a linear head: three groups, one BN each, no coupling."""

    def __init__(self, widths: tuple[int, ...] = (8, 12, 16)) -> None:
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class ResToy(nn.Module):
    """stem conv-BN, then conv-BN added back: the stream's units have two BNs each."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + y)
        return self.fc(y.mean((2, 3)))


def _bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _group_of(res: fxprune.PruneResult, param: str) -> str:
    return next(g.id for g in res.graph.groups if any(m.name == param for m in g.params()))


def _run_and_check(model: nn.Module, percent: float) -> fxprune.PruneResult:
    """Prune with ``percent``; each group must lose exactly its channels below the
    threshold (except one kept per group when all are below)."""
    x = torch.randn(1, 3, 8, 8)
    res = fxprune.prune(model.eval(), x, criterion="slimming", percent=percent)
    t = slimming_threshold([bn.weight for bn in _bns(model)], percent)
    names = {m: n for n, m in model.named_modules()}
    for bn in _bns(model):
        gid = _group_of(res, f"{names[bn]}.weight")
        below = np.flatnonzero(bn.weight.detach().abs().numpy() < t).tolist()
        if len(below) == bn.num_features:
            below.remove(int(bn.weight.detach().abs().argmax()))
        assert list(res.plan.removed.get(gid, ())) == below, names[bn]
    return res


def test_prunes_exactly_the_channels_below_the_global_threshold() -> None:
    torch.manual_seed(0)
    model = VGGToy()
    with torch.no_grad():
        for bn in _bns(model):  # distinct values, both signs (|gamma| counts)
            bn.weight.copy_(torch.randn(bn.num_features))
    res = _run_and_check(model, 0.4)
    n = sum(bn.num_features for bn in _bns(model))
    assert res.plan.num_removed == int(0.4 * n)
    out = res.module(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 4)


def test_each_group_keeps_its_largest_channel() -> None:
    torch.manual_seed(0)
    model = VGGToy()
    with torch.no_grad():
        for i, bn in enumerate(_bns(model)):
            bn.weight.copy_(torch.rand(bn.num_features) * (1e-3 if i == 1 else 1.0))
    res = _run_and_check(model, 0.5)
    assert res.plan.kept(res.graph.groups[1].id) >= 1
    assert min(res.plan.kept(g.id) for g in res.graph.groups) == 1


def test_a_residual_unit_goes_only_when_all_its_bns_are_small() -> None:
    """Score = max |gamma| over the unit's BNs (documented choice)."""
    model = ResToy()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([0.01, 0.02, 0.9, 0.8, 0.03, 0.7]))
        model.bn2.weight.copy_(torch.tensor([0.04, 0.95, 0.05, 0.85, 0.06, 0.75]))
    res = fxprune.prune(model.eval(), torch.randn(1, 3, 8, 8), criterion="slimming", percent=0.5)
    # threshold: 6 of 12 values lie below 0.7, so t = 0.7; unit 0 and 4 have both BNs below
    (gid,) = res.plan.removed
    assert res.plan.removed[gid] == (0, 4)


def test_without_percent_the_planner_decides() -> None:
    torch.manual_seed(0)
    model = VGGToy()
    with torch.no_grad():
        for bn in _bns(model):
            bn.weight.copy_(torch.randn(bn.num_features))
    res = fxprune.prune(model.eval(), torch.randn(1, 3, 8, 8), ratio=0.5, criterion="slimming")
    for name, bn in model.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            expect = np.argsort(bn.weight.detach().abs().numpy())[:bn.num_features // 2]
            assert sorted(res.plan.removed[_group_of(res, name + ".weight")]) == \
                sorted(expect.tolist())
