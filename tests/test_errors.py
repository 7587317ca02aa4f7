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


# --- arguments: misspelled keywords, wrong types, single items (issue 10, section 5) ---
@pytest.mark.parametrize("kw, named, guess", [
    ({"ratoi": 0.3}, "ratoi", "ratio"),
    ({"global_ranknig": True}, "global_ranknig", "global_ranking"),
    ({"criterion": "slimming", "percnt": 0.3}, "percnt", "percent"),
    ({"criterion": "thinet", "num_batchs": 2}, "num_batchs", "num_batches"),
])
def test_misspelled_keyword_is_rejected_with_the_closest_name(kw, named, guess) -> None:
    from fxprune.errors import UnknownArgumentError

    _run_and_check(lambda: fxprune.prune(T.build("residual"), X, **kw), UnknownArgumentError,
                   repr(named), f"did you mean {guess!r}")


def test_every_criterion_declares_its_options() -> None:
    from fxprune.criteria import COMMON_OPTIONS, CRITERIA, criterion_options

    assert criterion_options("slimming") == {"percent"} | COMMON_OPTIONS
    assert {"preset", "layer_ratios", "skip", "prune_residual"} <= criterion_options("l1-filter")
    assert "n_alphas" in criterion_options("lasso") and "seed" in criterion_options("random")
    for name in CRITERIA:  # nothing leaks in from the call frame or the catch-all
        assert not {"cg", "model", "calibration", "_", "_kw"} & criterion_options(name), name


def test_common_calibration_settings_go_to_any_criterion() -> None:
    res = fxprune.prune(T.build("residual"), X, criterion="l1", num_batches=2, progress=False)
    assert res.plan.num_removed > 0


@pytest.mark.parametrize("kw, named", [
    ({"round_to": 2.5}, "round_to"), ({"round_to": 0}, "round_to"), ({"round_to": "8"}, "round_to"),
    ({"ratio": "0.3"}, "ratio"), ({"ratio": None}, "ratio"), ({"ratio": True}, "ratio"),
    ({"global_ranking": "yes"}, "global_ranking"), ({"check": 0}, "check"),
])
def test_argument_of_the_wrong_type(kw, named) -> None:
    from fxprune.errors import ArgumentError

    msg = _run_and_check(lambda: fxprune.prune(T.build("residual"), X, **kw), ArgumentError,
                         named, repr(next(iter(kw.values()))))
    assert "\n" not in msg


@pytest.mark.parametrize("entry", [fxprune.prune, fxprune.dead_channel_plan])
@pytest.mark.parametrize("single", ["fc", "module"])
def test_single_ignore_item_is_one_item(entry, single: str) -> None:
    model = T.build("residual")
    res = entry(model, X, ignore="fc" if single == "fc" else model.fc)
    assert res.module.get_submodule("fc").weight.shape == model.fc.weight.shape
    assert res.plan.num_removed > 0


def test_removed_blocks_given_as_one_name() -> None:
    """A plan whose removed_blocks is one string is refused with the list it meant, never
    read as its letters."""
    import dataclasses

    from fxprune.models import get_model
    from fxprune.models.cifar_resnet import BasicBlock
    from fxprune.passes.sss import block_scales
    from fxprune.passes.sss_blocks import attach_block_scales

    model = get_model("resnet20", width=4)
    attach_block_scales(model, (BasicBlock,))
    with torch.no_grad():
        block_scales(model)["layer2.1.bn2"].zero_()
    x = torch.randn(1, 3, 32, 32)
    plan = fxprune.prune(model.eval(), x, criterion="sss").plan
    assert plan.removed_blocks == ("layer2.1.bn2",)
    from fxprune.file_errors import InvalidPlanError

    with pytest.raises(InvalidPlanError, match=r"\['layer2.1.bn2'\]"):
        dataclasses.replace(plan, removed_blocks="layer2.1.bn2")
    res = fxprune.apply_plan(model, x, plan)
    assert "layer2.1.conv1" not in {n for n, _ in res.module.named_modules()}


# --- calibration batches ---
def _calibrated(batches, criterion: str = "taylor"):
    return lambda: fxprune.prune(T.build("residual"), X, criterion=criterion,
                                 calibration=batches, progress=False)


@pytest.mark.parametrize("criterion", ["taylor", "thinet", "lasso"])
def test_calibration_batch_of_the_wrong_shape_is_named(criterion: str) -> None:
    from fxprune.errors import CalibrationError

    batches = [torch.randn(2, 3, 8, 8), torch.randn(2, 1, 8, 8)]
    msg = _run_and_check(_calibrated(batches, criterion), CalibrationError,
                         "calibration batch 1", "Nx3x8x8", "2x1x8x8", "channels")
    assert "\n" not in msg


def test_calibration_labels_out_of_range_are_named() -> None:
    from fxprune.errors import CalibrationError

    batches = [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1])),
               (torch.randn(2, 3, 8, 8), torch.tensor([3, 9]))]  # the model has 4 outputs
    _run_and_check(_calibrated(batches), CalibrationError, "calibration batch 1",
                   "labels in [0, 4)", "labels 3..9")


# --- forward arguments example_inputs cannot reach ---
class KeywordOnly(nn.Module):
    """A keyword-only tensor argument: example_inputs (positional) cannot give it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)) * scale)


class DefaultMask(nn.Module):
    """A default (mask=None) that steers control flow: fx follows the wrong branch."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.relu(self.a(x))
        if mask is not None:
            y = y * mask
        return self.b(y)


def test_keyword_only_tensor_argument_is_named() -> None:
    from fxprune.errors import InputMismatchError

    msg = _run_and_check(lambda: fxprune.prune(KeywordOnly(), X), InputMismatchError,
                         "keyword-only 'scale'", "positionally", "example_inputs")
    assert "\n" not in msg


@pytest.mark.parametrize("model", [DefaultMask(), FlagControlled()], ids=["mask", "flag"])
def test_steering_default_says_concrete_args(model) -> None:
    name, value = ("mask", None) if isinstance(model, DefaultMask) else ("flip", False)
    _run_and_check(lambda: fxprune.prune(model, X, frontend="fx"), TraceError,
                   f"concrete_args={{{name!r}: {value!r}}}")
    assert fxprune.prune(model, X, concrete_args={name: value}).plan.num_removed > 0
    auto = fxprune.prune(model, X)  # the default frontend captures it with torch.export
    assert auto.graph.frontend == "export" and auto.plan.num_removed > 0


# --- example_inputs that do not fit ---
def test_channel_mismatch_keeps_the_real_cause() -> None:
    from fxprune.errors import InputMismatchError

    msg = _run_and_check(lambda: fxprune.prune(T.build("residual"), torch.randn(1, 1, 8, 8)),
                         InputMismatchError, "conv1",
                         "expected input[1, 1, 8, 8] to have 3 channels",
                         "(1, 1, 8, 8)", "fix")
    assert "\n" not in msg


def test_cli_channel_mismatch_is_one_line(capsys, tmp_path) -> None:
    from fxprune import cli

    code = cli.main(["prune", "tiny_models:tiny", "--input-shape", "1,1,16,16", "--ratio", "0.5",
                     "--no-onnx", "--out", str(tmp_path / "x")])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.strip().count("\n") == 0, captured.err
    assert "to have 3 channels" in captured.err and "Traceback" not in captured.err


def test_cli_misspelled_option_is_a_usage_error(capsys, tmp_path) -> None:
    from fxprune import cli

    code = cli.main(["prune", "tiny_models:tiny", "--input-shape", "1,3,16,16", "--criterion",
                     "slimming", "--option", "percnt=0.3", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "percnt" in err and "did you mean percent" in err
    assert not (tmp_path / "x").exists()
