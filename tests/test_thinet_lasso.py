"""ThiNet and LASSO through ``fxprune.prune``: selection, reconstruction, consumer detection."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune.models import get_model
from fxprune.passes.lasso import lasso_path_scores
from fxprune.passes.reconstruct import (channel_gram, lasso_select, least_squares_rescale,
                                        thinet_select)
from fxprune.passes.thinet import consumers, greedy_order


class Redundant(nn.Module):
    """conv1 -> BN -> ReLU -> conv2 -> ...: conv1's group has one consumer, conv2.

    Filters 6-11 of conv1 nearly copy 0-5 (data-redundant), and BN scales 0-2 down
    100x while their filters are the largest, so L1 keeps near-silent channels.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            w = torch.randn(12, 3, 3, 3, generator=g)
            w[6:] = w[:6] + 0.05 * torch.randn(6, 3, 3, 3, generator=g)
            w[:3] *= 3.0
            self.conv1.weight.copy_(w)
            self.bn1.weight[:3] = 0.01
            self.conv2.weight.copy_(torch.randn(8, 12, 3, 3, generator=g) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(y.mean((2, 3)))


def _conv2_out(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    h = module.get_submodule("conv2").register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        module(x)
    h.remove()
    return seen[0]


def _run_and_check(criterion: str, keep_ratio: float = 0.5, **kw) -> float:
    """Relative error of conv2's output after pruning conv1's group, on held-out data."""
    torch.manual_seed(0)
    model = Redundant().eval()
    x = torch.randn(1, 3, 8, 8)
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randn(16, 3, 8, 8, generator=g) for _ in range(3)]
    held_out = torch.randn(32, 3, 8, 8, generator=g)
    res = fxprune.prune(model, x, ratio={"conv1.weight:0": keep_ratio}, criterion=criterion,
                        calibration=calibration, progress=False, **kw)
    assert res.plan.removed == {"conv1.weight:0": res.plan.removed["conv1.weight:0"]}
    assert len(res.plan.removed["conv1.weight:0"]) == 6
    ref, got = _conv2_out(model, held_out), _conv2_out(res.module.eval(), held_out)
    return float((ref - got).norm() / ref.norm())


@pytest.mark.parametrize("criterion", ["thinet", "lasso"])
def test_reconstruction_error_beats_l1_and_random(criterion: str) -> None:
    err = _run_and_check(criterion)
    baselines = {c: _run_and_check(c) for c in ("l1", "l1-filter")}
    baselines.update({f"random(seed={s})": _run_and_check("random", seed=s) for s in range(5)})
    assert err < 0.8 * min(baselines.values()), (err, baselines)


def test_thinet_rescales_and_lasso_refits_the_consumer() -> None:
    """The pruned conv2 weight is not a plain column selection of the original."""
    model = Redundant().eval()
    calibration = [torch.randn(8, 3, 8, 8)]
    for criterion in ("thinet", "lasso"):
        res = fxprune.prune(model, torch.randn(1, 3, 8, 8), ratio={"conv1.weight:0": 0.5},
                            criterion=criterion, calibration=calibration, progress=False)
        kept = np.setdiff1d(np.arange(12), res.plan.removed["conv1.weight:0"])
        plain = model.conv2.weight.detach()[:, kept]
        new = res.module.get_parameter("conv2.weight").detach()
        assert new.shape == plain.shape
        assert not torch.allclose(new, plain)
        torch.testing.assert_close(res.module.get_parameter("conv2.bias"), model.conv2.bias)


def test_greedy_order_is_thinets_selection_for_every_count() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(10, 6, 3, padding=1)
    gram = channel_gram(layer, torch.randn(4, 10, 6, 6))
    step = greedy_order(gram)
    for keep in range(1, 10):
        first_removed = set(np.argsort(step)[:10 - keep].tolist())
        assert set(range(10)) - first_removed == set(thinet_select(gram, keep).tolist())


def test_only_single_consumer_groups_are_scored() -> None:
    """ResNet-20: the block-internal groups have one consumer; residual streams several."""
    model = get_model("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    cg = fxprune.analyze(model, x)
    found = consumers(cg)
    assert sorted(c.module for c in found.values()) == sorted(
        f"layer{s}.{b}.conv2" for s in (1, 2, 3) for b in range(3))
    res = fxprune.prune(model, x, ratio=0.5, criterion="thinet", progress=False,
                        calibration=[torch.randn(2, 3, 32, 32)])
    assert set(res.plan.removed) == set(found)
    res = fxprune.prune(model, x, ratio=0.5, criterion="thinet", progress=False, fallback="l1",
                        calibration=[torch.randn(2, 3, 32, 32)])
    assert set(res.plan.removed) > set(found)


def test_lasso_path_ranking_agrees_with_the_papers_bisection() -> None:
    """Taking the top-n of the path scores is He et al.'s exact-count LASSO selection
    (lam bisected until n channels stay) wherever the path is monotone; where not, the
    picked set reconstructs about as well."""
    agree, total = 0, 0
    for seed in range(2):
        torch.manual_seed(seed)
        layer = nn.Conv2d(16, 8, 3, padding=1)
        x = torch.randn(8, 16, 6, 6)
        x[:, 8:] = x[:, :8] + 0.3 * torch.randn(8, 8, 6, 6)  # correlated halves
        gram = channel_gram(layer, x)
        scores = lasso_path_scores(gram)
        for keep in range(2, 15, 2):
            ours = sorted(np.argsort(-scores)[:keep].tolist())
            paper = sorted(lasso_select(gram, keep).tolist())
            agree, total = agree + (ours == paper), total + 1
            err = [gram.error(k, least_squares_rescale(gram, k)) for k in (ours, paper)]
            assert err[0] <= 1.1 * err[1]
    assert agree >= 0.8 * total
