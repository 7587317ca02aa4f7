"""Budgets: ``target_macs`` / ``target_params`` keep at most that fraction, within 2%."""
from __future__ import annotations

import pytest
import torch
import torchvision

import fxprune
from fxprune.models import get_model


def _run_and_check(model: torch.nn.Module, size: int, target: float, what: str = "macs",
                   criterion: str = "l1", **kw) -> fxprune.PruneResult:
    x = torch.randn(1, 3, size, size)
    res = fxprune.prune(model.eval(), x, criterion=criterion, **{f"target_{what}": target}, **kw)
    c0, c1 = fxprune.count(model, x), fxprune.count(res.module, x)
    kept = getattr(c1, what) / getattr(c0, what)
    assert target - 0.02 <= kept <= target + 1e-9, (what, kept)
    assert res.module(x).shape == model(x).shape
    return res


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_target_macs_on_resnet20(target: float) -> None:
    torch.manual_seed(0)
    _run_and_check(get_model("resnet20"), 32, target)


def test_target_params_on_resnet20() -> None:
    torch.manual_seed(0)
    _run_and_check(get_model("resnet20"), 32, 0.5, what="params")


def test_target_macs_on_torchvision_resnet18() -> None:
    torch.manual_seed(0)
    _run_and_check(torchvision.models.resnet18(num_classes=10), 64, 0.5)


def test_budget_with_a_reconstructing_criterion() -> None:
    """ThiNet's rescaling is computed for the units the bisection settled on."""
    torch.manual_seed(0)
    calibration = [torch.randn(4, 3, 32, 32)]
    res = _run_and_check(get_model("resnet20"), 32, 0.7, criterion="thinet",
                         calibration=calibration, progress=False)
    assert res.plan.num_removed > 0
