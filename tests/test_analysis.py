"""Golden pruning groups of the toy models, attention heads as units, and
"a unit's slices are all of it" (zeroing ``g.slices(i)`` equals pruning unit i).

The expected groups below are derived from the architectures by hand (see each
toy model's docstring), not read off the implementation. A member is written as
``(param, dim): units`` where ``units[k]`` is the unit that owns index ``k``.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import toy_models as T

import fxprune
from fxprune import PruningPlan


def I(n: int, start: int = 0) -> list[int]:
    """Identity: index k belongs to unit start + k."""
    return list(range(start, start + n))


def blocks(n: int, k: int) -> list[int]:
    """n indices in contiguous blocks of k per unit (flatten, depthwise, pixel shuffle)."""
    return [i // k for i in range(n)]


def cyclic(n: int, p: int) -> list[int]:
    """n indices where index i belongs to unit i % p (strided: grouped conv, shuffle, halves)."""
    return [i % p for i in range(n)]


def heads(n_rows: int, dim: int, head_dim: int) -> list[int]:
    """Rows of a packed q/k/v projection: row s*dim + h*head_dim + d belongs to head h."""
    return [(r % dim) // head_dim for r in range(n_rows)]


def conv_members(name: str, units: list[int], bias: bool = True) -> dict:
    out = {(f"{name}.weight", 0): units}
    if bias:
        out[(f"{name}.bias", 0)] = units
    return out


def bn_members(name: str, units: list[int]) -> dict:
    return {(f"{name}.weight", 0): units, (f"{name}.bias", 0): units}


# name -> ({group id: (size, {(param, dim): units})}, {frozen id: is a barrier})
GOLDEN: dict[str, tuple[dict, dict]] = {
    "residual": ({
        "conv1.weight:0": (8, {**conv_members("conv1", I(8), bias=False), **bn_members("bn1", I(8)),
                               ("conv2.weight", 1): I(8), **conv_members("conv3", I(8), bias=False),
                               **bn_members("bn3", I(8)), ("fc.weight", 1): I(8)}),
        "conv2.weight:0": (6, {**conv_members("conv2", I(6), bias=False), **bn_members("bn2", I(6)),
                               ("conv3.weight", 1): I(6)}),
    }, {"conv1.weight:1": False, "fc.weight:0": False}),
    "concat_channels": ({
        "conv_a.weight:0": (10, {**conv_members("conv_a", I(4)), **conv_members("conv_b", I(6, 4)),
                                 ("conv_c.weight", 1): I(10)}),
        "conv_c.weight:0": (5, {**conv_members("conv_c", I(5)), ("fc.weight", 1): I(5)}),
    }, {"conv_a.weight:1": False, "fc.weight:0": False}),
    "concat_height": ({
        "conv_a.weight:0": (6, {**conv_members("conv_a", I(6)), **conv_members("conv_b", I(6)),
                                ("conv_c.weight", 1): I(6)}),
        "conv_c.weight:0": (4, {**conv_members("conv_c", I(4)), ("fc.weight", 1): I(4)}),
    }, {"conv_a.weight:1": False, "fc.weight:0": False}),
    "split_chunk": ({
        "conv1.weight:0": (8, {**conv_members("conv1", I(8)), ("conv_a.weight", 1): I(4),
                               ("conv_b.weight", 1): I(4, 4)}),
        "conv_b.weight:0": (5, {**conv_members("conv_b", cyclic(10, 5)),
                                ("conv_c.weight", 1): I(5)}),
        "conv_a.weight:0": (7, {**conv_members("conv_a", I(3)), **conv_members("conv_c", I(4, 3)),
                                ("fc.weight", 1): I(7)}),
    }, {"conv1.weight:1": False, "fc.weight:0": False}),
    "depthwise": ({
        "conv1.weight:0": (8, {**conv_members("conv1", I(8), bias=False), **bn_members("bn1", I(8)),
                               ("dw.weight", 0): blocks(16, 2), **bn_members("bn2", blocks(16, 2)),
                               ("pw.weight", 1): blocks(16, 2)}),
        "pw.weight:0": (6, {**conv_members("pw", I(6), bias=False), **bn_members("bn3", I(6)),
                            ("fc.weight", 1): I(6)}),
    }, {"conv1.weight:1": False, "fc.weight:0": False}),
    "grouped": ({
        "conv1.weight:0": (2, {**conv_members("conv1", cyclic(8, 2)), ("gconv.weight", 1): I(2)}),
        "gconv.weight:0": (3, {**conv_members("gconv", cyclic(12, 3)),
                               ("conv3.weight", 1): cyclic(12, 3)}),
        "conv3.weight:0": (4, {**conv_members("conv3", I(4)), ("fc.weight", 1): I(4)}),
    }, {"conv1.weight:1": False, "fc.weight:0": False}),
    "flatten_linear": ({
        "conv.weight:0": (4, {**conv_members("conv", I(4)), ("fc.weight", 1): blocks(16, 4)}),
        "fc.weight:0": (5, {**conv_members("fc", I(5)), ("fc2.weight", 1): I(5)}),
    }, {"conv.weight:1": False, "fc2.weight:0": False}),
    "pixel_shuffle": ({
        "conv1.weight:0": (4, {**conv_members("conv1", blocks(16, 4)), ("conv2.weight", 1): I(4)}),
        "conv2.weight:0": (5, {**conv_members("conv2", I(5)), ("fc.weight", 1): I(5)}),
    }, {"conv1.weight:1": False, "fc.weight:0": False}),
    "se_block": ({
        "conv1.weight:0": (8, {**conv_members("conv1", I(8), bias=False), **bn_members("bn1", I(8)),
                               ("se.fc1.weight", 1): I(8), **conv_members("se.fc2", I(8)),
                               ("conv2.weight", 1): I(8)}),
        "se.fc1.weight:0": (2, {**conv_members("se.fc1", I(2)), ("se.fc2.weight", 1): I(2)}),
        "conv2.weight:0": (4, {**conv_members("conv2", I(4)), ("fc.weight", 1): I(4)}),
    }, {"conv1.weight:1": False, "fc.weight:0": False}),
    "mha": ({
        "inp.weight:0": (8, {**conv_members("inp", I(8)), ("attn.in_proj_weight", 1): I(8)}),
        "attn.in_proj_weight:0": (4, {("attn.in_proj_weight", 0): heads(24, 8, 2),
                                      ("attn.in_proj_bias", 0): heads(24, 8, 2),
                                      ("attn.out_proj.weight", 1): blocks(8, 2)}),
        "attn.out_proj.weight:0": (8, {**conv_members("attn.out_proj", I(8)),
                                       ("head.weight", 1): I(8)}),
    }, {"inp.weight:1": False, "head.weight:0": False}),
    "qkv_attention": ({
        "inp.weight:0": (8, {**conv_members("inp", I(8)), ("attn.qkv.weight", 1): I(8)}),
        "attn.qkv.weight:0": (2, {**conv_members("attn.qkv", heads(24, 8, 4)),
                                  ("attn.proj.weight", 1): blocks(8, 4)}),
        "attn.proj.weight:0": (8, {**conv_members("attn.proj", I(8)), ("head.weight", 1): I(8)}),
    }, {"inp.weight:1": False, "head.weight:0": False}),
    "cumsum_barrier": ({
        "conv2.weight:0": (6, {**conv_members("conv2", I(6)), ("fc.weight", 1): I(6)}),
    }, {"conv1.weight:0": True, "conv2.weight:1": True,  # both sides of the barrier
        "conv1.weight:1": False, "fc.weight:0": False}),
}
_SHUFFLE = ({
    "conv1.weight:0": (4, {**conv_members("conv1", cyclic(8, 4), bias=False),
                           **bn_members("bn1", cyclic(8, 4)), ("conv2.weight", 1): blocks(8, 2)}),
    "conv2.weight:0": (6, {**conv_members("conv2", I(6)), ("fc.weight", 1): I(6)}),
}, {"conv1.weight:1": False, "fc.weight:0": False})
GOLDEN["shuffle_view"] = GOLDEN["shuffle_module"] = _SHUFFLE
GOLDEN["wrapped_barrier"] = GOLDEN["cumsum_barrier"]


def _analyze(name: str) -> tuple[torch.nn.Module, torch.Tensor, fxprune.ChannelGraph]:
    model, x = T.build(name), T.example_input(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the barrier warning has its own test
        return model, x, fxprune.analyze(model, x)


def _units_by_slices(g: fxprune.Group) -> dict[tuple[str, int], dict[int, int]]:
    """{(param, dim): {index: unit}} read through the public ``slices`` API."""
    out: dict[tuple[str, int], dict[int, int]] = {}
    for i in range(g.size):
        for pname, dim, idx in g.slices(i):
            owned = out.setdefault((pname, dim), {})
            for k in idx:
                assert k not in owned, f"{g.id}: {pname}[{dim}][{k}] in units {owned[k]} and {i}"
                owned[k] = i
    return out


def _run_and_check(name: str) -> None:
    expected_groups, expected_frozen = GOLDEN[name]
    _, _, cg = _analyze(name)
    want_sizes = {gid: size for gid, (size, _) in expected_groups.items()}
    assert {g.id: g.size for g in cg.groups} == want_sizes
    for gid, (_, members) in expected_groups.items():
        want = {key: dict(enumerate(units)) for key, units in members.items()}
        assert _units_by_slices(cg.group(gid)) == want, f"members of group {gid}"
        assert not cg.group(gid).mixing
    assert {fg.id: fg.barrier for fg in cg.frozen} == expected_frozen


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_groups(name: str) -> None:
    _run_and_check(name)


@pytest.mark.parametrize("name", ["residual", "concat_channels", "split_chunk", "qkv_attention"])
def test_networkx_components_are_the_groups(name: str) -> None:
    """cg.graph (networkx) and the scipy grouping read the same links: every group is
    exactly the tensor dims of one connected component, and no two groups share one."""
    import networkx as nx

    _, _, cg = _analyze(name)
    components = {frozenset(c) for c in nx.connected_components(cg.graph)}
    for g in cg.groups:
        dims = {(m.key, m.dim) for m in g.members}
        holder = [c for c in components if dims & c]
        assert len(holder) == 1 and dims <= holder[0], g.id
    assert all(cg.graph.nodes[kd]["size"] == n for kd, n in cg.dim_sizes.items())


def test_batchnorm_statistics_follow_their_channels() -> None:
    _, _, cg = _analyze("depthwise")
    g = cg.group("conv1.weight:0")
    assert sorted(g.buffer_slices(3)) == [
        ("bn1.running_mean", 0, [3]), ("bn1.running_var", 0, [3]),
        ("bn2.running_mean", 0, [6, 7]), ("bn2.running_var", 0, [6, 7])]


def test_analysis_result_is_read_only() -> None:
    _, _, cg = _analyze("residual")
    member = next(cg.group("conv1.weight:0").params())
    with pytest.raises(ValueError):
        member.index[0] = 5
    with pytest.raises(AttributeError):
        cg.groups = ()  # type: ignore[misc]


@pytest.mark.parametrize("name, attn_name, heads_gid", [
    ("mha", "attn", "attn.in_proj_weight:0"), ("qkv_attention", "attn", "attn.qkv.weight:0")])
def test_attention_heads_are_the_units(name: str, attn_name: str, heads_gid: str) -> None:
    model, x, cg = _analyze(name)
    num_heads = getattr(model, attn_name).num_heads
    assert cg.group(heads_gid).size == num_heads
    plan = PruningPlan(removed={heads_gid: (0,)}, group_sizes={g.id: g.size for g in cg.groups},
                       signature=cg.signature)
    res = fxprune.apply_plan(model, x, plan)
    assert fxprune.verify(model, res, x) <= 1e-5
    y = res.module(T.example_input(name, seed=7))  # runs on a fresh input too
    assert y.shape == model(x).shape
    if name == "mha":
        assert res.module.get_submodule(attn_name).num_heads == num_heads - 1
    else:  # the head count is a literal of the reshape: it must have been rewritten
        split_heads = [n for n in res.module.graph.nodes
                       if n.op == "call_method" and n.target == "reshape" and len(n.args) == 6]
        assert len(split_heads) == 1 and split_heads[0].args[4] == num_heads - 1
        kept_rows = 3 * 8 * (num_heads - 1) // num_heads
        assert res.module.get_parameter("attn.qkv.weight").shape[0] == kept_rows


def _dead_unit_output(model, x, slices) -> torch.Tensor:
    """The original model with every entry in ``slices`` zeroed (our own oracle)."""
    dead = copy.deepcopy(model)
    params = dict(dead.named_parameters())
    with torch.no_grad():
        for pname, dim, idx in slices:
            params[pname].index_fill_(dim, torch.tensor(idx), 0.0)
        return dead(x)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_zeroing_a_units_slices_equals_pruning_it(name: str) -> None:
    """Groups cover everything: a unit's slices are all the entries it has."""
    model, x, cg = _analyze(name)
    sizes = {g.id: g.size for g in cg.groups}
    with torch.no_grad():
        full = model(x)
    effective = 0
    for g in cg.groups:
        for i in sorted({0, g.size - 1}):
            plan = PruningPlan(removed={g.id: (i,)}, group_sizes=sizes, signature=cg.signature)
            pruned = fxprune.apply_plan(model, x, plan).module.eval()
            with torch.no_grad():
                got = pruned(x)
            want = _dead_unit_output(model, x, g.slices(i))
            rel = (got - want).abs().max() / want.abs().max()
            assert rel <= 1e-5, f"{name}: group {g.id} unit {i}: relative diff {rel:.3g}"
            effective += not torch.equal(want, full)
    assert effective > 0, f"{name}: zeroing units never changed the output; the check is vacuous"



class _NegativeShapeIndex(torch.nn.Module):
    """``x.shape[-1]`` (timm's DaViT, GCViT): a negative getitem on a value with no tensor
    parts used to raise IndexError inside the analysis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.out(y.reshape(y.shape[0], y.shape[1], y.shape[-2], y.shape[-1]))


def test_negative_index_into_a_shape_is_no_error() -> None:
    model, x = _NegativeShapeIndex().eval(), torch.randn(1, 3, 6, 6)
    cg = fxprune.analyze(model, x, frontend="fx")
    assert any(g.size == 8 for g in cg.groups)
    dead = fxprune.dead_channel_plan(model, x, frontend="fx")
    assert fxprune.verify(model, dead, x) < 1e-5
