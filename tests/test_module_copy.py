"""module_copy.deep_copy_module gives what copy.deepcopy gives: independent tensors, shared
aliases and ties, fresh mutable attributes, hooks, and custom copy protocols honoured."""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn

from fxprune.module_copy import deep_copy_module


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = self.a  # one module under two names
        self.head = nn.Linear(4, 4, bias=False)
        self.head.weight = self.a.weight  # a tie
        self.history: list[int] = [1, 2]
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)  # its own __setstate__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(x)) + self.attn(x, x, x)[0]


def test_copy_matches_deepcopy_and_is_independent() -> None:
    model = Shared().eval()
    twin, reference = deep_copy_module(model), copy.deepcopy(model)
    x = torch.randn(2, 3, 4)
    assert torch.equal(twin(x), model(x)) and torch.equal(twin(x), reference(x))
    assert twin.b is twin.a and twin.head.weight is twin.a.weight  # aliases stay aliases
    assert twin.a is not model.a and twin.a.weight is not model.a.weight
    assert twin.a.weight.data_ptr() != model.a.weight.data_ptr()
    twin.history.append(3)
    assert model.history == [1, 2]  # a mutable attribute is copied, not shared
    with torch.no_grad():
        twin.a.weight.zero_()
    assert model.a.weight.abs().sum() > 0


def test_hooks_and_training_flags_are_copied() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    calls = []
    model[0].register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    model[1].eval()
    twin = deep_copy_module(model)
    twin(torch.randn(1, 3, 8, 8))
    assert calls == ["Conv2d"] and not twin[1].training and twin[0].training
    assert twin[0]._forward_hooks is not model[0]._forward_hooks


def test_graph_module_root_goes_through_its_own_protocol() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    gm = fx.symbolic_trace(model)
    twin = deep_copy_module(gm)
    x = torch.randn(3, 4)
    assert isinstance(twin, fx.GraphModule) and torch.equal(twin(x), gm(x))
    assert twin.graph is not gm.graph
    assert twin.get_submodule("0").weight is not gm.get_submodule("0").weight
