"""Bad input gets a clear error naming what is wrong and what to do about it;
an op without a rule freezes what it touches, warns, and never yields a wrong model.
"""
from __future__ import annotations

import inspect
import re
import warnings

import pytest
import torch
import torchvision.models as tvm
import toy_models as T
from torch import fx, nn

import fxprune
from fxprune import FxPruneError, PlanMismatchError, PruningPlan, TraceError


def _untraceable_line() -> str:
    """'toy_models.py:<line>' of the data-dependent ``if`` in Untraceable.forward."""
    lines, first = inspect.getsourcelines(T.Untraceable.forward)
    k = next(i for i, line in enumerate(lines) if "if y.sum() > 0" in line)
    return f"toy_models.py:{first + k}"


class WithUntraceable(nn.Module):
    """A prunable stem in front of a submodule that fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 3, padding=1)
        self.mid = nn.Conv2d(3, 6, 1)
        self.inner = T.Untraceable()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(torch.relu(self.mid(torch.relu(self.stem(x)))[:, :3])))


class FlagControlled(nn.Module):
    """Control flow steered by a non-tensor argument: traceable with concrete_args."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor, flip: bool = False) -> torch.Tensor:
        y = torch.relu(self.b(torch.relu(self.a(x))))
        if flip:
            y = y.flip(1)
        return self.c(y)


def _run_and_check(call, error: type[Exception], *patterns: str) -> str:
    """``call()`` raises ``error`` whose message contains every pattern (literal text)."""
    with pytest.raises(error) as info:
        call()
    msg = str(info.value)
    for p in patterns:
        assert p in msg, f"{p!r} not in error message:\n{msg}"
    return msg


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("entry", [fxprune.trace, fxprune.analyze, fxprune.prune,
                                   fxprune.dead_channel_plan])
def test_untraceable_model_names_the_line_and_the_fixes(entry) -> None:
    msg = _run_and_check(lambda: entry(T.Untraceable(), X), TraceError,
                         _untraceable_line(), "if y.sum() > 0", "leaf_modules", "concrete_args")
    assert "Untraceable" in msg
    with pytest.raises(FxPruneError):  # part of the hierarchy
        entry(T.Untraceable(), X)


def test_leaf_modules_fix_lets_analysis_through() -> None:
    model = WithUntraceable()
    with pytest.warns(UserWarning, match="inner"):  # the leaf has no rule: a barrier
        cg = fxprune.analyze(model, X, leaf_modules=[T.Untraceable])
    assert {g.id for g in cg.groups} == {"stem.weight:0", "mid.weight:0"}
    assert [fg.id for fg in cg.frozen if fg.barrier] == ["head.weight:1"]  # the leaf's output


def test_leaf_modules_fix_lets_pruning_through() -> None:
    model = WithUntraceable()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fxprune.prune(model, X, ratio=0.5, leaf_modules=[T.Untraceable])
    assert res.plan.num_removed > 0
    assert fxprune.verify(model, res, X) <= 1e-5


def test_concrete_args_fix_lets_analysis_through() -> None:
    # frontend="auto" (the default) captures it with torch.export instead; the fx error is the subject
    _run_and_check(lambda: fxprune.analyze(FlagControlled(), X, frontend="fx"), TraceError,
                   "concrete_args")
    cg = fxprune.analyze(FlagControlled(), X, concrete_args={"flip": False})
    assert {g.id for g in cg.groups} == {"a.weight:0", "b.weight:0"}


def test_concrete_args_fix_lets_pruning_through() -> None:
    model = FlagControlled()
    res = fxprune.prune(model, X, ratio=0.5, concrete_args={"flip": False})
    assert res.plan.num_removed > 0


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval(ratio: float) -> None:
    model = T.build("residual")
    _run_and_check(lambda: fxprune.prune(model, X, ratio=ratio), FxPruneError, "ratio", repr(ratio))
    _run_and_check(lambda: fxprune.prune(model, X, ratio=ratio, global_ranking=True),
                   FxPruneError, "ratio")


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1,
                                   pytest.param({"conv9.weight:0": 0.5}, id="unknown-group")])
def test_per_group_ratio_outside_unit_interval(ratio) -> None:
    model = T.build("residual")
    ratios = ratio if isinstance(ratio, dict) else {"conv1.weight:0": ratio}
    _run_and_check(lambda: fxprune.prune(model, X, ratio=ratios), FxPruneError,
                   "ratio", next(iter(ratios)))


@pytest.mark.parametrize("entry", [fxprune.analyze, fxprune.prune, fxprune.dead_channel_plan])
@pytest.mark.parametrize("kind", ["module", "name", "parameter"])
def test_ignore_entry_not_in_the_model(kind: str, entry) -> None:
    model = T.build("residual")
    stranger = {"module": nn.Linear(8, 4), "name": "layer9.conv",
                "parameter": nn.Parameter(torch.ones(3))}[kind]
    naming = {"module": "Linear", "name": "layer9.conv", "parameter": "parameter"}[kind]
    _run_and_check(lambda: entry(model, X, ignore=[model.fc, stranger]), FxPruneError,
                   "ignore", naming)


def _first_differing_node(a: nn.Module, b: nn.Module) -> tuple[str, str]:
    """Names of the first nodes where plain torch.fx traces of a and b differ."""
    for na, nb in zip(fx.symbolic_trace(a).graph.nodes, fx.symbolic_trace(b).graph.nodes):
        if (na.name, na.op, str(na.target)) != (nb.name, nb.op, str(nb.target)):
            return na.name, nb.name
    raise AssertionError("the graphs agree")


@pytest.mark.parametrize("pair", [("resnet18", "resnet34"), ("residual", "concat_channels"),
                                  ("shuffle_view", "shuffle_module")])
def test_plan_for_another_model(pair: tuple[str, str]) -> None:
    def build(name: str) -> nn.Module:
        if name.startswith("resnet"):
            return getattr(tvm, name)(weights=None).eval()
        return T.build(name)

    made_for, other = build(pair[0]), build(pair[1])
    x = torch.randn(1, 3, 64, 64) if pair[0].startswith("resnet") else X
    plan = fxprune.dead_channel_plan(made_for, x).plan
    plan = PruningPlan.from_json(plan.to_json())
    in_plan, in_model = _first_differing_node(made_for, other)
    _run_and_check(lambda: fxprune.apply_plan(other, x, plan), PlanMismatchError, in_plan, in_model)


@pytest.mark.parametrize("name, op", [("cumsum_barrier", "cumsum"),
                                      ("wrapped_barrier", "reverse_channels")])
def test_barrier_op_warns_and_never_yields_a_wrong_model(name: str, op: str) -> None:
    model, x = T.build(name), T.example_input(name)
    with pytest.warns(UserWarning) as record:
        res = fxprune.prune(model, x, ratio=0.5)
    msg = "\n".join(str(w.message) for w in record)
    for frozen in ("conv1.weight:0", "conv2.weight:1"):  # both sides of the op are frozen
        assert re.search(rf"{re.escape(frozen)}:.*{op}", msg), msg
    assert "no rule" in msg
    pruned = res.module
    assert pruned.get_parameter("conv1.weight").shape == model.conv1.weight.shape
    assert pruned.get_parameter("conv2.weight").shape == (3, 8, 3, 3)  # the free side still prunes
    assert fxprune.verify(model, res, x) <= 1e-5
