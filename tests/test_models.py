"""Tests for fxprune.models: the papers' CIFAR models.

Golden: parameter and MAC counts (Conv2d and Linear multiply-accumulates at 32x32,
counted by forward hooks below) match the published architectures within 1%.
Equivalence: every model traces with ``torch.fx.symbolic_trace`` and the traced
module computes exactly what the eager module computes.
"""
from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from fxprune.models import get_model, list_models
from fxprune.models.cifar_resnet import CifarResNet, _depth_to_n

# name: (params, MACs), as published (Li et al. 2017, Liu et al. 2017 / 2019).
GOLDEN = {
    "resnet20": (0.270e6, 40.6e6),
    "resnet56": (0.853e6, 125.5e6),
    "resnet110": (1.728e6, 252.9e6),
    "vgg16": (14.99e6, 313.5e6),
    "vgg19": (20.04e6, 398.1e6),
    "preresnet164": (1.703e6, 247.6e6),
    "densenet40": (1.059e6, 282.9e6),
}


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of every Conv2d and Linear for one input image."""
    total = 0

    def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        per_image = out.numel() // out.shape[0]
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total += per_image * (mod.in_channels // mod.groups) * k
        else:
            total += per_image * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return total // x.shape[0]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _run_and_check(name: str, num_classes: int = 10, in_channels: int = 3, batch: int = 2,
                   **kw) -> tuple[nn.Module, torch.Tensor]:
    """Build, trace, run eager and traced on a batch; check shape and equality."""
    torch.manual_seed(0)
    model = get_model(name, num_classes=num_classes, in_channels=in_channels, **kw).eval()
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(batch, in_channels, 32, 32)
    with torch.no_grad():
        out, traced = model(x), gm(x)
    assert out.shape == (batch, num_classes)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(traced, out, rtol=0, atol=0)
    return model, out


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_params_and_macs_match_papers(name: str) -> None:
    params, macs = GOLDEN[name]
    model = get_model(name)
    got_p, got_m = n_params(model), count_macs(model, torch.randn(1, 3, 32, 32))
    assert got_p == pytest.approx(params, rel=0.01), f"{name}: {got_p / 1e6:.3f}M params"
    assert got_m == pytest.approx(macs, rel=0.01), f"{name}: {got_m / 1e6:.1f}M MACs"


@pytest.mark.parametrize("name", list_models())
def test_traces_and_output_shape(name: str) -> None:
    _run_and_check(name, num_classes=7)


def test_resnet_one_channel_input_for_digits() -> None:
    model, _ = _run_and_check("resnet20", num_classes=10, in_channels=1)
    assert model.conv1.in_channels == 1


def test_option_a_shortcut_is_parameter_free_and_pads_channels_in_the_middle() -> None:
    model = get_model("resnet20")
    assert not [m for m in model.modules() if isinstance(m, nn.Conv2d)
                and m.kernel_size == (1, 1)], "option A must not add projection convs"
    block = model.layer2[0]  # 16 -> 32 channels, stride 2
    x = torch.randn(2, 16, 32, 32)
    sc = block._shortcut(x)
    assert sc.shape == (2, 32, 16, 16)
    torch.testing.assert_close(sc[:, 8:24], x[:, :, ::2, ::2])
    assert sc[:, :8].abs().sum() == 0 and sc[:, 24:].abs().sum() == 0
    # fx sees the slice and the pad as graph ops, not an opaque module
    targets = {str(n.target) for n in torch.fx.symbolic_trace(model).graph.nodes}
    assert any("pad" in t for t in targets) and any("getitem" in t for t in targets)


def test_option_b_shortcut_adds_projections() -> None:
    a, b = get_model("resnet20"), get_model("resnet20", shortcut="B")
    extra = n_params(b) - n_params(a)
    # two projections: 16->32 and 32->64 1x1 convs, each with a BN (2 params per channel)
    assert extra == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    _run_and_check("resnet20", shortcut="B")


def test_width_and_depth_arguments_change_the_model() -> None:
    assert n_params(get_model("resnet20", width=32)) > 3.5 * n_params(get_model("resnet20"))
    assert n_params(get_model("resnet32")) > n_params(get_model("resnet20"))
    assert get_model("densenet40", growth_rate=6).fc.in_features == 12 + 3 * 12 * 6
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(_depth_to_n(21))


def test_kaiming_init_scale() -> None:
    conv = get_model("vgg19").features[3]  # 64 -> 64, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)


def test_get_model_unknown_name_lists_models() -> None:
    with pytest.raises(ValueError, match="resnet56"):
        get_model("resnet57")
    assert set(GOLDEN) <= set(list_models())
