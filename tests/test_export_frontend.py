"""The torch.export frontend: ATen graphs through analysis, shrink and the oracle."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import fxprune

X = torch.randn(1, 3, 64, 64)


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18().eval()


def _run_and_check(model: nn.Module, x=X, fraction: float = 0.5):
    """Dead-channel plan on the export frontend; the pruned module equals the oracle."""
    res = fxprune.dead_channel_plan(model, x, fraction, frontend="export")
    assert res.graph.frontend == "export"
    assert res.plan.num_removed > 0
    assert fxprune.verify(model, res, x) <= 1e-5
    return res


def test_resnet18_groups_match_fx() -> None:
    model = _resnet18()
    ex = fxprune.analyze(model, X, frontend="export")
    fx_ = fxprune.analyze(model, X, frontend="fx")
    assert sorted(g.size for g in ex.groups) == sorted(g.size for g in fx_.groups)
    assert not [fg for fg in ex.frozen if fg.barrier]


def test_resnet18_dead_channel_exact() -> None:
    _run_and_check(_resnet18())


class Heads(nn.Module):
    """A ViT-style block in plain torch: view/permute heads, sdpa, split, slice, pad, layer norm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.norm = nn.LayerNorm(16)
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(16, 8)
        self.gn = nn.GroupNorm(4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gn(self.stem(x))
        x = nn.functional.pad(x, (1, 1, 1, 1))
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm(t)).reshape(b, h * w, 3, 4, c // 4).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v)
        t = t + self.proj(a.transpose(1, 2).reshape(b, h * w, c))
        u, g = self.fc1(t).chunk(2, dim=-1)
        return self.fc2(u * torch.sigmoid(g))[:, 1:].mean(1)


def test_heads_model_prunes_and_matches_the_oracle() -> None:
    torch.manual_seed(0)
    model = Heads().eval()
    res = fxprune.dead_channel_plan(model, X, 0.5, frontend="export", exact_only=False)
    assert res.plan.num_removed > 0
    with torch.no_grad():
        assert res.module(X).shape == model(X).shape
    exact = fxprune.dead_channel_plan(model, X, 0.5, frontend="export")
    assert fxprune.verify(model, exact, X) <= 1e-5
