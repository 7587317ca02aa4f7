"""The functional layer forms (rules/functional.py) couple exactly as their modules do.

Golden by construction: each case is one small model written twice, once with the
``torch.nn`` module and once with the ``F.*`` call on the same parameters (get_attr
nodes); the pruning groups' parameter members must be the same. Then the rewrite:
random dead-unit plans on the functional form equal the zeroed original.
Also: rule-table subclasses that keep forward stay leaves (torchvision's Conv3DSimple),
and those that override it are traced into.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.rules import module_rule_class

RTOL = 1e-5


class Pair(nn.Module):
    """conv -> norm -> (depthwise conv) -> conv-transpose -> linear, as modules or as F calls."""

    def __init__(self, norm: str, functional: bool) -> None:
        super().__init__()
        self.functional, self.norm_kind = functional, norm
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = {"batch": nn.BatchNorm2d(8), "group": nn.GroupNorm(4, 8),
                     "instance": nn.InstanceNorm2d(8, affine=True)}[norm]
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.ct = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.functional:
            x = torch.relu(self.norm(self.c1(x)))
            return self.fc(self.ct(self.dw(x)).mean((2, 3)))
        x = F.conv2d(x, self.c1.weight, self.c1.bias, 1, 1)
        n = self.norm
        if self.norm_kind == "batch":
            x = F.batch_norm(x, n.running_mean, n.running_var, n.weight, n.bias, False, 0.1, n.eps)
        elif self.norm_kind == "group":
            x = F.group_norm(x, 4, n.weight, n.bias)
        else:
            x = F.instance_norm(x, weight=n.weight, bias=n.bias)
        x = F.conv2d(torch.relu(x), self.dw.weight, self.dw.bias, padding=1, groups=8)
        x = F.conv_transpose2d(x, self.ct.weight, self.ct.bias, stride=2)
        return F.linear(x.mean((2, 3)), self.fc.weight, self.fc.bias)


class TokenPair(nn.Module):
    """embedding -> layer norm -> linear, as modules or as F calls."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.emb, self.ln, self.fc = nn.Embedding(10, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if not self.functional:
            return self.fc(self.ln(self.emb(t)))
        x = F.layer_norm(F.embedding(t, self.emb.weight), (8,), self.ln.weight, self.ln.bias)
        return F.linear(x, self.fc.weight, self.fc.bias)


CASES = {
    "batch_norm": (lambda f: Pair("batch", f), lambda: torch.randn(2, 3, 6, 6)),
    "group_norm": (lambda f: Pair("group", f), lambda: torch.randn(2, 3, 6, 6)),
    "instance_norm": (lambda f: Pair("instance", f), lambda: torch.randn(2, 3, 6, 6)),
    "embedding_layer_norm": (TokenPair, lambda: torch.randint(0, 10, (2, 5))),
}


def _param_groups(cg: fxprune.ChannelGraph) -> dict:
    return {g.id: (g.size, g.mixing, {(m.name, m.dim): m.unit.tolist() for m in g.members
                                      if m.kind != "node"}) for g in cg.groups}


def _build(name: str, functional: bool) -> tuple[nn.Module, torch.Tensor]:
    make, inp = CASES[name]
    torch.manual_seed(0)
    model = make(functional).eval()
    for m in model.modules():  # random statistics: a wrongly selected entry shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model, inp()


@pytest.mark.parametrize("name", sorted(CASES))
def test_functional_form_couples_like_its_module(name: str) -> None:
    module_form, x = _build(name, functional=False)
    functional_form, _ = _build(name, functional=True)
    want = _param_groups(fxprune.analyze(module_form, x))
    got = _param_groups(fxprune.analyze(functional_form, x))
    assert want and got == want


@pytest.mark.parametrize("name", sorted(CASES))
def test_functional_form_dead_units_are_exact(name: str) -> None:
    model, x = _build(name, functional=True)
    res = fxprune.dead_channel_plan(model, x, fraction=0.5)
    if name == "embedding_layer_norm":  # every group passes the LayerNorm: none is exact
        assert res.plan.num_removed == 0
        return
    assert res.plan.num_removed > 0
    assert fxprune.verify(model, res, x) <= RTOL
    calls = [n.target for n in res.module.graph.nodes if n.op == "call_function"]
    assert F.conv2d in calls or torch.conv2d in calls  # still the functional form


def test_batch_statistics_mark_the_other_dims_mixing() -> None:
    """F.batch_norm(training=True) normalises over every dim but 1: a group through those
    dims is prunable but not exact (a weight-standardised conv's input channels)."""

    class BatchStats(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.batch_norm(self.fc1(x).unsqueeze(1), None, None, training=True).squeeze(1)
            return self.fc2(h)

    cg = fxprune.analyze(BatchStats().eval(), torch.randn(3, 4))
    hidden = next(g for g in cg.groups if g.id == "fc1.weight:0")
    assert hidden.mixing


def test_subclass_that_keeps_forward_stays_a_leaf() -> None:
    from torchvision.models.video.resnet import Conv3DSimple

    class Overrides(nn.Conv2d):
        def forward(self, x):
            return F.conv2d(x, self.weight * 2, self.bias, self.stride, self.padding)

    class OverridesHelper(nn.Conv2d):
        def _conv_forward(self, x, weight, bias):
            return super()._conv_forward(x, weight.flip(0), bias)

    assert module_rule_class(Conv3DSimple(3, 4)) is nn.Conv3d
    assert module_rule_class(Overrides(3, 4, 1)) is None
    assert module_rule_class(OverridesHelper(3, 4, 1)) is None
    x = torch.randn(1, 3, 4, 6, 6)
    net = nn.Sequential(Conv3DSimple(3, 4), nn.ReLU(), Conv3DSimple(4, 2))
    called = {n.target for n in fxprune.trace(net, x).graph.nodes if n.op == "call_module"}
    assert called == {"0", "1", "2"}
    flat = nn.Sequential(nn.Conv2d(3, 4, 1), Overrides(4, 4, 1), OverridesHelper(4, 4, 1))
    gm = fxprune.trace(flat, torch.randn(1, 3, 5, 5))
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert called == {"0"}  # the overriding subclasses are traced into
    cg = fxprune.analyze(flat, torch.randn(1, 3, 5, 5), warn=False)
    assert any(r.kind == "barrier" for fg in cg.frozen for r in fg.reasons)  # flip: no guess
