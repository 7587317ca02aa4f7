"""Rules for attention: matmul/bmm/einsum, scaled_dot_product_attention and
nn.MultiheadAttention (heads are the units of the q/k/v projections)."""
from __future__ import annotations

import numpy as np

from .base import RuleContext

__all__ = ["matmul", "einsum", "sdpa", "multihead_attention"]


def matmul(ctx: RuleContext) -> None:
    """a @ b: a[-1] and b[-2] contract (one dim), a[-2]→out[-2], b[-1]→out[-1],
    batch dims broadcast from the right."""
    a, b, y = ctx.arg(0), ctx.arg(1), ctx.out()
    if a is None or b is None or y is None:
        return
    if a.ndim < 2 or b.ndim < 2:
        for r in (a, b, y):
            ctx.freeze_all(r, "matmul with a vector", "barrier")
        return
    ctx.couple(a, -1, b, -2)
    ctx.couple(a, -2, y, -2)
    ctx.couple(b, -1, y, -1)
    for r in (a, b):
        for j in range(3, r.ndim + 1):
            if r.shape[-j] == y.shape[-j]:
                ctx.couple(r, -j, y, -j)


def einsum(ctx: RuleContext) -> None:
    """einsum: dims sharing a letter are one dim (contracted letters included)."""
    eq = ctx.node.args[0].replace(" ", "")
    operands = [ctx.ref(v) for v in ctx.node.args[1:]]
    if len(operands) == 1 and isinstance(ctx.node.args[1], (list, tuple)):
        operands = [ctx.ref(v) for v in ctx.node.args[1]]
    y = ctx.out()
    if "..." in eq or "->" not in eq or y is None or any(r is None for r in operands):
        for r in operands + [y]:
            ctx.freeze_all(r, f"einsum '{eq}' not understood", "barrier")
        return
    lhs, rhs = eq.split("->")
    seen: dict[str, tuple] = {}
    for spec, ref in list(zip(lhs.split(","), operands)) + [(rhs, y)]:
        for d, letter in enumerate(spec):
            if letter in seen:
                ctx.couple(seen[letter][0], seen[letter][1], ref, d)
            else:
                seen[letter] = (ref, d)


def sdpa(ctx: RuleContext) -> None:
    """F.scaled_dot_product_attention(q, k, v): the scale is 1/sqrt(q.size(-1)), so
    the q/k feature dim is frozen; v's feature dim flows to the output."""
    q, k, v, y = ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.out()
    if q is None or k is None or v is None or y is None:
        return
    ctx.freeze(q, -1, "attention scale depends on head_dim")
    ctx.freeze(k, -1, "attention scale depends on head_dim")
    ctx.couple(q, -2, y, -2)
    ctx.couple(k, -2, v, -2)
    ctx.couple(v, -1, y, -1)
    for r in (q, k, v):
        for j in range(3, r.ndim + 1):
            ctx.couple(r, -j, y, -j)
    mask = ctx.arg(3, "attn_mask")
    if mask is not None:
        ctx.freeze_all(mask, "attention mask")


def multihead_attention(ctx: RuleContext) -> None:
    """nn.MultiheadAttention with packed in_proj: a unit is one head (head_dim rows of
    each of q, k and v, head_dim columns of out_proj); embed dims of the inputs and
    of the output are separate producer/consumer dims. Shrink swaps in
    fxprune.nn.PrunedMultiheadAttention, whose head count and widths are free."""
    m = ctx.module
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    outs = ctx.outs()
    y = outs[0] if outs else None
    refs = [r for r in (q, k, v, y) if r is not None]
    supported = (
        m._qkv_same_embed_dim and m.bias_k is None and not m.add_zero_attn
        and q is not None and y is not None
    )
    if not supported:
        for r in refs:
            ctx.freeze_all(r, "MultiheadAttention variant (kdim/vdim, bias_k, add_zero_attn)", "barrier")
        return
    w_in, b_in = ctx.param("in_proj_weight"), ctx.param("in_proj_bias")
    w_out, b_out = ctx.param("out_proj.weight"), ctx.param("out_proj.bias")
    E, H = m.embed_dim, m.num_heads
    hd = E // H
    rows = np.arange(3 * E)
    head_of_row = (rows % E) // hd
    ctx.link(w_in, 0, rows, w_in, 0, (rows % E // hd) * hd, "strided")  # one head = 3*hd rows
    if b_in is not None:
        ctx.couple(b_in, 0, w_in, 0)
    cols = np.arange(E)
    ctx.link(w_out, 1, cols, w_in, 0, (cols // hd) * hd, "block")
    del head_of_row
    for r in {id(t): t for t in (q, k, v) if t is not None}.values():
        ctx.couple(w_in, 1, r, -1)
    ctx.couple(w_out, 0, y, -1)
    if b_out is not None:
        ctx.couple(b_out, 0, y, -1)
    seq = 1 if m.batch_first else 0
    ctx.couple(q, seq, y, seq)
    ctx.couple(q, 1 - seq, y, 1 - seq)
    for r in outs[1:]:
        ctx.freeze_all(r, "attention weights output")


def frozen_by_design(reason: str):
    """A known op whose channel structure fxprune deliberately leaves alone."""

    def rule(ctx: RuleContext) -> None:
        for r in ctx.tensor_inputs() + [o for o in ctx.outs() if o is not None]:
            ctx.freeze_all(r, reason)

    return rule


def window_attention(ctx: RuleContext) -> None:
    """Swin's (shifted_)window_attention(x, qkv_w, proj_w, rel_pos_bias, window, heads, ...):
    a unit is one head (its q, k, v rows, proj columns, bias row and logit scale);
    the input width feeds qkv columns and the output width is proj's rows."""
    x, y = ctx.arg(0, "input"), ctx.out()
    w_qkv, w_proj, rpb = ctx.arg(1, "qkv_weight"), ctx.arg(2, "proj_weight"), ctx.arg(3)
    b_qkv, b_proj = ctx.arg(9, "qkv_bias"), ctx.arg(10, "proj_bias")
    logit = ctx.arg(11, "logit_scale")
    heads = ctx.value(5, "num_heads")
    if x is None or y is None or w_qkv is None or w_proj is None:
        return
    hd = ctx.node.kwargs.get("head_dim") or x.shape[-1] // heads
    inner = heads * hd
    rows, cols, h = np.arange(3 * inner), np.arange(inner), np.arange(heads)
    ctx.link(w_qkv, 0, rows, w_qkv, 0, (rows % inner) // hd * hd, "strided")
    ctx.link(w_proj, 1, cols, w_qkv, 0, (cols // hd) * hd, "block")
    ctx.couple(b_qkv, 0, w_qkv, 0)
    ctx.couple(w_qkv, 1, x, -1)
    ctx.couple(w_proj, 0, y, -1)
    ctx.couple(b_proj, 0, y, -1)
    for ref in (rpb, logit):
        if ref is not None:
            d = 1 if ref is rpb else 0
            ctx.link(ref, d, h, w_qkv, 0, h * hd, "block")
            for k in range(ref.ndim):
                if k != d:
                    ctx.freeze(ref, k, "window positions", "structural")
    for k in range(x.ndim - 1):
        ctx.couple(x, k, y, k)


def relative_position_bias(ctx: RuleContext) -> None:
    """table[index] → (1, heads, N, N): the heads column of the table is the heads dim."""
    table, y = ctx.arg(0), ctx.out()
    if table is None or y is None:
        return
    ctx.freeze(table, 0, "relative positions", "structural")
    ctx.couple(table, 1, y, 1)
    for k in (0, 2, 3):
        ctx.freeze(y, k, "window positions", "structural")


def patch_merging_pad(ctx: RuleContext) -> None:
    """x[..., H, W, C] → [..., H/2, W/2, 4C] (four strided patches concatenated on C)."""
    x, y = ctx.arg(0), ctx.out()
    if x is None or y is None:
        return
    C = x.shape[-1]
    for k in range(4):
        ctx.shift(x, -1, 0, y, -1, k * C, C)
    for k in range(x.ndim - 3):
        ctx.couple(x, k, y, k)
    for k in (-3, -2):
        ctx.freeze(x, k, "spatial dim", "structural")
        ctx.freeze(y, k, "spatial dim", "structural")
