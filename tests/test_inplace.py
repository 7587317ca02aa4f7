"""In-place ops: never deleted by the rewrite, traced faithfully, coupled like their twins.

``InPlaceNet`` (toy_models) uses in-place ops as statements (``y.relu_()``, results
unused), ``+=`` on an aliased tensor, writes through a view, ``torch.relu_``,
``F.relu(inplace=True)`` and ``nn.ReLU(inplace=True)``. Pruning nothing must be
bit-identical and random dead-unit plans exact; torchvision's MViT (fx-wrapped in-place
``_add_shortcut``, result unused) must survive an empty plan.
"""
from __future__ import annotations

import operator
import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
import toy_models as T
from torch import nn

import fxprune
from fxprune.rewrite import finish
from fxprune.rules.purity import is_pure, writes_in_place

RTOL = 1e-5


def _run_and_check(model: nn.Module, x: torch.Tensor, seeds=range(4)) -> None:
    with torch.no_grad():
        want = model(x)
        assert torch.equal(fxprune.trace(model, x)(x), want)
        assert torch.equal(fxprune.prune(model, x, ratio=0.0).module(x), want)
    for seed in seeds:
        res = fxprune.dead_channel_plan(model, x, fraction=0.5, seed=seed)
        assert res.plan.num_removed > 0
        assert fxprune.verify(model, res, x) <= RTOL, f"seed {seed}"


def test_inplace_net_is_exact() -> None:
    _run_and_check(T.build("inplace"), T.example_input("inplace"))


class AliasedIadd(nn.Module):
    """``y += 1`` also changes ``alias``: a graph with ``y = y + 1`` would not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        alias = y
        y += 1.0
        y *= torch.sigmoid(alias)
        return self.fc((y + alias).mean((2, 3)))


def test_augmented_assignment_is_recorded_in_place() -> None:
    model, x = AliasedIadd().eval(), torch.randn(2, 3, 5, 5)
    targets = {n.target for n in fxprune.trace(model, x).graph.nodes}
    assert {operator.iadd, operator.imul} <= targets
    _run_and_check(model, x)


class UnusedInplaceShift(nn.Module):
    """``y.add_(self.shift)`` with its result unused must still tie ``shift`` to y's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 6, 1), nn.Linear(6, 2)
        self.shift = nn.Parameter(torch.randn(1, 6, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y.add_(self.shift)
        y.clamp_(min=-0.5)
        return self.fc(y.mean((2, 3)))


def test_unused_inplace_result_still_couples() -> None:
    model, x = UnusedInplaceShift().eval(), torch.randn(2, 3, 4, 4)
    cg = fxprune.analyze(model, x)
    (group,) = [g for g in cg.groups if g.id == "conv.weight:0"]
    assert ("shift", 1) in {(m.name, m.dim) for m in group.params()}
    _run_and_check(model, x)


def _graph_module(fn) -> fx.GraphModule:
    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            return fn(self, x)

    return fx.symbolic_trace(Wrap())


def test_finish_keeps_inplace_statements_and_drops_dead_pure_nodes() -> None:
    def body(self, x):
        y = x * 1.0
        y.relu_()            # kept: writes into y
        torch.sigmoid_(y)    # kept
        F.relu(y, True)      # kept: inplace positional
        self.act(y)          # kept: inplace module
        _ = y + 1.0          # dead and pure: dropped
        _ = y.size(0)        # dead and pure: dropped
        return y

    gm = _graph_module(body)
    x = torch.randn(3, 4)
    want = gm(x.clone())
    finish(gm)
    names = [n.target for n in gm.graph.nodes if n.op != "placeholder"]
    assert "relu_" in names and torch.sigmoid_ in names and F.relu in names and "act" in names
    assert operator.add not in names and "size" not in names
    assert torch.equal(gm(x.clone()), want)


def test_purity_table() -> None:
    gm = _graph_module(lambda self, x: F.dropout(self.act(x) + torch.relu(x), 0.1, False, True))
    by_target = {n.target: n for n in gm.graph.nodes}
    assert writes_in_place(by_target["act"], gm.act)
    assert writes_in_place(by_target[F.dropout])  # inplace=True as the 4th positional
    assert not writes_in_place(by_target[torch.relu]) and is_pure(by_target[torch.relu], gm)
    assert not is_pure(by_target[F.dropout], gm) and not is_pure(by_target["act"], gm)


def test_unknown_function_is_never_deleted() -> None:
    gm = _graph_module(lambda self, x: (torch.cumsum(x, 0), x)[1])
    node = next(n for n in gm.graph.nodes if n.target is torch.cumsum)
    assert not is_pure(node, gm)  # no rule: we do not know it has no side effect


@pytest.mark.slow
def test_mvit_v2_s_empty_plan_is_identical() -> None:
    """torchvision's MViT adds its shortcut in place through an fx-wrapped helper whose
    result nobody uses; deleting it changed the output by 1.46 (relative)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.video.mvit_v2_s().eval()
    x = torch.randn(1, 3, 16, 224, 224)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        assert torch.equal(fxprune.prune(model, x, ratio=0.0).module(x), model(x))
