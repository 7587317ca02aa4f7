"""Tests for fxprune/search/jackpot.py: STE gradients, exact sparsity, step-0 magnitude
mask, the short restriction (golden cases and a seeded fuzzer), the criterion stub."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from fxprune.data import ImageTensorDataset, find_cifar10
from fxprune.errors import FxPruneError
from fxprune.passes.unstructured import fold, magnitude_masks
from fxprune.search import jackpot as J
from fxprune.train import TrainConfig


class Small(nn.Module):
    """conv-BN-relu, conv-BN-relu, pool, linear classifier: two prunable convs plus a
    dense classifier; BN running stats must move while BN affine stays frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _net(seed: int = 0) -> Small:
    torch.manual_seed(seed)
    return Small()


def _data(n: int = 32, seed: int = 0) -> ImageTensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return ImageTensorDataset(x, y, [0.5] * 3, [0.25] * 3)


def _sm(mask: list[int], scores: list[float]) -> J.ScoreMask:
    sm = J.ScoreMask(torch.tensor(mask, dtype=torch.bool))
    with torch.no_grad():
        sm.scores.copy_(torch.tensor(scores))
    return sm


def _run_and_check(mask, scores, want, fraction=1.0):
    sm = _sm(mask, scores)
    before = int(sm.mask.sum())
    n = J.short_restriction(sm, fraction)
    assert sm.mask.int().tolist() == want
    assert int(sm.mask.sum()) == before
    return n


def test_gradients_reach_scores_never_weights():
    net = _net()
    scores = J.attach_scores(net, 0.5)
    rm = net.bn1.running_mean.clone()
    net.train()
    nn.functional.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()
    assert set(scores) == {"conv1.weight", "conv2.weight"}
    for sm in scores.values():
        assert sm.scores.grad is not None and sm.scores.grad.abs().sum() > 0
    score_ids = {id(sm.scores) for sm in scores.values()}
    for name, p in net.named_parameters():
        if id(p) not in score_ids:
            assert not p.requires_grad and p.grad is None, name
    assert not torch.equal(rm, net.bn1.running_mean)  # BN statistics still update


def test_ste_value_is_masked_weight():
    net = _net()
    scores = J.attach_scores(net, 0.5)
    w = net.conv1.parametrizations.weight.original
    assert torch.equal(net.conv1.weight, w * scores["conv1.weight"].mask)


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_step0_mask_is_magnitude_mask_and_exact(sparsity):
    net = _net()
    want = magnitude_masks(net, sparsity, scope="global", layers="conv+linear",
                           exclude=["fc.weight"])
    scores = J.attach_scores(net, sparsity)
    plan = J.current_plan(scores)
    assert set(plan.masks) == set(want.masks) and "fc.weight" not in plan.masks
    for sm in scores.values():  # the scores' own top-k is the magnitude mask: 1.0 vs 0.99
        s = sm.scores.detach()
        assert float(s[sm.mask].min()) == 1.0
        assert float(s[~sm.mask].max()) == pytest.approx(0.99)
    for k in want.masks:
        assert torch.equal(plan.masks[k], want.masks[k]), k
    n = sum(m.numel() for m in plan.masks.values())
    pruned = sum(int((~m).sum()) for m in plan.masks.values())
    assert pruned == int(sparsity * n + 0.5)


def test_short_restriction_golden():
    # P=3, theta=0.3: revived {3 (0.95)}, dropped {2 (0.1)}: one swap
    assert _run_and_check([1, 1, 1, 0, 0, 0], [0.5, 0.9, 0.1, 0.95, 0.2, 0.3],
                          [1, 1, 0, 1, 0, 0]) == 1
    # two revived (0.8, 0.95), two dropped (0.1, 0.2); half: best revived vs worst kept
    assert _run_and_check([1, 1, 1, 1, 0, 0, 0, 0], [0.1, 0.2, 0.6, 0.7, 0.8, 0.95, 0.05, 0.3],
                          [0, 1, 1, 1, 0, 1, 0, 0], fraction=0.5) == 1
    # sets of unequal size (a tie at theta): no swap at all
    assert _run_and_check([1, 1, 0, 0], [0.2, 0.2, 0.9, 0.1], [1, 1, 0, 0]) == 0
    # nothing revived: no change
    assert _run_and_check([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 0


def test_short_restriction_fuzz():
    seed = 1234
    g = torch.Generator().manual_seed(seed)
    for trial in range(50):
        n = int(torch.randint(4, 40, (1,), generator=g))
        keep = torch.rand(n, generator=g) < 0.5
        sm = J.ScoreMask(keep)
        with torch.no_grad():
            sm.scores.copy_(torch.rand(n, generator=g))
        old, s = sm.mask.clone(), sm.scores.detach().clone()
        J.short_restriction(sm)
        assert int(sm.mask.sum()) == int(old.sum()), (seed, trial)
        if 0 < sm.n_pruned < n:  # distinct scores: fraction 1 lands on the top-k exactly
            top = torch.zeros(n, dtype=torch.bool)
            top[s.topk(n - sm.n_pruned).indices] = True
            assert torch.equal(sm.mask, top), (seed, trial)
        theta = s.kthvalue(max(sm.n_pruned, 1)).values
        assert bool((s[sm.mask & ~old] > theta).all()) and bool((s[old & ~sm.mask] <= theta).all())


def test_run_trains_scores_only_and_keeps_sparsity(tmp_path):
    net = _net()
    orig = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = J.default_config(epochs=2, batch_size=8, lr=10.0, progress=False, device="cpu",
                           out_dir=tmp_path / "s")
    res = J.run(net, _data(), _data(16, 1), sparsity=0.75, cfg=cfg)
    n = sum(m.numel() for m in res.plan.masks.values())
    assert round(res.plan.sparsity() * n) == int(0.75 * n + 0.5)
    assert res.plan.criterion == "jackpot" and res.swaps > 0
    for k, v in net.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, orig[k]), k
    init = J.current_plan(J.attach_scores(_net(), 0.75))
    for k, m in res.plan.masks.items():  # per-layer kept counts never change
        assert int(m.sum()) == int(init.masks[k].sum())
    folded = fold(res.model, copy=True)
    for k, m in res.plan.masks.items():  # weights are frozen: only the mask differs
        assert torch.equal(folded.get_parameter(k), orig[k] * m)
    assert torch.equal(folded.bn1.weight, orig["bn1.weight"])
    assert not torch.equal(folded.bn1.running_mean, orig["bn1.running_mean"])


def test_jackpot_criterion_points_to_search():
    with pytest.raises(FxPruneError, match="fxprune.search.jackpot.search"):
        fxprune.prune(_net(), torch.randn(1, 3, 8, 8), 0.5, criterion="jackpot")


def test_bad_sparsity():
    with pytest.raises(FxPruneError, match="sparsity"):
        J.run(_net(), _data(), sparsity=1.0, cfg=TrainConfig(epochs=1, progress=False))


def _experiment(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.skipif(find_cifar10() is None, reason="CIFAR-10 not found (FXPRUNE_CIFAR10)")
def test_experiment_smoke(tmp_path):
    exp = _experiment("jackpot")
    r = exp.main(["--preset", "smoke", "--out", str(tmp_path), "--cache", str(tmp_path / "c")])
    assert {"dense", "magnitude", "random", "jackpot"} == set(r["rows"])
    assert all((tmp_path / f"jackpot.{ext}").exists() for ext in ("json", "md", "png"))
