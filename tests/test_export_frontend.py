"""The torch.export frontend: ATen graphs through analysis, shrink and the oracle."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import fxprune

X = torch.randn(1, 3, 64, 64)


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18().eval()


def _run_and_check(model: nn.Module, x=X, fraction: float = 0.5):
    """Dead-channel plan on the export frontend; the pruned module equals the oracle."""
    res = fxprune.dead_channel_plan(model, x, fraction, frontend="export")
    assert res.graph.frontend == "export"
    assert res.plan.num_removed > 0
    assert fxprune.verify(model, res, x) <= 1e-5
    return res


def test_resnet18_groups_match_fx() -> None:
    model = _resnet18()
    ex = fxprune.analyze(model, X, frontend="export")
    fx_ = fxprune.analyze(model, X, frontend="fx")
    assert sorted(g.size for g in ex.groups) == sorted(g.size for g in fx_.groups)
    assert not [fg for fg in ex.frozen if fg.barrier]


def test_resnet18_dead_channel_exact() -> None:
    _run_and_check(_resnet18())
