"""Dead-channel equivalence: pruning units equals zeroing them in the original.

``dead_channel_plan`` removes random units of every exact group; ``verify``
compares the pruned module with the original whose removed units' slices are
zeroed. Also: an empty plan is bit-identical, and no entry point mutates the
user's model.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision.models as tvm
import toy_models as T

import fxprune
from fxprune import PruningPlan

RTOL = 1e-5

# torchvision models at a small resolution (all of them accept 96x96): name -> constructor kwargs
TORCHVISION = {
    "resnet18": {},
    "mobilenet_v2": {},
    "densenet121": {},
    "googlenet": {"init_weights": False, "aux_logits": False},
    "shufflenet_v2_x0_5": {},
    "squeezenet1_1": {},
}


# torchvision's video models at the smallest clips they accept: name -> input shape
VIDEO = {"r3d_18": (1, 3, 4, 32, 32), "mc3_18": (1, 3, 4, 32, 32),
         "r2plus1d_18": (1, 3, 4, 32, 32)}
VIDEO_SLOW = {"s3d": (1, 3, 16, 224, 224), "swin3d_t": (1, 3, 8, 64, 64),
              "mvit_v1_b": (1, 3, 16, 224, 224), "mvit_v2_s": (1, 3, 16, 224, 224)}


def video_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return T.randomize_norms(getattr(tvm.video, name)(weights=None), seed).eval()


def torchvision_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return T.randomize_norms(getattr(tvm, name)(weights=None, **TORCHVISION[name]), seed).eval()


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _run_and_check(model: torch.nn.Module, x: torch.Tensor, fraction: float = 0.5,
                   seed: int = 0, other: torch.Tensor | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # barrier models warn; tested in test_errors
        res = fxprune.dead_channel_plan(model, x, fraction=fraction, seed=seed)
    assert res.plan.num_removed > 0, "nothing was pruned: the check would be vacuous"
    assert _n_params(res.module) < _n_params(model)
    assert set(res.plan.removed) <= {g.id for g in res.graph.groups if not g.mixing}
    diff = fxprune.verify(model, res, x)
    assert diff <= RTOL, f"pruned module differs from the dead-unit oracle by {diff:.3g}"
    if other is None:
        other = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 100))
    diff = fxprune.verify(model, res, other)  # not only on the input it was traced with
    assert diff <= RTOL, f"on a second input: {diff:.3g}"


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("name", sorted(T.TOY_MODELS))
def test_toy_dead_channels(name: str, fraction: float) -> None:
    _run_and_check(T.build(name), T.example_input(name), fraction=fraction, seed=int(fraction * 4),
                   other=T.example_input(name, seed=100))


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_dead_channels(name: str) -> None:
    _run_and_check(torchvision_model(name), torch.randn(1, 3, 96, 96))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_dead_channels_224(name: str) -> None:
    _run_and_check(torchvision_model(name), torch.randn(1, 3, 224, 224), seed=1)


def _video_input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(VIDEO))
def test_video_dead_channels(name: str) -> None:
    """Conv3DSimple / Conv2Plus1D subclass nn.Conv3d outside torch.nn: leaves, not barriers."""
    _run_and_check(video_model(name), _video_input(VIDEO[name]))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(VIDEO_SLOW))
def test_video_dead_channels_slow(name: str) -> None:
    model, x = video_model(name), _video_input(VIDEO_SLOW[name])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(fxprune.prune(model, x, ratio=0.0).module(x), model(x))
    _run_and_check(model, x)


def _empty_plan(cg: fxprune.ChannelGraph) -> PruningPlan:
    sizes = {g.id: g.size for g in cg.groups}
    return PruningPlan(removed={}, group_sizes=sizes, signature=cg.signature)


@pytest.mark.parametrize("name", sorted(T.TOY_MODELS) + ["resnet18", "mobilenet_v2"] + sorted(VIDEO))
def test_pruning_nothing_is_bit_identical(name: str) -> None:
    if name in T.TOY_MODELS:
        model, x = T.build(name), T.example_input(name)
    elif name in VIDEO:
        model, x = video_model(name), _video_input(VIDEO[name])
    else:
        model, x = torchvision_model(name), torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cg = fxprune.analyze(model, x)
        replayed = fxprune.apply_plan(model, x, _empty_plan(cg)).module
        zero_ratio = fxprune.prune(model, x, ratio=0.0).module
    with torch.no_grad():
        want = model(x)
        for pruned in (replayed, zero_ratio):
            assert torch.equal(pruned.eval()(x), want)
            got = pruned.state_dict()
            # a traced-through BatchNorm subclass (FunctionalBNAct) never reads its step counter
            missing = model.state_dict().keys() - got.keys()
            assert got.keys() <= model.state_dict().keys()
            assert all(k.endswith("num_batches_tracked") for k in missing), missing
            assert all(torch.equal(v, model.state_dict()[k]) for k, v in got.items())


def _snapshot(model: torch.nn.Module) -> tuple[dict, dict]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, {name: m.training for name, m in model.named_modules()}


def _mixed_modes(model: torch.nn.Module) -> torch.nn.Module:
    """Train mode (BatchNorm would update its statistics on any forward) with one
    submodule in eval, so a blanket train()/eval() restore is noticed too."""
    model.train()
    next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).eval()
    return model


@pytest.mark.parametrize("entry", ["analyze", "prune", "dead_channel_plan", "apply_plan", "verify"])
@pytest.mark.parametrize("name", ["residual", "resnet18"])
def test_entry_points_never_mutate_the_model(name: str, entry: str) -> None:
    model = _mixed_modes(T.build(name) if name in T.TOY_MODELS else torchvision_model(name))
    x = T.example_input(name) if name in T.TOY_MODELS else torch.randn(2, 3, 64, 64)
    state, modes = _snapshot(model)
    ids = {k: id(p) for k, p in model.named_parameters()}
    if entry == "analyze":
        fxprune.analyze(model, x)
    elif entry == "prune":
        fxprune.prune(model, x, ratio=0.5, ignore=[model.fc])
    elif entry == "dead_channel_plan":
        fxprune.dead_channel_plan(model, x)
    else:
        plan = fxprune.dead_channel_plan(_mixed_modes(copy.deepcopy(model)), x).plan
        res = fxprune.apply_plan(model, x, plan)
        if entry == "verify":
            fxprune.verify(model, res, x)
    after_state, after_modes = _snapshot(model)
    assert after_modes == modes
    assert after_state.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(after_state[k], v), f"{k} changed"
    assert {k: id(p) for k, p in model.named_parameters()} == ids


@pytest.mark.parametrize("name", ["residual", "resnet18"])
def test_l1_prune_keeps_ignored_fc(name: str) -> None:
    model = T.build(name) if name in T.TOY_MODELS else torchvision_model(name)
    x = T.example_input(name) if name in T.TOY_MODELS else torch.randn(1, 3, 64, 64)
    res = fxprune.prune(model, x, ratio=0.5, criterion="l1", ignore=[model.fc])
    assert res.module.get_submodule("fc").weight.shape == model.fc.weight.shape
    assert _n_params(res.module) < _n_params(model)  # everything else was free to shrink
    assert any(r.kind == "ignored" for fg in res.graph.frozen for r in fg.reasons)
    assert not any("fc.weight" in m.name for g in res.graph.groups for m in g.params())
    assert fxprune.verify(model, res, x) <= RTOL
    assert res.module(x).shape == model(x).shape


def test_verify_notices_a_wrong_rewrite() -> None:
    """The oracle itself can fail: a tampered module, or a result paired with another plan."""
    model, x = T.build("residual"), T.example_input("residual")
    res = fxprune.dead_channel_plan(model, x, seed=0)
    other = fxprune.dead_channel_plan(model, x, seed=1)
    assert other.plan.removed != res.plan.removed
    swapped = fxprune.PruneResult(res.module, other.plan, other.graph, x)
    assert fxprune.verify(model, swapped, x) > 1e-3
    tampered = copy.deepcopy(res)
    with torch.no_grad():
        tampered.module.get_parameter("conv2.weight")[0].mul_(1.5)
    assert fxprune.verify(model, tampered, x) > 1e-3
    with pytest.raises(fxprune.VerificationError, match="dead-unit oracle"):
        fxprune.verify(model, tampered, x, raise_on_fail=True)
