"""passes/shrink.py's stages against plain references: kept indices (boolean lookups per
group) equal per-member set differences, the copy that skips replaced tensors leaves the
original whole and no placeholder in the result, the dead-unit oracle's zeroed copy
zeroes exactly the removed entries, and the magnitude scores equal a direct sum."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import toy_models as T
from fxprune.passes.magnitude import l1_scores, l2_scores
from fxprune.passes.shrink import kept_indices, shrink

import fxprune
from fxprune.verify import zero_removed

MODELS = ["residual", "concat_channels", "split_chunk", "depthwise", "grouped", "flatten_linear", "mha"]


def _reference_kept(cg, plan) -> dict:
    """np.isin + setdiff1d per member: the obvious (slow) way."""
    removed: dict = {}
    for g in cg.groups:
        units = np.asarray(plan.removed.get(g.id, ()))
        if units.size:
            for m in g.members:
                sel = m.index[np.isin(m.unit, units)]
                if sel.size:
                    removed.setdefault((m.key, m.dim), []).append(sel)
    return {kd: np.setdiff1d(np.arange(cg.dim_sizes[kd]), np.concatenate(v))
            for kd, v in removed.items()}


def _run_and_check(name: str, seed: int):
    torch.manual_seed(seed)
    model, x = T.build(name).eval(), T.example_input(name)
    res = fxprune.dead_channel_plan(model, x, fraction=0.4, seed=seed)
    assert res.plan.num_removed > 0
    return model, x, res.graph, res.plan


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("seed", [0, 1])
def test_kept_indices_equal_the_set_difference(name, seed) -> None:
    _, _, cg, plan = _run_and_check(name, seed)
    fast, ref = kept_indices(cg, plan), _reference_kept(cg, plan)
    assert fast.keys() == ref.keys()
    assert all(np.array_equal(fast[k], ref[k]) for k in ref)


@pytest.mark.parametrize("name", MODELS)
def test_shrink_leaves_the_original_whole_and_no_placeholder(name) -> None:
    _, x, cg, plan = _run_and_check(name, 0)
    before = {k: v.clone() for k, v in cg.gm.state_dict().items()}
    gm = shrink(cg, plan)
    assert all(torch.equal(before[k], v) for k, v in cg.gm.state_dict().items())
    assert all(t.numel() > 0 for t in gm.state_dict().values())
    gm(x)  # runs


@pytest.mark.parametrize("name", MODELS)
def test_zero_removed_zeroes_exactly_the_removed_entries(name) -> None:
    model, _, cg, plan = _run_and_check(name, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dead = zero_removed(model, cg, plan)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    removed = cg.removed_indices(plan.removed)
    for name_, p in dead.named_parameters():
        expect = model.get_parameter(name_).detach().clone()
        for (key, d), idx in removed.items():
            if key[0] == "p" and name_ in cg.tensor_names[key]:
                expect.index_fill_(d, torch.as_tensor(idx), 0.0)
        assert torch.equal(p, expect), name_


@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_scores_equal_a_direct_sum(p) -> None:
    torch.manual_seed(0)
    cg = fxprune.analyze(T.build("residual").eval(), T.example_input("residual"), warn=False)
    scores = (l1_scores if p == 1 else l2_scores)(cg)
    for g in cg.groups:
        ref = np.zeros(g.size)
        for m in g.params():
            w = cg.gm.get_parameter(cg.tensor_names[m.key][0]).detach().double()
            for k in range(m.index.size):
                ref[m.unit[k]] += (w.select(m.dim, int(m.index[k])).abs() ** p).sum().item()
        np.testing.assert_allclose(scores[g.id], ref, rtol=1e-6)
