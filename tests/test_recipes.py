"""Tests for the retraining recipes (fxprune.train.recipes): the schedule and weights
each recipe starts from, and the hooks the pruning code plugs into."""
from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn
from torch.utils.data import TensorDataset

from fxprune.errors import FxPruneError
from fxprune.train import (
    TrainConfig,
    apply_rewind,
    available_rewind_epochs,
    distill,
    fine_tune,
    iterative,
    load_matching,
    load_rewind_weights,
    lr_rewind,
    reinitialize,
    remaining_fraction_schedule,
    scratch_b,
    scratch_b_epochs,
    scratch_e,
    train_original,
    weight_rewind,
)

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """MLP with BatchNorm; `hidden` stands in for a structurally pruned width."""

    def __init__(self, hidden: int = 12, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(6, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _data(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, x[:, :3].argmax(1))


def _cfg(out_dir=None, **kw) -> TrainConfig:
    base = dict(epochs=4, lr=0.05, batch_size=8, device="cpu", progress=False,
                milestones=(0.5, 0.75), out_dir=out_dir)
    return TrainConfig(**{**base, **kw})


class _Recorder:
    """grad_hook that records, per step, the optimizer's LR and (first call only) the
    weights the run started from - the hook runs before the first optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.start: dict[str, torch.Tensor] | None = None

    def __call__(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        self.lrs.append(opt.param_groups[0]["lr"])
        if self.start is None:
            self.start = {k: p.detach().clone() for k, p in model.named_parameters()}

    def per_epoch(self, epochs: int) -> list[float]:
        """The one LR each epoch's steps used (asserting it was constant in the epoch)."""
        n = len(self.lrs) // epochs
        assert n * epochs == len(self.lrs)
        chunks = [set(self.lrs[i * n:(i + 1) * n]) for i in range(epochs)]
        assert all(len(c) == 1 for c in chunks), chunks
        return [c.pop() for c in chunks]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A finished 4-epoch original run with every epoch's weights kept."""
    cfg = _cfg(tmp_path_factory.mktemp("orig"))
    return cfg, train_original(TinyNet(), _data(), None, cfg)


# --- fine-tune and scratch ----------------------------------------------------------------

def test_fine_tune_lr_is_constant_and_input_untouched():
    model, rec = TinyNet(), _Recorder()
    before = _state(model)
    res = fine_tune(model, _data(), None, _cfg(), lr=1e-3, epochs=3, grad_hook=rec)
    assert set(rec.lrs) == {1e-3} and len(res.history) == 3
    assert _same(rec.start, dict(model.named_parameters()))  # inherited weights
    assert _same(before, model.state_dict())


def test_reinitialize_resets_every_parameter_and_bn_stats():
    model = TinyNet()
    model.train()
    model(torch.randn(16, 6))  # non-trivial running stats
    with torch.no_grad():
        model.bn.weight.mul_(3.0)  # BN affine away from its (1, 0) init
        model.bn.bias.add_(0.5)
    before = _state(model)
    reinitialize(model, seed=7)
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), name
    assert torch.equal(model.bn.running_mean, torch.zeros(12))
    assert torch.equal(model.bn.running_var, torch.ones(12))
    assert int(model.bn.num_batches_tracked) == 0


def test_reinitialize_refuses_parameters_without_reset():
    class Scaled(nn.Module):
        """A module owning a bare nn.Parameter and no reset_parameters()."""

        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    model = nn.Sequential(nn.Linear(3, 3), Scaled())
    before = _state(model)
    with pytest.raises(FxPruneError, match="1.scale"):
        reinitialize(model)
    assert _same(before, model.state_dict())  # nothing changed


def test_reinitialize_keeps_torch_prune_masks():
    lin = nn.Linear(6, 4)
    tprune.l1_unstructured(lin, "weight", amount=0.5)
    orig, mask = lin.weight_orig.clone(), lin.weight_mask.clone()
    reinitialize(lin, seed=3)
    assert not torch.equal(lin.weight_orig, orig) and torch.equal(lin.weight_mask, mask)


def test_scratch_e_trains_a_fresh_init_for_e_epochs():
    model, rec = TinyNet(), _Recorder()
    with torch.no_grad():
        for p in model.parameters():  # away from any deterministic init (BN's 1 and 0)
            p.add_(torch.randn_like(p))
    cfg = _cfg(epochs=3)
    res = scratch_e(model, _data(), None, cfg, grad_hook=rec)
    assert len(res.history) == cfg.epochs
    assert all(not torch.equal(rec.start[k], p) for k, p in model.named_parameters())


def test_scratch_e_applies_the_models_own_init():
    seen = []

    def init(m):
        seen.append(type(m).__name__)
        for p in m.parameters():
            torch.nn.init.constant_(p, 0.25)

    cfg = _cfg(epochs=1)
    rec = _Recorder()
    scratch_e(TinyNet(), _data(), None, cfg, init=init, grad_hook=rec)
    assert seen == ["TinyNet"]
    assert all(torch.all(p == 0.25) for p in rec.start.values())


@pytest.mark.parametrize("epochs,full,pruned,cap,want", [
    (160, 2.0e8, 1.0e8, None, 320), (160, 3.0, 2.0, None, 240), (3, 3.0, 2.0, None, 5),
    (160, 4.0, 1.0, 2.0, 320), (10, 1.0, 1.0, None, 10),
])
def test_scratch_b_epoch_count(epochs, full, pruned, cap, want):
    assert scratch_b_epochs(epochs, full, pruned, max_factor=cap) == want


def test_scratch_b_runs_budget_with_drops_at_half_and_three_quarters():
    rec = _Recorder()
    cfg = _cfg(epochs=4, schedule="constant", gamma=0.5)
    res = scratch_b(TinyNet(), _data(), None, cfg, macs_full=3.0, macs_pruned=2.0, grad_hook=rec)
    lr = cfg.lr
    want = [lr, lr, lr, lr * 0.5, lr * 0.5, lr * 0.25]  # 6 epochs, drops at epochs 3 and 5
    assert len(res.history) == 6
    assert rec.per_epoch(6) == pytest.approx(want)
    with pytest.raises(FxPruneError):
        scratch_b_epochs(10, 1.0, 0.0)


# --- rewinding ---------------------------------------------------------------------------------

def test_train_original_keeps_rewind_weights(original, tmp_path):
    cfg, res = original
    assert available_rewind_epochs(cfg.out_dir) == list(range(cfg.epochs + 1))
    assert _same(load_rewind_weights(cfg.out_dir, cfg.epochs), res.model.state_dict())
    some = cfg.replace(out_dir=tmp_path)
    train_original(TinyNet(), _data(), None, some, rewind_epochs=[1])
    assert available_rewind_epochs(tmp_path) == [1, some.epochs]


def test_weight_rewind_restores_saved_tensors_and_replays_tail(original, tmp_path):
    cfg, _ = original
    t, rec = 2, _Recorder()
    saved = load_rewind_weights(cfg.out_dir, cfg.epochs - t)
    res = weight_rewind(TinyNet(seed=3), _data(), None, cfg.replace(out_dir=tmp_path),
                        original_dir=cfg.out_dir, t=t, grad_hook=rec)
    assert _same(rec.start, {k: saved[k] for k in rec.start})  # bit for bit
    assert [r["epoch"] for r in res.history] == [2, 3]
    assert rec.per_epoch(t) == [cfg.lr_at(2), cfg.lr_at(3)]
    fresh = TinyNet(seed=4)
    load_matching(fresh, saved)
    assert _same(fresh.state_dict(), saved)  # buffers too


def test_weight_rewind_refuses_to_write_into_the_original(original):
    cfg, _ = original
    with pytest.raises(FxPruneError, match="out_dir"):
        weight_rewind(TinyNet(), _data(), None, cfg, original_dir=cfg.out_dir, t=1)


def test_structured_rewind_needs_and_uses_a_mapping(original):
    cfg, _ = original
    saved = load_rewind_weights(cfg.out_dir, 1)
    keep = torch.tensor([0, 2, 5, 7, 8, 11])
    with pytest.raises(FxPruneError, match="rewind_weights"):
        load_matching(TinyNet(hidden=6), saved)

    def select(pruned: nn.Module, sd: dict) -> dict:
        """Index-select the kept hidden units (what the lead's plan-based mapping does)."""
        out = {k: v.index_select(0, keep) if k.startswith(("fc1.", "bn.")) and v.ndim else v
               for k, v in sd.items()}
        out["fc2.weight"] = sd["fc2.weight"][:, keep]
        return out

    pruned = apply_rewind(TinyNet(hidden=6), saved, select)
    assert torch.equal(pruned.fc1.weight, saved["fc1.weight"][keep])
    assert torch.equal(pruned.bn.running_var, saved["bn.running_var"][keep])
    assert torch.equal(pruned.fc2.weight, saved["fc2.weight"][:, keep])


def test_default_rewind_fills_torch_prune_orig_and_keeps_mask(original):
    cfg, _ = original
    saved = load_rewind_weights(cfg.out_dir, 2)
    model = TinyNet(seed=9)
    tprune.l1_unstructured(model.fc1, "weight", amount=0.5)
    mask = model.fc1.weight_mask.clone()
    load_matching(model, saved)
    assert torch.equal(model.fc1.weight_orig, saved["fc1.weight"])
    assert torch.equal(model.fc1.weight_mask, mask)


def test_lr_rewind_keeps_weights_and_replays_last_t_lrs(original):
    cfg, res = original
    t, rec = 3, _Recorder()
    pruned = res.model
    out = lr_rewind(pruned, _data(), None, cfg.replace(out_dir=None), t=t, grad_hook=rec)
    tail = [cfg.lr_at(e) for e in range(cfg.epochs - t, cfg.epochs)]
    assert rec.per_epoch(t) == tail
    assert [r["lr"] for r in out.history] == tail
    assert _same(rec.start, dict(pruned.named_parameters()))
    with pytest.raises(FxPruneError, match="t="):
        lr_rewind(pruned, _data(), None, cfg, t=cfg.epochs + 1)


# --- distillation and iterative pruning ----------------------------------------------------------

def test_distill_leaves_teacher_untouched(original):
    _, res = original
    teacher = res.model
    teacher.train()
    before = _state(teacher)
    out = distill(TinyNet(hidden=6), teacher, _data(), None, _cfg(epochs=2), alpha=0.5, T=2.0)
    assert len(out.history) == 2 and teacher.training
    assert _same(before, teacher.state_dict())


def test_remaining_fraction_schedule():
    assert remaining_fraction_schedule(rounds=3) == pytest.approx([0.2, 0.36, 0.488])
    assert remaining_fraction_schedule(0.5, rounds=3) == pytest.approx([0.5, 0.75, 0.875])
    with pytest.raises(FxPruneError):
        remaining_fraction_schedule(1.0, rounds=2)


def _shrink(model: nn.Module, r: int) -> nn.Module:
    """Toy prune step: keep the first 3/4 of the hidden units."""
    h = model.fc1.out_features * 3 // 4
    new = TinyNet(hidden=h, seed=r)
    with torch.no_grad():
        new.fc1.weight.copy_(model.fc1.weight[:h])
        new.fc2.weight.copy_(model.fc2.weight[:, :h])
    return new


def test_iterative_alternates_and_resumes(tmp_path):
    calls: list[tuple[str, int, int]] = []

    def prune_step(m: nn.Module, r: int) -> nn.Module:
        calls.append(("prune", r, m.fc1.out_features))
        return _shrink(m, r)

    def retrain_step(m: nn.Module, r: int) -> nn.Module:
        calls.append(("retrain", r, m.fc1.out_features))
        if r == 1 and not any(c[0] == "killed" for c in calls):
            calls.append(("killed", r, 0))
            raise RuntimeError("simulated kill")
        return fine_tune(m, _data(), None, _cfg(), epochs=1).model

    with pytest.raises(RuntimeError):
        iterative(TinyNet(hidden=16), prune_step, retrain_step, 3, out_dir=tmp_path)
    with pytest.raises(FxPruneError, match="resume=True"):
        iterative(TinyNet(hidden=16), prune_step, retrain_step, 3, out_dir=tmp_path)
    final = iterative(TinyNet(hidden=16), prune_step, retrain_step, 3, out_dir=tmp_path,
                      resume=True)
    # resuming rebuilds round 0 by replaying its prune step (no pickle), never its retraining
    assert calls == [("prune", 0, 16), ("retrain", 0, 12), ("prune", 1, 12),
                     ("retrain", 1, 9), ("killed", 1, 0), ("prune", 0, 16),
                     ("prune", 1, 12), ("retrain", 1, 9), ("prune", 2, 9), ("retrain", 2, 6)]
    assert final.fc1.out_features == 6
