"""Tests for the training loop (fxprune.train.loop): schedule, resume, checkpoints,
metrics file and the distillation loss."""
from __future__ import annotations

import json
import math
import pickle
import random
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from fxprune.errors import FxPruneError
from fxprune.train import TrainConfig, kd_loss, read_metrics, train
from fxprune.train.checkpoint import atomic_save, get_rng_state, set_rng_state

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """MLP with BatchNorm and dropout: running stats and the global RNG both matter,
    so an inexact resume (buffers or RNG not restored) changes the weights."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(),
                                  nn.Dropout(0.3), nn.Linear(12, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _data(n: int = 48, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, :3] * torch.tensor([1.0, -1.0, 0.5])).argmax(1))


def _cfg(tmp_path=None, **kw) -> TrainConfig:
    base = dict(epochs=3, lr=0.05, batch_size=8, device="cpu", progress=False,
                milestones=(0.5,), out_dir=tmp_path)
    return TrainConfig(**{**base, **kw})


def _lr_recorder() -> tuple[list[float], Callable[[nn.Module, Any], None]]:
    seen: list[float] = []
    return seen, lambda model, opt: seen.append(opt.param_groups[0]["lr"])


class _Kill(Exception):
    pass


def _kill_after(epoch: int):
    def cb(e: int, rec: dict) -> None:
        if e == epoch:
            raise _Kill
    return cb


# --- schedule ---------------------------------------------------------------------------

def test_step_schedule_drops_at_milestones():
    cfg = TrainConfig(epochs=10, lr=0.1, milestones=(0.5, 0.75), gamma=0.1)
    got = [cfg.lr_at(e) for e in range(10)]
    want = [0.1] * 5 + [0.1 * 0.1] * 3 + [0.1 * 0.1 * 0.1] * 2
    assert got == pytest.approx(want)


def test_cosine_and_constant_schedules():
    cos = TrainConfig(epochs=8, lr=0.2, schedule="cosine")
    lrs = [cos.lr_at(e) for e in range(8)]
    assert lrs[0] == pytest.approx(0.2) and cos.lr_at(4) == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    const = TrainConfig(epochs=8, lr=0.2, schedule="constant")
    assert {const.lr_at(e) for e in range(8)} == {0.2}


@pytest.mark.parametrize("bad", [dict(schedule="linear"), dict(lr=0), dict(epochs=-1),
                                 dict(milestones=(0.75, 0.5)), dict(batch_size=0)])
def test_bad_config_names_the_field(bad):
    with pytest.raises(FxPruneError, match=next(iter(bad))):
        TrainConfig(**bad)


def test_optimizer_uses_the_schedule_lr_each_epoch():
    seen, hook = _lr_recorder()
    cfg = _cfg(epochs=4, milestones=(0.5, 0.75))
    res = train(TinyNet(), _data(), _data(16, 1), cfg, grad_hook=hook)
    steps = len(seen) // 4
    per_epoch = [seen[i * steps:(i + 1) * steps] for i in range(4)]
    assert [set(s) for s in per_epoch] == [{cfg.lr_at(e)} for e in range(4)]
    assert [r["lr"] for r in res.history] == [cfg.lr_at(e) for e in range(4)]


def test_start_epoch_runs_only_the_tail():
    res = train(TinyNet(), _data(), None, _cfg(epochs=5), start_epoch=3)
    assert [r["epoch"] for r in res.history] == [3, 4]
    assert math.isnan(res.final["test_acc"])


# --- checkpoints and resume ---------------------------------------------------------------

def test_resume_after_kill_is_bit_identical(tmp_path):
    full = train(TinyNet(), _data(), _data(16, 1), _cfg(tmp_path / "a", epochs=4))
    cfg = _cfg(tmp_path / "b", epochs=4)
    with pytest.raises(_Kill):
        train(TinyNet(), _data(), _data(16, 1), cfg, on_epoch_end=_kill_after(1))
    torch.manual_seed(1234)  # disturb the global RNG: resume must restore its own
    resumed = train(TinyNet(seed=99), _data(), _data(16, 1), cfg, resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3]
    assert [r["epoch"] for r in read_metrics(cfg.out_dir)] == [0, 1, 2, 3]


def test_resume_of_finished_run_trains_nothing(tmp_path):
    cfg = _cfg(tmp_path, epochs=2)
    first = train(TinyNet(), _data(), None, cfg)
    again = train(TinyNet(seed=5), _data(), None, cfg, resume=True)
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k])


def test_existing_checkpoint_is_never_overwritten(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    train(TinyNet(), _data(), None, cfg)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FxPruneError, match="resume=True"):
        train(TinyNet(), _data(), None, cfg)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_with_another_config_is_refused(tmp_path):
    with pytest.raises(_Kill):
        train(TinyNet(), _data(), None, _cfg(tmp_path), on_epoch_end=_kill_after(0))
    with pytest.raises(FxPruneError, match="lr"):
        train(TinyNet(), _data(), None, _cfg(tmp_path, lr=0.5), resume=True)


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "x.pt"
    atomic_save({"a": torch.ones(2)}, path)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_save({"f": lambda: 0}, path)
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_rng_state_round_trip():
    state = get_rng_state()
    a = (torch.rand(3), np.random.rand(), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


# --- metrics ---------------------------------------------------------------------------------

def test_metrics_jsonl_has_one_parseable_line_per_epoch(tmp_path):
    res = train(TinyNet(), _data(), _data(16, 1), _cfg(tmp_path, epochs=3))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    recs = [json.loads(s) for s in lines]
    keys = {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "time"}
    assert all(set(r) == keys for r in recs)
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    assert [r["test_acc"] for r in recs] == [h["test_acc"] for h in res.history]


# --- distillation loss --------------------------------------------------------------------

def test_kd_loss_is_ce_at_alpha_zero_and_scaled_kl_at_one():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0])
    assert torch.equal(kd_loss(s, t, y, alpha=0.0, T=4.0), F.cross_entropy(s, y))
    T = 3.0
    pt, log_ps = F.softmax(t / T, 1), F.log_softmax(s / T, 1)
    kl = (pt * (pt.log() - log_ps)).sum(1).mean()
    assert torch.allclose(kd_loss(s, t, y, alpha=1.0, T=T), T * T * kl)


def test_kd_gradient_flows_only_to_the_student():
    student, teacher = TinyNet(0), TinyNet(1)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in student.state_dict().items()}
    train(student, _data(), None, _cfg(epochs=1), teacher=teacher, kd_alpha=0.7, kd_T=2.0)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t_before.items())
    assert all(p.grad is not None for p in student.parameters())
    assert not torch.equal(s_before["body.0.weight"], student.body[0].weight)
    t_logits = torch.randn(4, 3, requires_grad=True)
    kd_loss(torch.randn(4, 3, requires_grad=True), t_logits, torch.zeros(4, dtype=torch.long)
            ).backward()
    assert t_logits.grad is None
