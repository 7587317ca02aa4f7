"""Rules for repeat / tile, Tensor.unfold, RMSNorm, var / std, and slices whose bounds are
read off shapes at run time, on both frontends (fx only where fx has the construct).

Each was a barrier in timm models that otherwise prune (HaloNet, Hiera, XCiT, ConvNeXt
with RMSNorm, PiT, BoTNet): the channels they carry through stay prunable and exact,
and what they really mix or copy stays frozen.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune

FRONTENDS = ["fx", "export"]
RTOL = 1e-5
X = torch.randn(2, 3, 8, 8)


class CopiesAndWindows(nn.Module):
    """conv (16) -> repeat over batch and space -> unfold windows over H -> var over the
    window dim -> rms_norm over W -> a crop with bounds read off the shape -> conv;
    c1's 16 channels pass through every op one to one."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)
        self.scale = nn.Parameter(torch.rand(16) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = h.repeat(1, 1, 2, 1) + torch.tile(h[:1], (2, 1, 2, 1))  # X has a batch of 2
        w = h.unfold(2, 4, 4)                          # (N, C, 4, W, 4)
        h = w.var(dim=-1, keepdim=False) + w.std(-1)   # (N, C, 4, W)
        h = F.rms_norm(h, (h.shape[-1],))              # over W: channels untouched
        h = h[:, : h.shape[1], : h.shape[2] - 1]       # whole channel range, cropped H
        return self.c2(h * self.scale.view(1, -1, 1, 1))


class RepeatedChannels(nn.Module):
    """x.repeat(1, 2, 1, 1) doubles the channels: c1's channels feed two copies each,
    so they are frozen, never pruned as if the copies were new channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c1(x)).repeat(1, 2, 1, 1))


def _keys(g) -> set[tuple[str, int]]:
    return {(m.key, m.dim) for m in g.params()}


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_channels_pass_through_repeat_unfold_var_rms_norm_and_a_dynamic_crop(frontend) -> None:
    torch.manual_seed(0)
    model = CopiesAndWindows().eval()
    cg = fxprune.analyze(model, X, frontend=frontend, warn=False)
    assert not [f for f in cg.frozen if f.barrier], [f.reasons for f in cg.frozen if f.barrier]
    (g,) = [g for g in cg.groups if ("p:c1.weight", 0) in _keys(g)]
    assert g.size == 16 and ("p:c2.weight", 1) in _keys(g) and not g.mixing
    for seed in range(3):
        res = fxprune.dead_channel_plan(model, X, fraction=0.5, seed=seed, frontend=frontend)
        assert res.plan.removed.get(g.id)
        assert fxprune.verify(model, res, X) <= RTOL, f"seed {seed}"


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_channels_repeated_twice_are_frozen(frontend) -> None:
    model = RepeatedChannels().eval()
    cg = fxprune.analyze(model, X, frontend=frontend, warn=False)
    assert not [g for g in cg.groups if ("p:c1.weight", 0) in _keys(g)]
    assert any("repeated 2 times" in r.reason for f in cg.frozen for r in f.reasons)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_rms_norm_over_channels_is_prunable_and_mixing(frontend) -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 3)
            self.weight = nn.Parameter(torch.rand(12) + 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.rms_norm(self.fc1(x), (12,), self.weight))

    cg = fxprune.analyze(Tokens().eval(), torch.randn(2, 5, 6), frontend=frontend, warn=False)
    (g,) = [g for g in cg.groups if ("p:fc1.weight", 0) in _keys(g)]
    assert g.mixing and ("p:weight", 0) in _keys(g)


class Warp(nn.Module):
    """conv (8) -> grid_sample at a fixed grid (RAFT's correlation lookup, spatial
    transformers): each channel is sampled on its own, so c1's channels stay exact."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.register_buffer("grid", torch.rand(2, 5, 6, 2) * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.grid_sample(torch.relu(self.c1(x)), self.grid, align_corners=False)
        return self.c2(h)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_grid_sample_keeps_channels_exact(frontend) -> None:
    torch.manual_seed(0)
    model = Warp().eval()
    cg = fxprune.analyze(model, X, frontend=frontend, warn=False)
    assert not [f for f in cg.frozen if f.barrier]
    (g,) = [g for g in cg.groups if ("p:c1.weight", 0) in _keys(g)]
    res = fxprune.dead_channel_plan(model, X, fraction=0.5, seed=0, frontend=frontend)
    assert res.plan.removed.get(g.id) and fxprune.verify(model, res, X) <= RTOL
