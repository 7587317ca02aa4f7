"""The meta shape run (with its closed-form fast paths) gives exactly the shapes and
dtypes of a real run with torch.fx's ShapeProp."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from fxprune.meta_shapes import fast_function, fast_method, fast_module
from fxprune.trace import trace


def _shapes(gm):
    out = {}
    for n in gm.graph.nodes:
        m = n.meta.get("tensor_meta")
        if isinstance(m, TensorMetadata):
            out[n.name] = (tuple(m.shape), m.dtype)
        elif isinstance(m, (list, tuple)):
            out[n.name] = tuple((tuple(t.shape), t.dtype) for t in m if isinstance(t, TensorMetadata))
    return out


def _real_shapes(gm, x):
    gm = torch.fx.GraphModule(gm, gm.graph)
    for n in gm.graph.nodes:
        n.meta.pop("tensor_meta", None)
    with torch.no_grad():
        ShapeProp(gm).propagate(x)
    return _shapes(gm)


class Ops(nn.Module):
    """Every fast path at least once, with awkward arguments (ceil_mode, padding, broadcasting)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv_d = nn.Conv2d(8, 8, 3, dilation=2, padding="valid", groups=8)
        self.c1 = nn.Conv1d(8, 4, 5, stride=3)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avg = nn.AvgPool2d(2, ceil_mode=True, padding=1)
        self.ada = nn.AdaptiveAvgPool2d((None, 3))
        self.lin = nn.Linear(3, 5)
        self.bn = nn.BatchNorm2d(8)
        self.ln = nn.LayerNorm(5)

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = F.relu(y) + y.mean((2, 3), keepdim=True) * 2
        y = self.conv_d(self.pool(y))
        z = self.avg(y) / 3
        a = self.ada(z)
        s = torch.sum(a, 1, keepdim=True) - torch.amax(a, dim=-1, keepdim=True)
        t = self.ln(self.lin(a))
        u = torch.cat([t, t.sigmoid()], dim=-1).softmax(-1)
        v = self.c1(y.flatten(2))
        w = F.adaptive_avg_pool2d(y, 1).sum() + a.div(2) + (x.shape[1] / a)
        return s, u, v, w, (torch.roll(y, 1, 2) * y).mul(a.mean()), self.avg(x), self.pool(x)


@pytest.mark.parametrize("size", [31, 32])
def test_fast_paths_match_a_real_run(size):
    model = Ops().eval()
    x = torch.randn(2, 3, size, size)
    gm = trace(model, x)
    assert _shapes(gm) == _real_shapes(gm, x)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "densenet121", "convnext_tiny",
                                  "swin_t", "swin_v2_t", "vit_b_32"])
def test_torchvision_shapes_match_a_real_run(name):
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, 224, 224)
    gm = trace(model, x)
    assert _shapes(gm) == _real_shapes(gm, x)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("call", [dict(), dict(need_weights=False), dict(average_attn_weights=False)])
def test_multihead_attention_shapes(batch_first, call):
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)

        def forward(self, q, kv):
            return self.attn(q, kv, kv, **call)

    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    gm = trace(Attn().eval(), (q, kv))
    gm2 = torch.fx.GraphModule(gm, gm.graph)
    for n in gm2.graph.nodes:
        n.meta.pop("tensor_meta", None)
    ShapeProp(gm2).propagate(q, kv)
    assert _shapes(gm) == _shapes(gm2)


def test_fast_paths_are_used_and_decline_what_they_cannot_do():
    assert fast_module(nn.Conv2d(3, 3, 1)) is not None and fast_function(torch.add) is not None
    assert fast_method("mean") is not None

    class MyConv(nn.Conv2d):  # a subclass may override forward: no fast path
        pass

    assert fast_module(MyConv(3, 3, 1)) is None
    meta = torch.empty(2, 3, device="meta")
    assert fast_function(torch.add)(meta, torch.empty(4, device="meta")) is None  # not broadcastable
    assert fast_method("sum")(torch.empty(2, dtype=torch.int64, device="meta")) is None  # int64 result
    assert fast_function(torch.add)(meta, meta).shape == (2, 3)
