"""PruningPlan: JSON round trip, replay on a fresh model, and plans that do not fit.

A replay on a model built the same way (same seed) must give an identical
module; on a differently initialised one, the same shapes and a module that
still passes the dead-unit oracle.
"""
from __future__ import annotations

import dataclasses
import json
import re
import warnings

import pytest
import torch
import torchvision.models as tvm
import toy_models as T

import fxprune
from fxprune import FxPruneError, PlanMismatchError, PruningPlan
from fxprune.file_errors import InvalidPlanError, PlanFileError

NAMES = ["residual", "concat_channels", "split_chunk", "depthwise", "grouped", "shuffle_view",
         "se_block", "mha", "qkv_attention", "resnet18"]


def _build(name: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    if name == "resnet18":
        torch.manual_seed(seed)
        return T.randomize_norms(tvm.resnet18(weights=None), seed).eval(), torch.randn(
            1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return T.build(name, seed), T.example_input(name)


def _l1_plan(name: str) -> fxprune.PruneResult:
    model, x = _build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fxprune.prune(model, x, ratio=0.5, criterion="l1")


def _run_and_check(name: str, seed: int, tmp_path) -> None:
    """Save the plan to disk, replay it on a model built with ``seed``."""
    res = _l1_plan(name)
    path = tmp_path / "plan.json"
    path.write_text(res.plan.to_json(indent=2))
    model, x = _build(name, seed)
    replay = fxprune.apply_plan(model, x, PruningPlan.from_json(path.read_text()))
    want, got = res.module.state_dict(), replay.module.state_dict()
    assert got.keys() == want.keys()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    if seed == 0:  # the same model: the very same module
        for k, v in want.items():
            assert torch.equal(got[k], v), k
        with torch.no_grad():
            assert torch.equal(replay.module.eval()(x), res.module.eval()(x))
    else:
        assert any(not torch.equal(got[k], v) for k, v in want.items() if v.is_floating_point())
        assert fxprune.verify(model, replay, x) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_json_round_trip(name: str) -> None:
    plan = _l1_plan(name).plan
    assert plan.num_removed > 0
    text = plan.to_json()
    again = PruningPlan.from_json(text)
    assert again == plan
    assert again.to_json() == text
    assert json.loads(text)["removed"] == {k: list(v) for k, v in plan.removed.items()}
    assert again.digest() == plan.digest()


@pytest.mark.parametrize("seed", [0, 1], ids=["same-init", "other-init"])
@pytest.mark.parametrize("name", NAMES)
def test_replay_saved_plan(name: str, seed: int, tmp_path) -> None:
    _run_and_check(name, seed, tmp_path)


def _edited(plan: PruningPlan, **changes) -> PruningPlan:
    return dataclasses.replace(plan, **changes)


def test_hand_edited_plans_that_do_not_fit() -> None:
    res = _l1_plan("residual")
    model, x = _build("residual")
    plan = res.plan
    sizes = dict(plan.group_sizes)
    cases = {
        "conv9.weight:0": _edited(plan, removed={"conv9.weight:0": (0,)}),
        "out of range": _edited(plan, removed={"conv2.weight:0": (6,)}),
        "every unit": _edited(plan, removed={"conv2.weight:0": tuple(range(6))}),
        # without a signature the group sizes are what tells models apart
        "6 units here, 5 in the plan": _edited(
            plan, signature=(), group_sizes={**sizes, "conv2.weight:0": 5},
            removed={"conv2.weight:0": (0,)}),
    }
    for needle, bad in cases.items():
        with pytest.raises(PlanMismatchError, match=re.escape(needle)):
            fxprune.apply_plan(model, x, bad)
    with pytest.raises(PlanFileError, match="fxprune plan"):
        PruningPlan.from_json(json.dumps({"removed": {}}))


def test_plan_that_empties_a_concat_branch_is_rejected() -> None:
    model, x = _build("concat_channels")
    cg = fxprune.analyze(model, x)
    plan = PruningPlan(removed={"conv_a.weight:0": (0, 1, 2, 3)},
                       group_sizes={g.id: g.size for g in cg.groups}, signature=cg.signature)
    try:
        res = fxprune.apply_plan(model, x, plan)
    except FxPruneError as e:  # fixed by refusing the plan, naming the emptied layer
        assert "conv_a" in str(e)
        return
    # or fixed by keeping a channel: the module must run and match the oracle for its plan
    assert fxprune.verify(model, res, x) <= 1e-5


@pytest.mark.parametrize("units, msg", [
    ([32] * 32, "unit 32 more than once"),
    ("0123", "must be a list of unit indices"),
    ([True], "True .bool.: unit indices must be integers"),
    ([32.7], "32.7 .float.: unit indices must be integers"),
    (["3"], "'3' .str."),
    ([-1], "negative index -1"),
    (7, "must be a list"),
])
def test_bad_unit_lists_are_rejected_at_construction(units, msg) -> None:
    with pytest.raises(InvalidPlanError, match=msg) as e:
        PruningPlan(removed={"conv2.weight:0": units}, group_sizes={"conv2.weight:0": 64})
    assert "conv2.weight:0" in str(e.value)
    text = json.dumps({"format": "fxprune.plan", "removed": {"conv2.weight:0": units},
                       "group_sizes": {"conv2.weight:0": 64}})
    with pytest.raises(PlanFileError, match=msg):  # and when parsing a file
        PruningPlan.from_json(text, source="my/plan.json")


@pytest.mark.parametrize("changes, msg", [
    ({"removed_blocks": "layer1.0"}, "removed_blocks = 'layer1.0' must be a list"),
    ({"group_sizes": {"g": 0}}, "group_sizes.'g'. = 0"),
    ({"group_sizes": {"g": True}}, "positive integer"),
    ({"version": "abc"}, "version must be a positive integer"),
    ({"removed": [1, 2]}, "must map group ids"),
])
def test_bad_plan_fields_are_rejected(changes, msg) -> None:
    kw = dict(removed={}, group_sizes={"g": 4}) | changes
    with pytest.raises(InvalidPlanError, match=msg):
        PruningPlan(**kw)


def test_unit_lists_are_normalised() -> None:
    import numpy as np

    plan = PruningPlan(removed={"g": [3, np.int64(1), 2]}, group_sizes={"g": 8})
    assert plan.removed == {"g": (1, 2, 3)} and type(plan.removed["g"][0]) is int
    assert PruningPlan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("text, msg", [
    ("", "empty"), ('{"format": "fxprune.plan", "remo', "truncated"),
    (b"\x89PNG\xff\x00", "not text"), ("[1, 2]", "not an fxprune plan"),
])
def test_unreadable_plan_text_names_the_source(text, msg) -> None:
    with pytest.raises(PlanFileError, match=rf"my/plan.json .*{msg}"):
        PruningPlan.from_json(text, source="my/plan.json")
