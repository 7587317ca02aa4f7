"""Every criterion through ``fxprune.prune`` on a residual CIFAR ResNet and a torchvision model.

Each run must prune something (units or blocks), give a module with the original
output shape and finite values, and leave the user's model exactly as it was.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune.criteria import CRITERIA, get_criterion
from fxprune.errors import FxPruneError
from fxprune.models import get_model
from fxprune.models.cifar_resnet import BasicBlock
from fxprune.passes.sss_blocks import attach_block_scales

NAMES = ["l1", "l2", "random", "l1-filter", "slimming", "sss", "thinet", "lasso", "taylor"]


def _resnet20() -> tuple[nn.Module, int, dict]:
    """CIFAR ResNet-20 (option-A shortcuts): residual streams across stages."""
    return get_model("resnet20"), 32, dict(block_types=(BasicBlock,))


def _mobilenet() -> tuple[nn.Module, int, dict]:
    """torchvision MobileNetV2 at width 0.25: depthwise convs, inverted residuals."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    m = torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10)
    return m, 32, dict(block_types=(InvertedResidual,), branch_end="conv")


def _setup(criterion: str, model: nn.Module, sss_kw: dict) -> dict:
    """Make the model something the criterion can act on; return its extra kwargs."""
    g = torch.Generator().manual_seed(1)
    if criterion == "slimming":  # fresh BNs all have gamma = 1: spread them out
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) - 0.5)
        return {"percent": 0.3}
    if criterion == "sss":
        lams = attach_block_scales(model, sss_kw["block_types"],
                                   branch_end=sss_kw.get("branch_end"))
        name = [n for n in lams if n.endswith(".1")][0]  # a block with an identity shortcut
        with torch.no_grad():
            lams[name].zero_()
    return {}


def _run_and_check(make, criterion: str) -> None:
    torch.manual_seed(0)
    model, size, sss_kw = make()
    model.eval()
    kw = _setup(criterion, model, sss_kw)
    x = torch.randn(1, 3, size, size)
    calibration = [(torch.randn(4, 3, size, size), torch.randint(0, 10, (4,))) for _ in range(2)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model(x)
    res = fxprune.prune(model, x, ratio=0.3, criterion=criterion, calibration=calibration,
                        num_batches=2, progress=False, **kw)
    assert res.plan.num_removed > 0 or res.plan.removed_blocks, f"{criterion} pruned nothing"
    out = res.module.eval()(x)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert fxprune.count(res.module, x).params < fxprune.count(model, x).params
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{criterion} changed the user's {k}"
    assert not any(p.grad is not None for p in model.parameters())
    assert not model.training


@pytest.mark.parametrize("criterion", NAMES)
@pytest.mark.parametrize("make", [_resnet20, _mobilenet], ids=["resnet20", "mobilenet_v2"])
def test_every_criterion_prunes_and_runs(make, criterion: str) -> None:
    _run_and_check(make, criterion)


def test_every_criterion_is_registered() -> None:
    get_criterion("l1")
    assert set(NAMES) <= set(CRITERIA)


@pytest.mark.parametrize("criterion", ["thinet", "lasso", "taylor"])
def test_data_driven_criteria_ask_for_calibration(criterion: str) -> None:
    model = get_model("resnet20").eval()
    with pytest.raises(FxPruneError, match="calibration"):
        fxprune.prune(model, torch.randn(1, 3, 32, 32), criterion=criterion)


def test_calibration_batches_may_be_bare_inputs_or_a_generator() -> None:
    """A generator of input tensors (no targets, no len) works, and stops at num_batches."""
    model = get_model("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    drawn = []

    def batches():
        while True:
            drawn.append(1)
            yield torch.randn(2, 3, 32, 32)

    res = fxprune.prune(model, x, criterion="taylor", calibration=batches(), num_batches=3,
                        progress=False)
    assert res.plan.num_removed > 0
    assert len(drawn) == 3
