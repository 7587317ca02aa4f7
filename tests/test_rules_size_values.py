"""A dim whose size the model uses as a value is frozen; sizes used as shapes are not.

``y / C ** 0.5`` with C read from ``y.shape`` (RAFT's correlation scale) computes with
the channel count: pruning those channels would divide by the new count while the
dead-unit oracle divides by C. The analysis must freeze that dim and say why, on every
way of reading a size (``x.shape[d]``, unpacking, ``x.size(d)``), and only where the
size reaches tensor values, not where it only reshapes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxprune

X = torch.randn(2, 3, 5, 5)


class SizeAsValue(nn.Module):
    """``a``'s channel count only reshapes (view with sizes read from the shape): prunable.
    ``b``'s channel count C divides values (``read`` picks how it is read): frozen."""

    def __init__(self, read: str = "unpack") -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 8, 1), nn.Linear(8, 2)
        self.read = read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.a(x))
        n, c0, h, w = f.shape
        y = self.b(f.flatten(2).view(n, c0, h, w))
        if self.read == "unpack":
            _, c, _, _ = y.shape
        elif self.read == "index":
            c = y.shape[-3]
        else:
            c = y.size(1)
        return self.fc((y / c ** 0.5).mean((2, 3)))


def _run_and_check(model: nn.Module, frontend: str) -> fxprune.ChannelGraph:
    cg = fxprune.analyze(model, X, frontend=frontend)
    res = fxprune.dead_channel_plan(model, X, fraction=0.5, seed=0, frontend=frontend)
    assert res.plan.num_removed > 0
    assert fxprune.verify(model, res, X) <= 1e-5
    return cg


def _group_of(cg: fxprune.ChannelGraph, param: str):
    return [g for g in cg.groups if any(m.key == f"p:{param}" and m.dim == 0 for m in g.params())]


@pytest.mark.parametrize("read", ["unpack", "index", "size"])
def test_a_size_used_as_a_value_freezes_its_dim(read: str) -> None:
    cg = _run_and_check(SizeAsValue(read).eval(), "fx")
    assert not _group_of(cg, "b.weight")
    frozen = next(f for f in cg.frozen if f.id == "b.weight:0")
    assert "used as a value" in frozen.describe()
    assert _group_of(cg, "a.weight")  # its size only reshapes: still prunable


def test_export_bakes_the_size_so_the_oracle_agrees() -> None:
    """Static torch.export turns ``c ** 0.5`` into a constant: the pruned module keeps
    dividing by the original C, exactly as the oracle (the zeroed original) does."""
    cg = _run_and_check(SizeAsValue().eval(), "export")
    assert _group_of(cg, "b.weight")


def test_size_used_only_as_a_shape_is_not_frozen() -> None:
    from fxprune.rules.size_values import sizes_used_as_values

    gm = fxprune.trace(SizeAsValue().eval(), X, frontend="fx")
    uses = {(x.name, d) for x, d, _, _ in sizes_used_as_values(gm.graph)}
    assert uses == {("b", 1)}
