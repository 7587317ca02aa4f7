"""prune()'s self-check (fxprune.verify.check_rewrite) and the dtype tolerance.

A deliberately broken rewrite (shrink permuting one BatchNorm's kept entries) must
raise VerificationError naming the group whose rewrite is wrong, and only that
group; ``check=False`` skips the check; a correct fp16 prune passes with the
dtype's tolerance although it is far above the fp32 one; plans touching
channel-mixing groups (LayerNorm) are checked on their exact groups.
"""
from __future__ import annotations

import importlib

import pytest
import torch
import torchvision.models as tvm
import toy_models as T
from torch import nn

import fxprune
from fxprune import VerificationError
from fxprune.oracle_inputs import reduced_inputs, shapes_of
from fxprune.verify import tolerance

SHRINK = importlib.import_module("fxprune.passes.shrink")  # the module, not the function


def _break_rewrite_of(monkeypatch, param: str) -> None:
    """shrink now reverses the kept entries of ``param``: a wrong index map, as a bug would."""
    real = SHRINK.replace_tensor

    def broken(root, names, value):
        real(root, names, value.flip(0) if param in names else value)

    monkeypatch.setattr(SHRINK, "replace_tensor", broken)


def _run_and_check(model: nn.Module, x, **kw) -> fxprune.PruneResult:
    """prune with the self-check on; the measured difference is within the tolerance."""
    res = fxprune.prune(model, x, **kw)
    assert res.plan.num_removed > 0, "nothing pruned: the check would be vacuous"
    assert res.oracle_diff is not None and res.oracle_diff <= tolerance(model, x)
    return res


def test_broken_rewrite_names_its_group(monkeypatch) -> None:
    model, x = T.build("residual"), T.example_input("residual")
    _break_rewrite_of(monkeypatch, "bn2.weight")  # bn2 belongs to group conv2.weight:0 only
    with pytest.raises(VerificationError, match="dead-unit oracle") as info:
        fxprune.prune(model, x, ratio=0.5)
    msg = str(info.value)
    assert "conv2.weight:0" in msg and "conv1.weight:0" not in msg, msg
    assert "ignore=" in msg  # the way around it


def test_check_false_skips_the_oracle(monkeypatch) -> None:
    model, x = T.build("residual"), T.example_input("residual")
    _break_rewrite_of(monkeypatch, "bn2.weight")
    res = fxprune.prune(model, x, ratio=0.5, check=False)
    assert res.oracle_diff is None
    assert fxprune.verify(model, res, x) > 1e-2  # the rewrite really is wrong


def test_correct_prune_records_its_difference_and_inputs() -> None:
    model, x = T.build("residual"), T.example_input("residual")
    res = _run_and_check(model, x, ratio=0.5)
    (small,) = reduced_inputs((x,))  # 8x8 images: one sample, no crop
    assert res.oracle_inputs == shapes_of(small) == ((1, *x.shape[1:]),)
    assert res.oracle_diff == pytest.approx(fxprune.verify(model, res, small), abs=1e-9)


# ---- the reduced input the check tries first (oracle_inputs.py) ----------------------

class SizeGated(nn.Module):
    """A conv net whose output is zero below 48 pixels (``* (width >= 48)``, traced as an
    op): on the 32x32 crop the comparison proves nothing, so the check must use the input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))) * (x.shape[-1] >= 48)


class FixedFlatten(nn.Module):
    """conv (stride 4) -> flatten -> linear on a 40x40 input: runs at that size only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 4, stride=4), nn.Linear(8 * 10 * 10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class GridCache(nn.Module):
    """Caches a coordinate grid of the first input's size in ``self.grid`` and reuses it
    whatever size comes next (a cache not keyed on shape, kept as a leaf module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "grid", None) is None:
            self.grid = torch.linspace(0, 1, x.shape[-1])
        return x + self.grid


class CachingNet(nn.Module):
    """conv -> relu -> conv -> GridCache: the pruned module keeps GridCache as a module
    (on the output, whose channels are never pruned: a leaf without a rule freezes them)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.cache = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), GridCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cache(self.b(torch.relu(self.a(x))))


def test_reduced_inputs_are_a_32_pixel_crop_then_one_sample() -> None:
    image, tokens = torch.randn(4, 3, 224, 200), torch.randint(0, 9, (4, 7))
    crop, sample = reduced_inputs((image, tokens, 0.5))
    assert shapes_of(crop) == ((1, 3, 32, 32), (1, 7)) and crop[2] == 0.5
    assert torch.equal(crop[0], image[:1, :, :32, :32])
    assert shapes_of(sample) == ((1, 3, 224, 200), (1, 7))
    assert reduced_inputs((torch.randn(1, 3, 32, 32),)) == []  # nothing would shrink
    assert shapes_of(reduced_inputs((torch.randn(1, 3, 64, 64),))[0]) == ((1, 3, 32, 32),)
    assert reduced_inputs(([torch.randn(2, 3, 64, 64)],)) == []  # a list of images: left alone
    assert reduced_inputs((torch.randn(2, 8), torch.randn(3, 8))) == []  # no common batch


def test_large_images_are_checked_on_a_32_pixel_crop() -> None:
    torch.manual_seed(0)
    model, x = T.randomize_norms(tvm.resnet18(weights=None, num_classes=10)).eval(), \
        torch.randn(2, 3, 96, 96)
    res = _run_and_check(model, x, ratio=0.5)
    assert res.oracle_inputs == ((1, 3, 32, 32),)
    assert fxprune.verify(model, res, x) <= tolerance(model, x)  # and the full input agrees


def test_a_model_that_rejects_the_crop_is_checked_on_its_inputs() -> None:
    """flatten -> linear with no pooling fixes the spatial size: the crop raises, one
    uncropped sample decides."""
    torch.manual_seed(0)
    model, x = FixedFlatten().eval(), torch.randn(2, 3, 40, 40)
    res = _run_and_check(model, x, ratio=0.5)
    assert res.oracle_inputs == ((1, 3, 40, 40),)


def test_a_crop_that_proves_nothing_sends_the_check_to_the_inputs() -> None:
    torch.manual_seed(0)
    model, x = SizeGated().eval(), torch.randn(2, 3, 64, 64)
    res = _run_and_check(model, x, ratio=0.5)
    assert res.oracle_inputs == ((1, 3, 64, 64),)  # one sample, uncropped


def test_a_wrong_rewrite_is_judged_on_the_full_inputs(monkeypatch) -> None:
    torch.manual_seed(0)
    model, x = T.randomize_norms(tvm.resnet18(weights=None, num_classes=10)).eval(), \
        torch.randn(1, 3, 64, 64)
    _break_rewrite_of(monkeypatch, "layer1.0.bn2.weight")
    with pytest.raises(VerificationError, match="dead-unit oracle"):
        fxprune.prune(model, x, ratio=0.5)


class GatedCachingNet(CachingNet):
    """CachingNet whose output is zero below 48 pixels: the crop proves nothing, so the
    oracle runs again on the full input, and must not meet the crop's 32-wide grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * (x.shape[-1] >= 48)


def test_the_oracle_meets_no_cache_of_the_crop_on_the_full_inputs() -> None:
    torch.manual_seed(0)
    model, x = GatedCachingNet().eval(), torch.randn(1, 3, 64, 64)
    res = _run_and_check(model, x, ratio=0.5, leaf_modules=[GridCache])
    assert res.oracle_inputs == ((1, 3, 64, 64),)


def test_no_forward_of_prune_leaves_a_cache_behind() -> None:
    """Shape propagation runs the user's GridCache, shrink's constant fix-up and the 32x32
    crop run the pruned one: none may leave its grid (a 64- or 32-wide one, or a meta one)
    for the user's next call."""
    torch.manual_seed(0)
    model, x = CachingNet().eval(), torch.randn(1, 3, 64, 64)
    for check in (False, True):
        res = fxprune.prune(model, x, ratio=0.5, leaf_modules=[GridCache], check=check)
        assert res.plan.num_removed > 0
        assert getattr(model.cache, "grid", None) is None  # analysis ran the user's module
        assert getattr(res.module.cache, "grid", None) is None
    assert res.oracle_inputs == ((1, 3, 32, 32),)
    assert res.module(x).shape == (1, 4, 64, 64)  # the user's first call builds its own grid


def test_fp16_resnet_passes_with_the_dtype_tolerance() -> None:
    torch.manual_seed(0)
    model = T.randomize_norms(tvm.resnet18(weights=None, num_classes=10)).eval().half()
    x = torch.randn(2, 3, 32, 32).half()
    res = _run_and_check(model, x, ratio=0.5, ignore="fc")
    # fp16 rounding differs between the pruned and the zeroed model on some CPUs (3.5e-4 here)
    # and not at all on others (CI measured 0.0), so the check needs the fp16 limit, not 1e-5
    assert tolerance(model, x) == 8 * torch.finfo(torch.float16).eps > 1e-5
    assert next(res.module.parameters()).dtype == torch.float16


def test_tolerance_follows_the_least_precise_dtype() -> None:
    lin = nn.Linear(2, 2)
    assert tolerance(lin, torch.randn(1, 2)) == 1e-5
    assert tolerance(lin, torch.randn(1, 2).half()) == 8 * torch.finfo(torch.float16).eps
    assert tolerance(lin.to(torch.bfloat16), torch.randn(1, 2)) == \
        8 * torch.finfo(torch.bfloat16).eps
    assert tolerance(None, torch.randn(1, 2, dtype=torch.float64)) == 1e-5


class NormedMLP(nn.Module):
    """fc1 -> relu -> fc2, a residual add, then LayerNorm: the residual group (8) mixes
    channels through the LayerNorm, the inner group (16) is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 16), nn.Linear(16, 8)
        self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.head(self.norm(self.fc2(torch.relu(self.fc1(h))) + h))


def test_mixing_groups_are_checked_on_the_exact_sub_plan(monkeypatch) -> None:
    model, x = NormedMLP().eval(), torch.randn(2, 5, 4)
    res = _run_and_check(model, x, ratio=0.5)
    mixing = {g.id for g in res.graph.groups if g.mixing}
    assert mixing & set(res.plan.removed) and set(res.plan.removed) - mixing
    assert fxprune.verify(model, res, x) > 1e-3  # the whole plan is not exact, by design
    _break_rewrite_of(monkeypatch, "fc1.bias")
    with pytest.raises(VerificationError, match="fc1.weight:0"):
        fxprune.prune(model, x, ratio=0.5)


def test_refit_criteria_are_checked_on_the_rewrite() -> None:
    model, x = T.build("residual"), T.example_input("residual")
    batches = [torch.randn(4, *x.shape[1:]) for _ in range(2)]
    res = _run_and_check(model, x, ratio=0.5, criterion="thinet", calibration=batches,
                         progress=False)
    assert res.reconstructed  # the re-fit changed weights the oracle cannot know about
    assert fxprune.verify(model, res, x) == pytest.approx(res.oracle_diff, abs=1e-9)


def test_empty_plan_that_changes_the_model_is_caught(monkeypatch) -> None:
    """Even with nothing removed the rewrite runs (finish, constants): the check still runs."""
    model, x = T.build("residual"), T.example_input("residual")
    real = SHRINK.eliminate_dead_pure_nodes

    def lossy(gm):  # a clean-up that loses an op, as dead-code elimination of an in-place op did
        node = next(n for n in gm.graph.nodes
                    if n.op == "call_function" and "relu" in str(n.target))
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        return real(gm)

    monkeypatch.setattr(SHRINK, "eliminate_dead_pure_nodes", lossy)
    with pytest.raises(VerificationError, match="empty plan"):
        fxprune.prune(model, x, ratio=0.0)


class InPlaceStatements(nn.Module):
    """``y.relu_()`` and ``z += y`` as statements (issue 10, section 3): dead-code elimination
    used to drop them, giving a wrong pruned model with no warning."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y.relu_()
        z = self.b(y)
        z += y
        return self.c(z)


def test_in_place_model_is_never_silently_wrong() -> None:
    """Either the rewrite is exact or prune() says so: never a wrong module returned."""
    torch.manual_seed(0)
    model, x = InPlaceStatements().eval(), torch.randn(2, 3, 8, 8)
    try:
        res = fxprune.prune(model, x, ratio=0.5)
    except VerificationError as e:
        assert "a.weight:0" in str(e) or "empty plan" in str(e), e
        return
    assert fxprune.verify(model, res, x) <= tolerance(model, x)


# ---- rounding that a model amplifies is not a wrong rewrite ----------------------------

class Cancelling(nn.Module):
    """``(y + 1e4) - 1e4``: fp32 keeps y only to ulp(1e4) ~ 1e-3, as RAFT's 12 refinement
    steps amplify rounding (a one-ulp input nudge moves its flow by 3e-5). It casts its
    input to float32 itself (RAFT's ``coords.float()``), so ``.double()`` alone cannot
    run it in float64. ``reassociate`` computes ``((y + 1e4) + 2e4) - 3e4`` (the same
    value, rounded on another grid); ``error`` adds a real change."""

    def __init__(self, reassociate: bool = False, error: float = 0.0) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.reassociate, self.error = reassociate, error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x.float())
        big = torch.full_like(y[:, :1], 1e4)
        out = ((y + big) + 2 * big) - 3 * big if self.reassociate else (y + big) - big
        return out + self.error * y


def _twin_result(model: nn.Module, x: torch.Tensor, **twin) -> fxprune.PruneResult:
    """An empty-plan result whose module is ``model`` computed differently (``twin``)."""
    import dataclasses

    other = Cancelling(**twin).eval()
    other.load_state_dict(model.state_dict())
    return dataclasses.replace(fxprune.prune(model, x, ratio=0.0, check=False), module=other)


def test_amplified_rounding_is_rechecked_in_float64() -> None:
    torch.manual_seed(0)
    model, x = Cancelling().eval(), torch.randn(64, 8)
    res = _twin_result(model, x, reassociate=True)
    assert fxprune.verify(model, res, x, rtol=1.0) > 1e-5  # fp32: above the tolerance
    assert fxprune.verify(model, res, x, raise_on_fail=True) < 1e-9  # float64: rounding


@pytest.mark.parametrize("float64_runs", [True, False])
def test_a_real_change_still_fails_the_recheck(monkeypatch, float64_runs: bool) -> None:
    V = importlib.import_module("fxprune.verify")

    if not float64_runs:
        monkeypatch.setattr(V, "_float64", lambda *a: (_ for _ in ()).throw(RuntimeError("no")))
    torch.manual_seed(0)
    model, x = Cancelling().eval(), torch.randn(64, 8)
    res = _twin_result(model, x, error=0.1)
    with pytest.raises(VerificationError):
        fxprune.verify(model, res, x, raise_on_fail=True)


def test_noise_floor_explains_rounding_where_float64_cannot_run(monkeypatch) -> None:
    """Without float64, the reference's own change under a one-ulp input nudge (enough
    samples that some cross a rounding step of 1e4) bounds what rounding can do."""
    V = importlib.import_module("fxprune.verify")

    monkeypatch.setattr(V, "_float64", lambda *a: (_ for _ in ()).throw(RuntimeError("no")))
    torch.manual_seed(0)
    model, x = Cancelling().eval(), torch.randn(4096, 8)
    res = _twin_result(model, x, reassociate=True)
    assert fxprune.verify(model, res, x, rtol=1.0) > 1e-5
    with pytest.warns(UserWarning, match="rounding noise"):
        assert fxprune.verify(model, res, x, raise_on_fail=True) == 0.0
