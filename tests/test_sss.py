"""SSS depth pruning: zero-scaled residual blocks are removed and nothing else changes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from fxprune.errors import FxPruneError
from fxprune.models import get_model
from fxprune.models.cifar_resnet import BasicBlock
from fxprune.passes.remove_branches import remove_branches
from fxprune.passes.sss import block_scales, train_sss
from fxprune.passes.sss_blocks import attach_block_scales

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _scaled_resnet20(width: int = 8) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = get_model("resnet20", width=width)
    attach_block_scales(model, (BasicBlock,))
    return model.eval(), block_scales(model)


def _run_and_check(model: nn.Module, zero: list[str]) -> fxprune.PruneResult:
    """Zero the scales of ``zero``; pruning must drop exactly those blocks, keep the
    output (<= 1e-6) and shrink the module."""
    lams = block_scales(model)
    with torch.no_grad():
        for name in zero:
            lams[name].zero_()
    res = fxprune.prune(model, X[:1], criterion="sss")
    assert set(res.plan.removed_blocks) == set(zero)
    assert res.plan.num_removed == 0
    with torch.no_grad():
        torch.testing.assert_close(res.module.eval()(X), model(X), rtol=0, atol=1e-6)
    before, after = fxprune.count(model, X[:1]), fxprune.count(res.module, X[:1])
    assert after.params < before.params and after.macs < before.macs
    return res


def test_zero_scaled_blocks_are_removed_exactly() -> None:
    model, _ = _scaled_resnet20()
    res = _run_and_check(model, ["layer1.1.bn2", "layer2.0.bn2", "layer3.2.bn2"])
    names = {n for n, _ in res.module.named_modules()}
    assert "layer1.1.conv1" not in names and "layer2.0.conv1" not in names
    assert "layer1.0.conv1" in names
    assert sum(isinstance(m, nn.Conv2d) for m in res.module.modules()) == 19 - 2 * 3


def test_the_plan_replays_on_a_fresh_copy() -> None:
    model, _ = _scaled_resnet20()
    res = _run_and_check(model, ["layer2.1.bn2"])
    plan = fxprune.PruningPlan.from_json(res.plan.to_json())
    again = fxprune.apply_plan(model, X[:1], plan)
    with torch.no_grad():
        torch.testing.assert_close(again.module.eval()(X), res.module(X))


def test_depth_then_channel_pruning() -> None:
    """A depth-pruned module is an ordinary GraphModule: channel pruning works on it."""
    model, _ = _scaled_resnet20()
    res = _run_and_check(model, ["layer1.2.bn2", "layer3.1.bn2"])
    res2 = fxprune.prune(res.module, X[:1], ratio=0.5, criterion="l1")
    assert res2.plan.num_removed > 0
    assert res2.module(X).shape == (2, 10)
    with torch.no_grad():
        assert fxprune.verify(res.module, res2, X) < 1e-5


def test_train_sss_reaches_exact_zeros_and_prunes_them() -> None:
    torch.manual_seed(0)
    model = get_model("resnet20", width=4)
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(3)]
    lams = train_sss(model, data, epochs=1, lr=0.1, gamma=5.0, block_types=(BasicBlock,),
                     progress=False)
    assert set(lams) == {f"layer{s}.{b}.bn2" for s in (1, 2, 3) for b in range(3)}
    zero = [n for n, v in lams.items() if float(v.detach()) == 0.0]
    assert zero, {n: float(v.detach()) for n, v in lams.items()}
    res = fxprune.prune(model.eval(), X[:1], criterion="sss")
    assert set(res.plan.removed_blocks) == set(zero)
    with torch.no_grad():
        torch.testing.assert_close(res.module.eval()(X), model(X), rtol=0, atol=1e-6)


def test_errors_name_the_module_and_the_fix() -> None:
    model, _ = _scaled_resnet20()
    gm = fxprune.trace(model, X[:1])
    with pytest.raises(FxPruneError, match="no call of module 'layer9'"):
        remove_branches(gm, ["layer9"])
    with pytest.raises(FxPruneError, match="not elementwise"):
        remove_branches(gm, ["layer1.0.bn1"])  # bn1 -> relu -> conv2: no add
    with pytest.raises(FxPruneError, match="train_sss"):
        fxprune.prune(get_model("resnet20").eval(), X[:1], criterion="sss")


def test_remove_branches_leaves_its_input_alone() -> None:
    model, _ = _scaled_resnet20()
    gm = fxprune.trace(model, X[:1])
    code, params = gm.code, sum(p.numel() for p in gm.parameters())
    out = remove_branches(gm, ["layer1.0.bn2"])
    assert gm.code == code and sum(p.numel() for p in gm.parameters()) == params
    assert sum(p.numel() for p in out.parameters()) < params
    assert hasattr(model.layer1[0], "conv1")
    # a plain (unscaled) branch end works too: with bn2's affine zeroed the branch is 0
    plain = get_model("resnet20").eval()
    with torch.no_grad():
        plain.layer1[0].bn2.weight.zero_()
        plain.layer1[0].bn2.bias.zero_()
    out2 = remove_branches(fxprune.trace(plain, X[:1]), ["layer1.0.bn2"])
    assert "layer1_0_conv1" not in out2.code
    with torch.no_grad():
        torch.testing.assert_close(out2(X), plain(X), rtol=0, atol=1e-6)
