"""Tests for fxprune/search/tas.py and tas_modules.py: candidates, the MACs loss, CWI,
the Gumbel sampler, the MACs model, the plan meeting its target, depth removal."""
from __future__ import annotations

import copy
import random

import pytest
import torch
import torchvision

import fxprune
from fxprune.data import ImageTensorDataset, find_cifar10
from fxprune.models import get_model
from fxprune.search import tas
from fxprune.search.tas_modules import (
    CWIPoint, channel_align, cwi, cwi_matrix, gumbel_select2, remove_blocks)

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _resnet(seed: int = 0):
    """ResNet-20 at base width 4: three stages of three blocks, option-A shortcuts
    (one trunk group over all stages plus one group per block), small enough for CPU."""
    torch.manual_seed(seed)
    return get_model("resnet20", width=4).eval()


def _data(n: int = 32) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(1)
    return ImageTensorDataset(torch.rand(n, 3, 16, 16, generator=g),
                              torch.randint(0, 10, (n,), generator=g), [0.5] * 3, [0.25] * 3)


def _zero_blocks(model, blocks):
    z = copy.deepcopy(model)
    with torch.no_grad():
        for b in blocks:
            end = [m for m in z.get_submodule(b).children()
                   if isinstance(m, torch.nn.BatchNorm2d)][-1]
            end.weight.zero_()
            end.bias.zero_()
    return z


def _run_and_check(model, x, plan, oracle, atol=1e-5):
    gm = tas.apply_arch(model, x, plan)
    assert torch.allclose(gm(x), oracle(x), atol=atol), (gm(x) - oracle(x)).abs().max()
    return gm


def test_candidates_golden():
    assert tas.width_candidates(64) == [19, 25, 32, 38, 44, 51, 57, 64]
    assert tas.width_candidates(16) == [4, 6, 8, 9, 11, 12, 14, 16]
    assert tas.width_candidates(3) == [1, 2, 3]
    assert tas.depth_candidates(9) == [1, 3, 5, 7, 9]
    assert tas.depth_candidates(4) == [1, 3, 4]


@pytest.mark.parametrize("F_cur, sign", [(0.30, -1), (0.409, -1), (0.412, 0), (0.45, 0),
                                         (0.461, 0), (0.462, 1), (0.9, 1)])
def test_flops_loss_sign_and_zero_band(F_cur, sign):
    E = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    loss = tas.flops_loss(F_cur, E, R=0.461, t=0.05)
    loss.backward()
    want = {-1: -torch.log(E), 0: torch.tensor(0.0), 1: torch.log(E)}[sign]
    assert float(loss.detach()) == pytest.approx(float(want.detach()))
    assert (E.grad > 0) == (sign > 0) and (E.grad < 0) == (sign < 0)  # descent pushes E toward R


def test_cwi_aligns_shapes():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 3, 3, generator=g)
    assert channel_align(x, 16).shape == (2, 16, 3, 3)
    assert channel_align(x[:, :, 0, 0], 9).shape == (2, 9)
    order = torch.randperm(16, generator=g)
    y = torch.randn(2, 16, 4, 4, generator=g)
    for k in (1, 5, 16):
        out = cwi(y, order, k)
        assert out.shape == y.shape
        assert torch.allclose(out, torch.nn.functional.conv2d(y, cwi_matrix(order, k, 16)[..., None, None]),
                              atol=1e-6)
    assert torch.equal(cwi(y, order, 16), y)  # full width is the identity
    # k kept channels, stretched: rank 0's channel copies the most important input channel
    out = cwi(y, order, 4)
    assert torch.equal(out[:, order[0]], y[:, order[0]])
    assert torch.equal(out[:, order[15]], y[:, order[3]])


def test_cwi_point_shapes_and_full_width_identity():
    bn = torch.nn.BatchNorm2d(8).eval()
    from fxprune.search.tas_modules import ArchState

    st = ArchState()
    pt = CWIPoint(bn, 0, torch.arange(8), [2, 5, 8], st, per_width_bn=True).eval()
    x = torch.randn(3, 8, 4, 4)
    st.width = {0: ([0, 1], torch.tensor([0.3, 0.7]))}
    assert pt(x).shape == x.shape
    st.width = {0: ([2, 0], torch.tensor([1.0, 0.0]))}
    assert torch.allclose(pt(x), bn(x))


def test_low_tau_sampling_becomes_argmax():
    logits = torch.tensor([0.1, 0.9, 0.3, 0.2], requires_grad=True)
    idx, w = gumbel_select2(logits, 0.01, noise=torch.zeros(4))
    assert idx[0] == 1 and float(w[0].detach()) > 0.999
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        noise = -torch.log(-torch.log(torch.rand(4, generator=g)))
        idx, w = gumbel_select2(logits, 1e-4, noise=noise)
        assert idx[0] == int((logits.log_softmax(-1) + noise).argmax()) and float(w[0].detach()) > 0.999
    idx, w = gumbel_select2(logits, 10.0, noise=torch.zeros(4))
    assert float(w.min().detach()) > 0.3  # high tau: the two picks are mixed


def test_macs_model_is_exact():
    model = _resnet()
    space = tas.build_space(model, X)
    full = fxprune.count(model, X).macs
    rng = random.Random(0)
    for _ in range(3):
        wi = [rng.randrange(len(c)) for c in space.widths]
        di = [rng.randrange(len(c)) for c in space.depths]
        gm = tas.apply_arch(model, X, tas.derive_plan(space, wi, di))
        assert space.macs_of(wi, di) == pytest.approx(fxprune.count(gm, X).macs / full, abs=1e-9)


def test_fit_to_target_by_construction():
    model = _resnet()
    space = tas.build_space(model, X)
    net = tas.Supernet(model, space)
    full_w = [len(c) - 1 for c in space.widths]
    full_d = [len(c) - 1 for c in space.depths]
    w, d, F_cur = tas.fit_to_target(space, net, full_w, full_d, 0.461, 0.05)
    gm = tas.apply_arch(model, X, tas.derive_plan(space, w, d))
    real = fxprune.count(gm, X).macs / fxprune.count(model, X).macs
    assert 0.461 - 0.05 <= real <= 0.461 and real == pytest.approx(F_cur)


def test_short_search_meets_target(tmp_path):
    model = _resnet()
    res = tas.search(model, X, _data(), target=0.5, epochs=1, batch_size=8, w_lr=0.01,
                     out_dir=tmp_path)
    gm = tas.apply_arch(model, X, res.plan)
    real = fxprune.count(gm, X).macs / fxprune.count(model, X).macs
    assert abs(real - 0.5) <= 0.05 * 0.5 + 0.05 and real <= 0.5
    assert res.plan.criterion == "tas" and len(res.history) == 1
    assert gm(X).shape == (2, 10)
    again = tas.search(model, X, _data(), target=0.5, epochs=1, batch_size=8,
                       out_dir=tmp_path, resume=True)  # resumes: nothing left to run
    assert again.history == res.history


def test_arch_step_reaches_logits():
    model = _resnet()
    net = tas.Supernet(model, tas.build_space(model, X)).train()
    net.sample(1.0)
    loss = torch.nn.functional.cross_entropy(net(X), torch.tensor([1, 2])) + \
        tas.flops_loss(1.0, net.expected_macs(), 0.461).float()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.arch_parameters())


def test_supernet_full_width_equals_model():
    model = _resnet()
    net = tas.Supernet(model, tas.build_space(model, X)).eval()
    assert torch.allclose(net(X), model(X), atol=1e-5)  # no sample: the full network
    net.state.width = {g: ([len(c) - 1, 0], torch.tensor([1.0, 0.0]))
                       for g, c in enumerate(net.space.widths)}
    net.state.depth = {s: torch.nn.functional.one_hot(torch.tensor(len(c) - 1), len(c)).float()
                       for s, c in enumerate(net.space.depths)}
    assert torch.allclose(net(X), model(X), atol=1e-5)


@pytest.mark.parametrize("blocks", [("layer1.1",), ("layer1.2", "layer2.1", "layer3.2")])
def test_depth_removal_equals_zeroed_blocks(blocks):
    model = _resnet()
    oracle = _zero_blocks(model, blocks)
    gm = remove_blocks(fxprune.trace(model, X), blocks)  # the local pass
    assert torch.allclose(gm(X), oracle(X), atol=1e-5)
    assert not any(n.target.startswith(blocks[0] + ".") for n in gm.graph.nodes
                   if n.op == "call_module")
    space = tas.build_space(model, X)
    plan = tas.derive_plan(space, [len(c) - 1 for c in space.widths], [len(c) - 1 for c in space.depths])
    import dataclasses

    _run_and_check(model, X, dataclasses.replace(plan, removed_blocks=blocks), oracle)


def test_depth_removal_torchvision():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    space = tas.build_space(model, x)
    assert [n for n, _ in space.stages] == ["layer1", "layer2", "layer3", "layer4"]
    plan = tas.derive_plan(space, [len(c) - 1 for c in space.widths], [0, 1, 0, 1])
    assert plan.removed_blocks == ("layer1.1", "layer3.1")
    _run_and_check(model, x, plan, _zero_blocks(model, plan.removed_blocks), atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(find_cifar10() is None, reason="CIFAR-10 not found (FXPRUNE_CIFAR10)")
def test_experiment_smoke(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "experiments" / "tas.py"
    spec = importlib.util.spec_from_file_location("_exp_tas", path)
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    r = exp.main(["--preset", "smoke", "--out", str(tmp_path), "--cache", str(tmp_path / "c")])
    t, u = r["rows"]
    assert t["macs_frac"] <= 0.461 + 1e-9 and t["acc_kd"] is not None and u["acc_kd"] is not None
    assert all((tmp_path / f"tas.{ext}").exists() for ext in ("json", "md", "png"))
