"""Shifted-window attention whose head width is explicit.

torchvision's Swin calls ``shifted_window_attention`` (an fx-wrapped function)
which derives ``head_dim = C // num_heads`` from the *input* width, so after
pruning heads or the residual width it would compute the wrong split. Shrink
rewrites those calls to :func:`window_attention`, which takes ``head_dim`` as
an argument and lets the input width, the head count and the output width
differ. Same mathematics: windowed multi-head attention with relative
position bias, cyclic shift with the region mask, cosine attention (Swin V2).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor

__all__ = ["window_attention"]


def _region_mask(pad_h: int, pad_w: int, window: list[int], shift: list[int], device) -> Tensor:
    """-100 between tokens of one window that came from different regions after the shift."""
    region = torch.zeros(pad_h, pad_w, device=device)
    bounds_h = (0, pad_h - window[0], pad_h - shift[0], pad_h)
    bounds_w = (0, pad_w - window[1], pad_w - shift[1], pad_w)
    label = 0
    for i in range(3):
        for j in range(3):
            region[bounds_h[i]:bounds_h[i + 1], bounds_w[j]:bounds_w[j + 1]] = label
            label += 1
    windows = region.view(pad_h // window[0], window[0], pad_w // window[1], window[1])
    windows = windows.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    differ = windows.unsqueeze(1) != windows.unsqueeze(2)
    return torch.zeros(differ.shape, device=device).masked_fill(differ, -100.0)


def window_attention(
    input: Tensor, qkv_weight: Tensor, proj_weight: Tensor, relative_position_bias: Tensor,
    window_size: list[int], num_heads: int, shift_size: list[int], attention_dropout: float = 0.0,
    dropout: float = 0.0, qkv_bias: Optional[Tensor] = None, proj_bias: Optional[Tensor] = None,
    logit_scale: Optional[Tensor] = None, training: bool = True, head_dim: int = 0,
) -> Tensor:
    """Window attention on ``input`` [B, H, W, C_in] -> [B, H, W, C_out]."""
    B, H, W, _ = input.shape
    hd = head_dim or input.shape[-1] // num_heads
    pad_h = math.ceil(H / window_size[0]) * window_size[0]
    pad_w = math.ceil(W / window_size[1]) * window_size[1]
    x = F.pad(input, (0, 0, 0, pad_w - W, 0, pad_h - H))
    shift = [0 if window_size[0] >= pad_h else shift_size[0], 0 if window_size[1] >= pad_w else shift_size[1]]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    nh, nw = pad_h // window_size[0], pad_w // window_size[1]
    tokens = window_size[0] * window_size[1]
    x = x.view(B, nh, window_size[0], nw, window_size[1], -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(B * nh * nw, tokens, -1)
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = qkv_bias.clone()
        third = qkv_bias.numel() // 3
        qkv_bias[third:2 * third] = 0  # Swin V2 has no key bias
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(x.shape[0], tokens, 3, num_heads, hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if logit_scale is not None:
        scale = torch.clamp(logit_scale, max=math.log(100.0)).exp()
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * scale
    else:
        attn = (q * hd ** -0.5) @ k.transpose(-2, -1)
    attn = attn + relative_position_bias
    if sum(shift) > 0:
        mask = _region_mask(pad_h, pad_w, window_size, shift, x.device)
        attn = attn.view(B, nh * nw, num_heads, tokens, tokens) + mask[None, :, None]
        attn = attn.view(-1, num_heads, tokens, tokens)
    attn = F.dropout(attn.softmax(-1), p=attention_dropout, training=training)
    x = (attn @ v).transpose(1, 2).reshape(x.shape[0], tokens, num_heads * hd)
    x = F.dropout(F.linear(x, proj_weight, proj_bias), p=dropout, training=training)
    x = x.view(B, nh, nw, window_size[0], window_size[1], -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(B, pad_h, pad_w, -1)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


torch.fx.wrap("window_attention")
