"""Training losses: cross-entropy and Hinton-style knowledge distillation (also per token)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FxPruneError

__all__ = ["kd_loss", "causal_lm_kd_loss"]


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.9,
    T: float = 4.0,
) -> torch.Tensor:
    """`alpha * T^2 * KL + (1 - alpha) * CE(student, targets)`.

    KL is between the temperature-softened distributions softmax(t/T) of the
    teacher and softmax(s/T) of the student, computed as
    `F.kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean")`, i.e.
    KL(p_teacher || p_student) as in Hinton et al. (2015). The T^2 factor keeps
    the soft-target gradients on the scale of the hard-target ones. The teacher
    logits are detached, so no gradient ever reaches the teacher.
    """
    if not 0.0 <= alpha <= 1.0:
        raise FxPruneError(f"kd_alpha={alpha!r} is invalid: expected a value in [0, 1].")
    if T <= 0:
        raise FxPruneError(f"kd_T={T!r} is invalid: expected a temperature > 0.")
    ce = F.cross_entropy(student_logits, targets)
    if alpha == 0.0:
        return ce
    soft_t = F.softmax(teacher_logits.detach().float() / T, dim=1)
    log_s = F.log_softmax(student_logits.float() / T, dim=1)
    kl = F.kl_div(log_s, soft_t, reduction="batchmean")
    return alpha * T * T * kl + (1.0 - alpha) * ce


def causal_lm_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    input_ids: torch.Tensor,
    alpha: float = 0.9,
    T: float = 1.0,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`kd_loss` per next-token prediction of a causal LM (logits `[B, L, V]`, ids `[B, L]`).

    Position `t` predicts token `t + 1`, so the last position is dropped and the targets
    are `input_ids[:, 1:]`; every remaining (unmasked) position is one row of `kd_loss`,
    so KL and CE are both means over tokens.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 3:
        raise FxPruneError(f"causal_lm_kd_loss: student logits {tuple(student_logits.shape)} and "
                           f"teacher logits {tuple(teacher_logits.shape)} must both be [B, L, V]")
    vocab = student_logits.shape[-1]
    s = student_logits[:, :-1].reshape(-1, vocab)
    t = teacher_logits[:, :-1].reshape(-1, vocab)
    y = input_ids[:, 1:].reshape(-1)
    if attention_mask is not None:
        keep = attention_mask[:, 1:].reshape(-1).bool()
        s, t, y = s[keep], t[keep], y[keep]
    return kd_loss(s, t, y, alpha=alpha, T=T)
