"""fxprune.count against the MACs and parameter counts torchvision publishes in its
weights' metadata (``_ops`` is GMACs despite its "GFLOPS" label, at 224x224)."""
from __future__ import annotations

import pytest
import torch
import torchvision

import fxprune

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0", "vit_b_16"]


@pytest.mark.parametrize("name", MODELS)
def test_count_matches_torchvision_meta(name):
    meta = torchvision.models.get_model_weights(name).DEFAULT.meta  # no download
    model = torchvision.models.get_model(name, weights=None).eval()
    c = fxprune.count(model, (torch.randn(1, 3, 224, 224),))
    assert c.params == meta["num_params"]
    assert c.macs / 1e9 == pytest.approx(meta["_ops"], rel=0.01)


def test_count_scales_with_batch_and_ignores_the_input_values():
    model = torchvision.models.resnet18().eval()
    one = fxprune.count(model, (torch.zeros(1, 3, 64, 64),))
    four = fxprune.count(model, (torch.randn(4, 3, 64, 64),))
    assert four.macs == 4 * one.macs and four.params == one.params
