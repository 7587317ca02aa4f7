"""Tests for passes/sss_blocks.py: block scales, APG exact zeros, folding."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fxprune.passes.sss_blocks import (
    APG,
    ScaledBN,
    apg_step,
    attach_block_scales,
    fold_block_scales,
    l1_subgradient,
    zero_blocks,
)
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class Block(nn.Module):
    """Post-activation basic block; conv+BN shortcut on a shape change (that BN stays unscaled)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _net(seed: int = 0) -> nn.Sequential:
    """Stem + identity block + downsampling block: both shortcut kinds."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Block(4, 4), Block(4, 8, 2))
    with torch.no_grad():  # non-trivial BN statistics and affine params for eval mode
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_attach_wraps_branch_bn_only_and_is_identity_at_one() -> None:
    net = _net()
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    lams = attach_block_scales(net, (Block,))
    assert list(lams) == ["2", "3"]
    assert isinstance(net[2].bn2, ScaledBN) and isinstance(net[3].bn2, ScaledBN)
    assert isinstance(net[3].shortcut[1], nn.BatchNorm2d) and isinstance(net[2].bn1, nn.BatchNorm2d)
    assert torch.equal(net(x), before)
    assert attach_block_scales(net, (Block,))["3"] is lams["3"]  # idempotent
    assert all(any(p is lam for p in net.parameters()) for lam in lams.values())


@pytest.mark.parametrize("index", [2, 3])
def test_zero_scale_makes_block_its_shortcut(index: int) -> None:
    net = _net()
    lams = attach_block_scales(net, (Block,))
    with torch.no_grad():
        lams[str(index)].zero_()
    block = net[index]
    x = torch.relu(torch.randn(2, 4, 8, 8))  # block inputs come after a ReLU
    expected = torch.relu(block.shortcut(x))
    assert torch.equal(block(x), expected)
    if index == 2:
        assert torch.equal(block(x), x)  # identity shortcut: the block vanishes


def test_torchvision_blocks_by_default() -> None:
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
    net = nn.Sequential(BasicBlock(8, 8), Bottleneck(8, 4, stride=2, downsample=down)).eval()
    lams = attach_block_scales(net)
    assert isinstance(net[0].bn2, ScaledBN) and isinstance(net[1].bn3, ScaledBN)
    assert isinstance(net[1].downsample[1], nn.BatchNorm2d)
    with torch.no_grad():
        lams["1"].zero_()
    x = torch.relu(torch.randn(1, 8, 6, 6))
    assert torch.equal(net[1](x), torch.relu(down(x)))
    with pytest.raises(ValueError, match="block_types"):
        attach_block_scales(nn.Sequential(nn.Conv2d(1, 1, 1)))
    with pytest.raises(ValueError, match="no child module"):
        attach_block_scales(_net(), (Block,), branch_end="conv9")


def _fit_scales(optimizer_step, steps: int = 150) -> dict[str, torch.Tensor]:
    """Toy problem: y = 2*f1; f2 is useless.  Two scales start at 1; only scales train."""
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(64, generator=g), torch.randn(64, generator=g)
    lams = {"useful": nn.Parameter(torch.tensor(1.0)), "useless": nn.Parameter(torch.tensor(1.0))}
    for _ in range(steps):
        for lam in lams.values():
            lam.grad = None
        loss = F.mse_loss(lams["useful"] * f1 + lams["useless"] * f2, 2 * f1)
        loss.backward()
        optimizer_step(lams)
    return lams


def test_apg_gives_exact_zero_and_keeps_useful_scale() -> None:
    state: dict = {}
    lams = _fit_scales(lambda l: apg_step(l, lr=0.05, gamma=0.1, momentum=0.9, state=state))
    assert lams["useless"].item() == 0.0
    assert 1.5 < lams["useful"].item() < 2.0  # shrunk by the penalty, far from zero
    assert zero_blocks(lams) == ["useless"]


def test_subgradient_is_small_but_not_exactly_zero() -> None:
    def sgd(lams):
        l1_subgradient(lams, 0.1)
        with torch.no_grad():
            for lam in lams.values():
                lam -= 0.05 * lam.grad

    lams = _fit_scales(sgd)
    assert 0 < abs(lams["useless"].item()) <= 0.05 * 0.1 * 2
    assert zero_blocks(lams) == [] and zero_blocks(lams, tol=0.01) == ["useless"]


def test_apg_optimizer_matches_function() -> None:
    state: dict = {}
    a = _fit_scales(lambda l: apg_step(l, 0.05, 0.1, 0.9, state), steps=20)
    opt = None

    def step(lams):
        nonlocal opt
        opt = opt or APG(lams.values(), lr=0.05, gamma=0.1, momentum=0.9)
        opt.step()

    b = _fit_scales(step, steps=20)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["useless"].item() != 1.0


def test_apg_prunes_a_useless_block() -> None:
    """Teacher = student with block "3" switched off; APG on the scales alone finds it.

    Block "2" gets a weaker penalty (a second param group): with equal penalties
    block 3 would learn to make up for a shrinking block 2 instead of vanishing.
    """
    teacher = _net(seed=1)
    attach_block_scales(teacher, (Block,))["3"].data.zero_()
    student = _net(seed=1)
    lams = attach_block_scales(student, (Block,))
    opt = APG([{"params": [lams["2"]], "gamma": 0.02}, {"params": [lams["3"]]}],
              lr=0.05, gamma=0.2, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(4, 3, 6, 6, generator=g)
        opt.zero_grad()
        (F.mse_loss(student(x), teacher(x).detach(), reduction="sum") / 4).backward()
        opt.step()
    assert zero_blocks(lams) == ["3"]
    assert lams["2"].item() > 0.5


def test_fold_block_scales_preserves_outputs() -> None:
    net = _net()
    lams = attach_block_scales(net, (Block,))
    with torch.no_grad():
        lams["2"].fill_(0.3)
        lams["3"].fill_(-1.7)
    x = torch.randn(2, 3, 8, 8)
    expected = net(x)
    fold_block_scales(net)
    assert not any(isinstance(m, ScaledBN) for m in net.modules())
    torch.testing.assert_close(net(x), expected)
    with pytest.raises(ValueError, match="cannot fold"):
        fold_block_scales(nn.Sequential(ScaledBN(nn.ReLU())))
