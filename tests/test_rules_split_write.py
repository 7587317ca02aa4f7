"""Rules for tensor_split and for in-place writes into slices (copy_), on both frontends.

Two classes of op that torchvision's MViT puts in every block and that used to be
barriers at ATen level: ``tensor_split`` (the class token split off the tokens;
fx: ``torch.tensor_split`` / ``Tensor.tensor_split``, ATen: ``tensor_split.indices``,
``.sections``, ``.tensor_indices_or_sections``) and ``copy_`` (``attn[:, :, 1:] += b``
is recorded as ``slice`` + ``add_`` + ``copy_`` back into the slice, result unused).
Each is checked for its golden groups, exact dead-unit equivalence and the size
constants shrink rewrites; unsorted split indices and in-place ATen ops with unused
results are the ways these go wrong.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import toy_models as T

import fxprune
from fxprune.rules.purity import is_pure

FRONTENDS = ["fx", "export"]
RTOL = 1e-5


def _params_of(cg: fxprune.ChannelGraph) -> dict[frozenset, int]:
    """Each group as {frozenset of (param, dim): size}: ids differ between frontends."""
    return {frozenset((m.key, m.dim) for m in g.params()): g.size for g in cg.groups}


def _run_and_check(model: nn.Module, x: torch.Tensor, frontend: str, seeds=range(3)):
    """Empty plan bit-identical; random dead-unit plans equal to the oracle."""
    with torch.no_grad():
        want = model(x)
        assert torch.equal(fxprune.prune(model, x, ratio=0.0, frontend=frontend).module(x), want)
    for seed in seeds:
        res = fxprune.dead_channel_plan(model, x, fraction=0.5, seed=seed, frontend=frontend)
        assert res.graph.frontend == frontend
        assert res.plan.num_removed > 0
        assert fxprune.verify(model, res, x) <= RTOL, f"seed {seed}"
    return res


def _targets(gm: torch.fx.GraphModule) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op in ("call_function", "call_method")}


# ---- tensor_split ------------------------------------------------------------------

TENSOR_SPLIT_GROUPS = {
    frozenset({("p:conv1.weight", 0), ("p:conv1.bias", 0), ("p:conv_a.weight", 1),
               ("p:conv_b.weight", 1)}): 8,
    frozenset({("p:conv_b.weight", 0), ("p:conv_b.bias", 0), ("p:conv_c.weight", 1)}): 3,
    frozenset({("p:conv_a.weight", 0), ("p:conv_a.bias", 0), ("p:conv_c.weight", 0),
               ("p:conv_c.bias", 0), ("p:fc.weight", 1)}): 4,
}


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_tensor_split_groups(frontend: str) -> None:
    cg = fxprune.analyze(T.build("tensor_split"), T.example_input("tensor_split"), frontend=frontend)
    assert _params_of(cg) == TENSOR_SPLIT_GROUPS
    assert not [f for f in cg.frozen if f.barrier]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_tensor_split_prunes_exactly_and_rewrites_its_indices(frontend: str) -> None:
    model, x = T.build("tensor_split"), T.example_input("tensor_split")
    res = _run_and_check(model, x, frontend)
    # the pieces' boundaries moved: indices / sections became explicit split sizes
    removed = res.plan.removed
    assert any(removed.values())
    with torch.no_grad():
        assert res.module(x).shape == model(x).shape


class UnsortedSplit(nn.Module):
    """tensor_split(y, [5, 2]): pieces y[:5], y[5:2] (empty) and y[2:] overlap, so they
    are no offset slices of y; conv1's channels must be frozen, not split."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(5 + 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _, b = torch.tensor_split(self.conv1(x), [5, 2], dim=1)
        return self.fc(torch.cat([a.mean((2, 3)), self.conv2(b).mean((2, 3))], dim=1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_unsorted_tensor_split_indices_freeze_the_dim(frontend: str) -> None:
    model, x = UnsortedSplit().eval(), torch.randn(2, 3, 4, 4)
    cg = fxprune.analyze(model, x, frontend=frontend)
    assert not [g for g in cg.groups if any(m.key == "p:conv1.weight" for m in g.params())]
    assert any("unsorted" in r.reason for f in cg.frozen for r in f.reasons), cg.frozen
    res = fxprune.dead_channel_plan(model, x, fraction=0.5, seed=0, frontend=frontend)
    assert fxprune.verify(model, res, x) <= RTOL


class ShapeSplit(nn.Module):
    """tensor_split(t, 2, dim=-1) by a section count on the channel (last) dim of tokens,
    and by indices along the tokens: ATen's ``.sections`` and ``.indices``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(4, 3)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        u, g = self.fc1(t).tensor_split(2, dim=-1)
        cls, rest = torch.tensor_split(u * torch.sigmoid(g), [1], dim=1)
        return self.fc2(cls[:, 0] + rest.sum(1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_tensor_split_sections_of_the_last_dim(frontend: str) -> None:
    model, x = ShapeSplit().eval(), torch.randn(2, 5, 6)
    cg = fxprune.analyze(model, x, frontend=frontend)
    assert sorted(g.size for g in cg.groups) == [4]
    res = _run_and_check(model, x, frontend)
    kept = 4 - res.plan.num_removed
    halves = next(n for n in res.module.graph.nodes if n.name == "tensor_split")
    assert list(halves.args[1]) == [kept, kept]  # the section count became the new sizes


def test_all_three_aten_overloads_have_the_rule() -> None:
    from fxprune.rules.aten import aten_rule
    from fxprune.rules.slicing import tensor_split

    aten = torch.ops.aten
    for overload in ("indices", "sections", "tensor_indices_or_sections"):
        assert aten_rule(getattr(aten.tensor_split, overload)) is tensor_split


# ---- in-place writes into slices: copy_ --------------------------------------------

SLICE_WRITE_GROUP = frozenset({("p:c1.weight", 0), ("p:c1.bias", 0), ("p:c2.weight", 0),
                               ("p:c2.bias", 0), ("p:c3.weight", 0), ("p:c3.bias", 0),
                               ("p:fc.weight", 1), ("p:fill", 1)})


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_copy_into_a_slice_couples_source_and_destination(frontend: str) -> None:
    cg = fxprune.analyze(T.build("slice_write"), T.example_input("slice_write"), frontend=frontend)
    assert _params_of(cg)[SLICE_WRITE_GROUP] == 8
    assert not [f for f in cg.frozen if f.barrier]
    g = next(g for g in cg.groups if ("p:c3.weight", 0) in {(m.key, m.dim) for m in g.params()})
    units = {(m.key, m.dim): dict(zip(m.index.tolist(), m.unit.tolist())) for m in g.params()}
    c1, c3, fill = units[("p:c1.weight", 0)], units[("p:c3.weight", 0)], units[("p:fill", 1)]
    assert [c3[k] for k in range(3)] == [c1[k] for k in (2, 3, 4)]  # c3 lands on y's 2..4
    assert [fill[k] for k in range(2)] == [c1[k] for k in (6, 7)]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_copy_into_a_slice_is_exact(frontend: str) -> None:
    res = _run_and_check(T.build("slice_write"), T.example_input("slice_write"), frontend)
    assert any("copy_" in t for t in _targets(res.module))  # kept: its result is unused


class ItemAssign(nn.Module):
    """``y[:, :, 1:] += z`` and ``y[:, 2:5] = w`` (item assignment; torch.export only, as
    symbolic fx cannot trace it): MViT's pattern, slice + add_ + copy_ back into y."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        y[:, :, 1:] += self.c2(x)[:, :, 1:]
        y[:, 2:5] = self.c3(x)
        return self.fc(y.relu().mean((2, 3)))


def test_item_assignment_into_slices_is_exact_on_export() -> None:
    model, x = ItemAssign().eval(), torch.randn(2, 3, 6, 6)
    cg = fxprune.analyze(model, x, frontend="export")
    assert sorted(g.size for g in cg.groups) == [8]
    _run_and_check(model, x, "export")


def test_mutating_aten_ops_are_never_dead_code() -> None:
    """``copy_.default`` is not a ``foo_`` name: the schema says it writes into self."""
    gm = fxprune.trace(T.build("slice_write"), T.example_input("slice_write"), frontend="export")
    writes = [n for n in gm.graph.nodes if n.op == "call_function"
              and isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable]
    assert {str(n.target) for n in writes} >= {"aten.copy_.default", "aten.add_.Tensor"}
    assert not any(is_pure(n, gm) for n in writes)
