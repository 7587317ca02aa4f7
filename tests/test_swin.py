"""torchvision Swin: the fx-wrapped window attention is pruned by heads.

torchvision computes head_dim from the input width inside an fx-wrapped
function; shrink rewrites those calls to fxprune.nn_window.window_attention
with an explicit head width, so heads, the MLP width and the residual width
all shrink, and the rewrite is exact on dead heads.
"""
from __future__ import annotations

import pytest
import torch
import torchvision

import fxprune
from fxprune.nn_window import window_attention

X = torch.randn(1, 3, 96, 96)


def _swin(name: str = "swin_t") -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name).eval()


def _attention_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function"
            and getattr(n.target, "__name__", "") in ("shifted_window_attention", "window_attention")]


def test_window_attention_matches_torchvision_exactly():
    blk = _swin().features[1][1].attn  # a shifted block
    x = torch.randn(2, 24, 24, 96)
    with torch.no_grad():
        ref = blk(x)
        out = window_attention(x, blk.qkv.weight, blk.proj.weight, blk.get_relative_position_bias(),
                               blk.window_size, blk.num_heads, blk.shift_size, qkv_bias=blk.qkv.bias,
                               proj_bias=blk.proj.bias, training=False)
    assert torch.equal(ref, out)


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_dead_heads_and_channels_are_exact(name):
    model = _swin(name)
    res = fxprune.dead_channel_plan(model, X, fraction=0.5, seed=1)
    assert res.plan.num_removed > 0
    assert fxprune.verify(model, res, X) <= 1e-5


def test_heads_shrink_and_calls_are_rewritten():
    model = _swin()
    res = fxprune.prune(model, X, ratio=0.5)
    before = [n.args[5] for n in _attention_nodes(fxprune.trace(model, X))]
    after = _attention_nodes(res.module)
    assert all(n.target is window_attention for n in after)
    assert [n.args[5] for n in after] == [max(1, h // 2) for h in before]
    assert res.module(X).shape == (1, 1000)


def test_count_matches_torchvision_published_ops():
    model = _swin()
    meta = torchvision.models.get_model_weights("swin_t").DEFAULT.meta
    macs = fxprune.count(model, torch.randn(1, 3, 224, 224)).macs
    assert abs(macs / 1e9 - meta["_ops"]) / meta["_ops"] < 0.01
