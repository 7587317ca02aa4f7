"""l1-filter (Li et al. 2017): filter-L1 scores, block-internal groups, per-layer
ratios and skips, and the published presets' parameter / FLOP reductions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fxprune
from fxprune.errors import FxPruneError
from fxprune.models import get_model
from fxprune.passes.l1_filter import conv_layers, l1_filter_criterion
from fxprune.passes.presets import PRESETS, get_preset

X = torch.randn(1, 3, 32, 32)


def _reductions(model: torch.nn.Module, res: fxprune.PruneResult) -> tuple[float, float]:
    c0, c1 = fxprune.count(model, X), fxprune.count(res.module, X)
    return 100 * (1 - c1.params / c0.params), 100 * (1 - c1.macs / c0.macs)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_matches_the_published_reductions(name: str) -> None:
    preset = get_preset(name)
    model = get_model(preset.model).eval()
    res = fxprune.prune(model, X, criterion="l1-filter", preset=name)
    params, flops = _reductions(model, res)
    assert params == pytest.approx(preset.published[0], abs=1.5), (params, flops)
    assert flops == pytest.approx(preset.published[1], abs=1.5), (params, flops)


def test_vgg16_a_widths() -> None:
    model = get_model("vgg16").eval()
    res = fxprune.prune(model, X, criterion="l1-filter", preset="vgg16-a")
    widths = [w for _, w in conv_layers(fxprune.analyze(res.module, X))]
    assert widths == [32, 64, 128, 128, 256, 256, 256, 256, 256, 256, 256, 256, 256]


def test_scores_are_the_producer_filters_l1_only() -> None:
    torch.manual_seed(0)
    model = get_model("resnet20").eval()
    cg = fxprune.analyze(model, X)
    scores = l1_filter_criterion(cg).scores
    expected = sorted(f"layer{s}.{b}.conv1.weight:0" for s in (1, 2, 3) for b in range(3))
    assert sorted(scores) == expected  # residual streams are left alone
    w = model.layer2[1].conv1.weight.detach()
    np.testing.assert_allclose(scores["layer2.1.conv1.weight:0"],
                               w.abs().sum((1, 2, 3)).double().numpy(), rtol=1e-6)
    with_stream = l1_filter_criterion(cg, prune_residual=True).scores
    stem = model.conv1.weight.detach().abs().sum((1, 2, 3)).double().numpy()
    np.testing.assert_allclose(with_stream["conv1.weight:0"][:16], stem, rtol=1e-6)


def test_layer_ratios_and_skip_by_number_or_name() -> None:
    """Layer 2 = layer1.0.conv1; kept = int(C * (1 - p)): 16 * 0.9 = 14.4 -> 14."""
    model = get_model("resnet20").eval()
    res = fxprune.prune(model, X, criterion="l1-filter",
                        layer_ratios={2: 0.1, "layer2.0.conv1": 0.5, 4: 0.5}, skip=[4])
    assert {g: res.plan.kept(g) for g in res.plan.removed} == {
        "layer1.0.conv1.weight:0": 14, "layer2.0.conv1.weight:0": 16}
    w = model.layer1[0].conv1.weight.detach().abs().sum((1, 2, 3))
    assert list(res.plan.removed["layer1.0.conv1.weight:0"]) == sorted(w.argsort()[:2].tolist())
    assert res.module.get_submodule("layer1.0.conv1").out_channels == 14
    assert res.module(X).shape == (1, 10)


def test_plain_ratio_prunes_only_block_internal_groups() -> None:
    model = get_model("resnet20").eval()
    res = fxprune.prune(model, X, ratio=0.5, criterion="l1-filter")
    assert all(".conv1.weight:0" in g and g != "conv1.weight:0" for g in res.plan.removed)
    assert len(res.plan.removed) == 9


def test_bad_configurations_say_what_to_do() -> None:
    model = get_model("resnet20").eval()
    with pytest.raises(FxPruneError, match="for get_model\\('resnet56'\\)"):
        fxprune.prune(model, X, criterion="l1-filter", preset="resnet56-a")
    with pytest.raises(FxPruneError, match="unknown l1-filter preset"):
        fxprune.prune(model, X, criterion="l1-filter", preset="resnet57")
    with pytest.raises(FxPruneError, match="residual stream"):
        fxprune.prune(model, X, criterion="l1-filter", layer_ratios={3: 0.5})
    with pytest.raises(FxPruneError, match="numbered 1..19"):
        fxprune.prune(model, X, criterion="l1-filter", layer_ratios={20: 0.5})
