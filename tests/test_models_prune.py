"""Every paper CIFAR model prunes with the core, option-A zero-pad shortcuts included:
dead-channel equivalence holds and an L1 prune at ratio 0.5 runs with fewer MACs."""
from __future__ import annotations

import pytest
import torch

import fxprune
from fxprune.models import get_model

X = torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16", "vgg19", "preresnet164", "densenet40"])
def test_paper_model_prunes_exactly(name):
    torch.manual_seed(0)
    model = get_model(name).eval()
    dead = fxprune.dead_channel_plan(model, X, fraction=0.5, seed=0)
    assert dead.plan.num_removed > 0
    assert fxprune.verify(model, dead, X) <= 1e-5
    res = fxprune.prune(model, X, ratio=0.5)
    assert res.module(X).shape == (2, 10)
    assert fxprune.count(res.module, X).macs < fxprune.count(model, X).macs


def test_option_a_shortcut_pad_widths_shrink():
    """Pruning a residual stream that passes a zero-pad shortcut rewrites the pad widths."""
    torch.manual_seed(0)
    model = get_model("resnet20").eval()
    res = fxprune.prune(model, X, ratio=0.5)
    pads = [n for n in res.module.graph.nodes if n.op == "call_function" and n.target.__name__ == "pad"]
    assert pads, "option-A shortcuts trace to F.pad"
    before = [n for n in fxprune.trace(model, X).graph.nodes
              if n.op == "call_function" and n.target.__name__ == "pad"]
    assert [p.args[1] for p in pads] != [p.args[1] for p in before]
    assert res.module(X).shape == (2, 10)
