"""rewrite.copy_module: models that cache computed (non-leaf) tensors in plain attributes
(timm's TinyViT attention-bias cache) can be copied for the oracle and for shrink."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fxprune
from fxprune.rewrite import copy_module


class CachedBias(nn.Module):
    """A conv whose eval-mode bias is computed once and cached in a dict, as TinyViT does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)
        self.scale = nn.Parameter(torch.ones(8))
        self.cache: dict[str, torch.Tensor] = {"cpu": self.scale * 2}  # has a grad_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.conv(x)) * self.scale.view(1, -1, 1, 1))


def test_plain_deepcopy_refuses_and_copy_module_copies() -> None:
    model = CachedBias()
    with pytest.raises(RuntimeError, match="deepcopy"):
        copy.deepcopy(model)
    twin = copy_module(model)
    assert torch.equal(twin.cache["cpu"], model.cache["cpu"]) and twin.cache["cpu"].is_leaf
    assert twin.conv.weight is not model.conv.weight


def test_prune_checks_a_model_with_a_tensor_cache() -> None:
    model, x = CachedBias().eval(), torch.randn(1, 3, 8, 8)
    res = fxprune.prune(model, x, ratio=0.5, frontend="fx")
    assert res.oracle_diff is not None and res.oracle_diff < 1e-5
    assert res.module.conv.out_channels == 4
