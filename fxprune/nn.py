"""Modules that shrink swaps in where torch's own cannot express a pruned layer."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PrunedMultiheadAttention"]


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention whose head count, head width and embed dims are independent.

    ``nn.MultiheadAttention`` insists that ``embed_dim == num_heads * head_dim``;
    after pruning heads (or the residual width) that no longer holds, so shrink
    replaces it by this module. Same call signature and outputs; packed
    ``in_proj_weight`` of shape ``[3 * num_heads * head_dim, embed_in]`` and
    ``out_proj`` mapping ``num_heads * head_dim -> embed_out``. The softmax scale
    stays ``1/sqrt(head_dim)`` of the original heads.
    """

    def __init__(self, embed_in: int, embed_out: int, num_heads: int, head_dim: int,
                 bias: bool = True, dropout: float = 0.0, batch_first: bool = False):
        super().__init__()
        inner = num_heads * head_dim
        self.embed_in, self.embed_out = embed_in, embed_out
        self.num_heads, self.head_dim = num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_in))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_out, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    @classmethod
    def from_pruned(cls, mha: nn.MultiheadAttention, in_w, in_b, out_w, out_b, head_dim: int):
        """The module holding the given (already pruned) tensors: built on the meta device
        (no initialisation of weights about to be replaced), then handed the tensors."""
        heads = in_w.shape[0] // (3 * head_dim)
        with torch.device("meta"):
            new = cls(in_w.shape[1], out_w.shape[0], heads, head_dim, bias=in_b is not None,
                      dropout=mha.dropout, batch_first=mha.batch_first)

        def own(t):
            return nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
        new.in_proj_weight = own(in_w)
        new.out_proj.weight = own(out_w)
        if in_b is not None:
            new.in_proj_bias, new.out_proj.bias = own(in_b), own(out_b)
        return new

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True,
                attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, L, _ = query.shape
        S = key.shape[1]
        H, hd = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q = F.linear(query, w_q, b_q).view(B, L, H, hd).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(B, S, H, hd).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(B, S, H, hd).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (hd ** -0.5)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else scores + attn_mask
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
        if is_causal:
            causal = torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
        attn = scores.softmax(-1)
        attn = F.dropout(attn, self.dropout, self.training)
        out = (attn @ v).transpose(1, 2).reshape(B, L, H * hd)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attn.mean(1) if average_attn_weights else attn
