"""Tests for passes/unstructured.py: exact sparsity, persistence under SGD, fold/export, JSON."""
from __future__ import annotations

import io

import pytest
import torch
from fxprune.passes.unstructured import (
    Mask,
    MaskPlan,
    apply_masks,
    fold,
    iterative_sparsity,
    magnitude_masks,
    sparsity_report,
    sparsity_table,
)
from torch import nn
from torch.nn.utils import parametrize

from fxprune.errors import PlanMismatchError


class TinyNet(nn.Module):
    """Two convs (one grouped), BN, and a linear head: conv-only vs conv+linear scope."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def _net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def _weights(model: nn.Module, layers: str) -> dict[str, torch.Tensor]:
    types = (nn.Conv2d,) if layers == "conv" else (nn.Conv2d, nn.Linear)
    return {f"{n}.weight": m.weight.detach()
            for n, m in model.named_modules() if isinstance(m, types)}


def _train(model: nn.Module, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 6, 6, generator=g)
        y = torch.randint(0, 5, (4,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _run_and_check(model: nn.Module, sparsity: float, scope: str, layers: str) -> MaskPlan:
    """Prune, then check the zero count is exact and only the smallest |w| went."""
    before = {k: v.clone() for k, v in _weights(model, layers).items()}
    plan = magnitude_masks(model, sparsity, scope=scope, layers=layers)
    apply_masks(model, plan)
    after = _weights(model, layers)
    groups = [list(before)] if scope == "global" else [[k] for k in before]
    for names in groups:
        n = sum(before[k].numel() for k in names)
        zeros = sum(int((after[k] == 0).sum()) for k in names)
        assert zeros == int(sparsity * n + 0.5), (names, zeros, n)
        pruned = torch.cat([before[k][after[k] == 0].abs() for k in names])
        kept = torch.cat([before[k][after[k] != 0].abs() for k in names])
        if len(pruned) and len(kept):
            assert pruned.max() <= kept.min()
    return plan


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("layers", ["conv", "conv+linear"])
@pytest.mark.parametrize("sparsity", [0.0, 0.29, 0.5, 0.9])
def test_exact_sparsity(scope: str, layers: str, sparsity: float) -> None:
    model = _net()
    _run_and_check(model, sparsity, scope, layers)
    if layers == "conv":
        assert int((model.fc.weight == 0).sum()) == 0
        assert not parametrize.is_parametrized(model.fc)


def test_ties_are_broken_by_position() -> None:
    model = nn.Conv2d(2, 2, 1)
    nn.init.constant_(model.weight, 0.5)
    apply_masks(model, magnitude_masks(model, 0.5))
    assert model.weight.flatten().tolist() == [0.0, 0.0, 0.5, 0.5]


def test_masks_survive_sgd_momentum_weight_decay() -> None:
    model = _net()
    _run_and_check(model, 0.6, "global", "conv+linear")
    masks = {k: v == 0 for k, v in _weights(model, "conv+linear").items()}
    _train(model, steps=5)
    for name, w in _weights(model, "conv+linear").items():
        assert bool((w[masks[name]] == 0).all()), name
        assert bool((w[~masks[name]] != 0).all()), name  # the rest did train
    raw = model.conv1.parametrizations.weight.original
    assert bool((raw[masks["conv1.weight"]] == 0).all())


def test_iterative_rounds_reach_exact_sparsity() -> None:
    model = _net()
    n = sum(w.numel() for w in _weights(model, "conv+linear").values())
    previous = None
    for k in range(1, 5):
        target = iterative_sparsity(per_round=0.2, round=k)
        assert target == pytest.approx(1 - 0.8**k)
        apply_masks(model, magnitude_masks(model, target, layers="conv+linear"))
        zeros = {k2: w == 0 for k2, w in _weights(model, "conv+linear").items()}
        assert sum(int(z.sum()) for z in zeros.values()) == round((1 - 0.8**k) * n)
        if previous is not None:  # pruned weights stay pruned
            assert all(bool(zeros[k2][previous[k2]].all()) for k2 in zeros)
        previous = zeros
        _train(model, steps=2, seed=k)
    with pytest.raises(ValueError, match="already masked"):
        magnitude_masks(model, 0.1, layers="conv+linear")


def test_fold_then_export_gives_same_outputs(tmp_path) -> None:
    model = _net()
    apply_masks(model, magnitude_masks(model, 0.7, layers="conv+linear"))
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x).detach()
    fold(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert "conv1.weight" in model.state_dict()
    assert sparsity_report(model)[-1].zeros == round(0.7 * sum(
        w.numel() for w in _weights(model, "conv+linear").values()))
    ep = torch.export.export(model, (x,))
    torch.testing.assert_close(ep.module()(x), expected)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), verbose=False)
    out = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)


def test_json_round_trip_and_replay(tmp_path) -> None:
    model = _net()
    plan = magnitude_masks(model, 0.37, scope="layer", layers="conv+linear", exclude=("conv2",))
    back = MaskPlan.from_json(plan.to_json())
    assert back.criterion == plan.criterion and dict(back.settings) == dict(plan.settings)
    assert set(back.masks) == set(plan.masks) == {"conv1.weight", "fc.weight"}
    for name in plan.masks:
        assert torch.equal(back.masks[name], plan.masks[name])
    assert back.sparsity() == plan.sparsity() > 0.3
    plan.save(tmp_path / "plan.json")
    loaded = MaskPlan.load(tmp_path / "plan.json")
    a, b = apply_masks(_net(), plan), apply_masks(_net(), loaded)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_copy_leaves_model_alone_and_bad_input_errors() -> None:
    model = _net()
    ref = model.conv1.weight.detach().clone()
    plan = magnitude_masks(model, 0.5)
    masked = apply_masks(model, plan, copy=True)
    assert torch.equal(model.conv1.weight, ref) and not parametrize.is_parametrized(model.conv1)
    assert isinstance(masked.conv1.parametrizations.weight[0], Mask)
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_masks(model, 1.0)
    with pytest.raises(ValueError, match="exclude"):
        magnitude_masks(model, 0.5, exclude=("conv9",))
    bad = MaskPlan({"conv1.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(PlanMismatchError, match="shape"):
        apply_masks(model, bad)
    with pytest.raises(PlanMismatchError, match="nope"):
        apply_masks(model, MaskPlan({"nope.weight": torch.ones(1, dtype=torch.bool)}))


def test_report_table_renders() -> None:
    from rich.console import Console

    model = _net()
    apply_masks(model, magnitude_masks(model, 0.5, scope="layer", layers="conv"))
    rows = sparsity_report(model)
    assert [r.name for r in rows] == ["conv1.weight", "conv2.weight", "fc.weight", "total"]
    assert rows[0].sparsity == pytest.approx(0.5, abs=1 / rows[0].numel) and rows[2].zeros == 0
    assert rows[-1].zeros == sum(r.zeros for r in rows[:-1])
    console = Console(file=io.StringIO(), width=100)
    console.print(sparsity_table(rows))
    assert "conv2.weight" in console.file.getvalue()


def test_fold_copy_leaves_the_masked_original_working():
    """fold(copy=True) must not delete the weight property from the original's class."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    apply_masks(net, magnitude_masks(net, 0.5))
    x = torch.randn(1, 3, 8, 8)
    before = net(x)
    folded = fold(net, copy=True)
    assert torch.equal(net(x), before)          # the original still computes
    assert torch.equal(folded(x), before)       # the copy computes the same, unparametrized
    assert parametrize.is_parametrized(net[0]) and not parametrize.is_parametrized(folded[0])
