"""ATen rules for attention as Hugging Face models write it (export frontend).

Merged last into ``fxprune.rules.aten.ATEN_RULES``, so an entry here overrides
the core ATen rule of the same overload. What these models need beyond the
core table:

- ``scaled_dot_product_attention``: heads of q, k, v and the output are one
  dim; with ``enable_gqa=True`` query head ``h`` shares key/value head
  ``h // (Hq / Hkv)``, so a unit is one whole KV group (its query heads, its
  key and value rows, its output-projection columns) and
  ``num_key_value_groups`` stays valid (with one KV head, multi-query
  attention, the query heads are the units and the KV head stays). The repeat_kv form
  (unsqueeze → expand → reshape) reaches the same units through the core
  expand/reshape rules: the merge ``(Hkv, n_rep) → Hq`` ties query head ``h``
  to KV head ``h // n_rep``. An attention mask or position bias broadcasts
  against the scores ``(B, H, L, S)``: a per-head bias (T5's relative
  attention bias, Swin's relative position table) joins the head units. The
  head dim stays whole (the softmax scale and rotary embeddings depend on it).
- RMSNorm (``x * rsqrt(mean(x**2, -1, keepdim=True) + eps)``, LLaMA/Qwen2/
  Mistral/T5): the mean of squares over the hidden dim is a normalisation, not
  a channel reduction. The hidden dim stays prunable and is marked mixing (the
  pruned model normalises over fewer channels, so the dead-channel oracle is
  not exact), as for LayerNorm.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from . import elementwise as E
from .base import RuleContext, norm_dim

__all__ = ["RULES", "sdpa", "rms_mean", "attention_mask"]

aten = torch.ops.aten


def _couple_batch(ctx: RuleContext, refs, y) -> None:
    """Leading (batch) dims, right-aligned before (H, L, D), broadcast into the output."""
    for r in refs:
        for j in range(4, min(r.ndim, y.ndim) + 1):
            if r.shape[-j] == y.shape[-j]:
                ctx.couple(r, -j, y, -j)


def _couple_heads(ctx: RuleContext, q, k, v, y, gqa: bool) -> None:
    """q/out heads are one dim; k/v heads are one dim; with GQA query head h is KV head h // rep."""
    ctx.couple(q, -3, y, -3)
    ctx.couple(k, -3, v, -3)
    hq, hk = q.shape[-3], k.shape[-3]
    if hq == hk:
        ctx.couple(q, -3, k, -3)
    elif gqa and hk == 1:
        pass  # multi-query: every query head reads the one KV head; query heads stay free
    elif gqa and hk and hq % hk == 0:
        h = np.arange(hq)
        ctx.link(q, -3, h, k, -3, h // (hq // hk), "block")
    else:
        for r in (q, k, v, y):
            ctx.freeze(r, -3, f"attention with {hq} query heads and {hk} key heads "
                       "without enable_gqa", "barrier")


def attention_mask(ctx: RuleContext, mask, q, k, y) -> None:
    """A mask or additive bias broadcast against the scores (B..., H, L, S): a dim of
    equal size is the same dim as the scores' (heads, query or key positions)."""
    score_dims = [(k, -2), (q, -2), (y, -3)] + [(y, -j) for j in range(4, y.ndim + 1)]
    for j in range(1, mask.ndim + 1):
        if j > len(score_dims):
            ctx.freeze(mask, -j, "mask dim beyond the scores' rank")
            continue
        ref, d = score_dims[j - 1]
        if mask.shape[-j] == ref.shape[d]:
            ctx.couple(mask, -j, ref, d)
        elif mask.shape[-j] != 1:
            ctx.freeze(mask, -j, f"mask dim of size {mask.shape[-j]} does not broadcast")


def sdpa(ctx: RuleContext) -> None:
    """aten.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, *,
    scale, enable_gqa): scores = q·kᵀ over the head dim, softmax over key positions,
    output = scores·v. Heads (and KV groups) are units; the head dim stays whole."""
    q, k, v, y = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value"), ctx.out()
    if q is None or k is None or v is None or y is None:
        for r in (q, k, v, y):
            ctx.freeze_all(r, "scaled_dot_product_attention with a non-tensor input", "barrier")
        return
    if min(q.ndim, k.ndim, v.ndim) < 3:
        for r in (q, k, v, y):
            ctx.freeze_all(r, "scaled_dot_product_attention without a heads dim")
        return
    gqa = bool(ctx.node.kwargs.get("enable_gqa", False))
    scale = ctx.node.kwargs.get("scale")
    why = "head dim stays whole (softmax scale 1/sqrt(head_dim))" if scale is None else \
        "head dim stays whole (scale, rotary embeddings)"
    ctx.couple(q, -1, k, -1)  # contracted
    ctx.freeze(q, -1, why)
    ctx.freeze(k, -1, why)
    ctx.couple(v, -1, y, -1)
    ctx.couple(q, -2, y, -2)
    ctx.couple(k, -2, v, -2)
    _couple_heads(ctx, q, k, v, y, gqa)
    _couple_batch(ctx, (q, k, v), y)
    mask = ctx.arg(3, "attn_mask")
    if mask is not None:
        attention_mask(ctx, mask, q, k, y)


_SQUARES = {aten.pow.Tensor_Scalar, aten.square.default}
_CASTS = {aten.to.dtype, aten._to_copy.default, aten.to.dtype_layout, aten.alias.default}


def _is_square(node) -> bool:
    """``x ** 2`` (or ``x * x``), possibly behind dtype casts."""
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in _CASTS:
        node = node.args[0]
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return False
    if node.target is aten.pow.Tensor_Scalar:
        return node.args[1] == 2
    if node.target is aten.square.default:
        return True
    return node.target is aten.mul.Tensor and len(node.args) == 2 and node.args[0] is node.args[1]


def rms_mean(ctx: RuleContext) -> None:
    """aten.mean.dim(x**2, dims, keepdim=True) — RMSNorm's statistic: the reduced dims stay
    prunable and are marked mixing. Any other mean freezes its reduced dims (core rule)."""
    x, y = ctx.arg(0), ctx.out()
    keepdim = bool(ctx.value(2, "keepdim", False))
    if x is None or y is None or not keepdim or not _is_square(ctx.node.args[0]):
        E.reduction(ctx, inert_zero=False)
        return
    dims = ctx.value(1, "dim", None)
    dims = range(x.ndim) if dims is None else ([dims] if isinstance(dims, int) else dims)
    reduced = {norm_dim(d, x.ndim) for d in dims}
    for d in range(x.ndim):
        if d in reduced:
            ctx.space.mark_mixing(x, d)  # normalised over: dead channels shift the statistic
            ctx.freeze(y, d, "reduced to size 1", "structural")
        else:
            ctx.couple(x, d, y, d)


RULES: dict = {
    aten.scaled_dot_product_attention.default: sdpa,
    aten.mean.dim: rms_mean,
}
