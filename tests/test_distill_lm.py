"""fxprune.train.distill_lm and causal_lm_kd_loss on a tiny Llama pruned by fxprune.hf:
the loss is per next-token and zero against itself, distillation lowers it, and an
interrupted run resumed from its checkpoint ends with the same weights."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import hf_models  # noqa: E402

import fxprune.hf as H  # noqa: E402
from fxprune.errors import FxPruneError  # noqa: E402
from fxprune.train.distill_lm import distill_lm  # noqa: E402
from fxprune.train.losses import causal_lm_kd_loss, kd_loss  # noqa: E402


def _pair():
    wrapped, (ids,), _ = hf_models.build("llama")
    teacher = wrapped.model
    student = H.prune(teacher, ids, ratio=0.5)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, hf_models.VOCAB, (2, 12), generator=g) for _ in range(4)]
    return teacher, student, batches


def _kd(student, teacher, ids):
    with torch.no_grad():
        return float(causal_lm_kd_loss(student(input_ids=ids).logits,
                                       teacher(input_ids=ids).logits, ids, alpha=1.0))


def test_loss_is_per_next_token():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    flat = (s[:, :-1].reshape(-1, 7), t[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1))
    want = kd_loss(*flat, 0.5, 2.0)
    torch.testing.assert_close(causal_lm_kd_loss(s, t, ids, 0.5, 2.0), want)
    assert float(causal_lm_kd_loss(s, s, ids, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(FxPruneError, match=r"\[B, L, V\]"):
        causal_lm_kd_loss(s[0], t[0], ids)


def test_distillation_lowers_the_kd_loss():
    teacher, student, batches = _pair()
    before = sum(_kd(student, teacher, b) for b in batches)
    res = distill_lm(student, teacher, batches, steps=24, lr=3e-3, alpha=1.0, progress=False)
    after = sum(_kd(res.model, teacher, b) for b in batches)
    assert after < 0.8 * before, (before, after)
    assert type(res.model) is type(student) and res.model is not student
    assert len(res.history) == 24 and not teacher.training


def test_resume_continues_bit_identically(tmp_path):
    teacher, student, batches = _pair()
    kw = dict(lr=1e-3, progress=False, save_every=3)
    full = distill_lm(student, teacher, batches, steps=6, **kw)
    distill_lm(student, teacher, batches, steps=3, out_dir=tmp_path, **kw)
    with pytest.raises(FxPruneError, match="resume=True"):
        distill_lm(student, teacher, batches, steps=6, out_dir=tmp_path, **kw)
    resumed = distill_lm(student, teacher, batches, steps=6, out_dir=tmp_path, resume=True, **kw)
    assert [r["step"] for r in resumed.history] == list(range(1, 7))
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
