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


@pytest.mark.parametrize("batch_first", [True, False])
def test_pruned_attention_counts_as_its_own_linears_and_matmuls(batch_first):
    """A pruned MHA (heads, input and output widths apart) kept whole in the graph counts
    exactly what its forward does when traced through: q, k, v, out projections and the
    two attention matmuls."""
    from torch import nn

    from fxprune.nn import PrunedMultiheadAttention

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = PrunedMultiheadAttention(32, 24, num_heads=3, head_dim=8,
                                                 batch_first=batch_first)

        def forward(self, q, kv):
            return self.attn(q, kv, kv)[0]

    q, kv = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    model = Attn().eval()
    whole = fxprune.trace(model, (q, kv), leaf_modules=[PrunedMultiheadAttention])
    assert any(n.op == "call_module" and n.target == "attn" for n in whole.graph.nodes)
    through = fxprune.count(model, (q, kv)).macs
    assert through == 2 * (5 * 32 * 24 + 2 * 7 * 32 * 24 + 5 * 24 * 24 + 2 * 5 * 7 * 24)
    assert fxprune.count(whole, (q, kv)).macs == through
