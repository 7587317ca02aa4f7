"""Data-driven input-channel selection for one consumer layer: ThiNet and LASSO.

ThiNet (Luo et al., 2017) and channel pruning (He et al., 2017) both look at a
*consumer* layer (Conv2d or Linear) with weight ``W`` and its input ``X`` on
calibration batches.  Its output (bias left out) is a sum over input channels,
``Y = sum_c z_c`` with ``z_c[n, o] = sum_k W[o, c, k] * patch[n, c, k]``, ``n`` an
output position and ``k`` a kernel tap.  Pruning input channel ``c`` of the
consumer (= output channel ``c`` of the producer) drops ``z_c``; the passes choose
the channels whose loss the rest can best make up for.

Everything here works on plain tensors and knows nothing of the channel graph:

* :func:`channel_contributions` gives the explicit ``[N, C, O]`` tensor (small
  layers, tests); :func:`channel_gram` gives the same information in a
  memory-light form, :class:`ChannelGram` (``G[c, d] = <z_c, z_d>``,
  ``b[c] = <Y, z_c>``, ``|Y|^2``, summed over positions and outputs), built
  from patch second moments in float64 without ever materialising ``z``.
  Every selection function takes either.
* :func:`thinet_select`, :func:`lasso_select` choose channels;
  :func:`least_squares_rescale` (ThiNet's per-channel scales) and
  :func:`reconstruct_weight` (He et al.'s least-squares weight) repair the layer.

``target`` (optional) is what the layer should output, e.g. the unpruned
network's activations while ``inputs`` come from an already-pruned producer; it
defaults to the layer's own output on ``inputs``.  Targets include the bias, as
``layer(x)`` returns it; the bias is subtracted before fitting.

Cost: :func:`channel_gram` and :func:`reconstruct_weight` hold two float64
``(C*K)^2`` matrices (``K = kh*kw``): 170 MB each for a 512-channel 3x3 layer.
Position sampling draws a permutation of all ``B * H' * W'`` output positions.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ChannelGram",
    "channel_contributions",
    "channel_gram",
    "lasso_select",
    "least_squares_rescale",
    "reconstruct_weight",
    "reconstruction_error",
    "thinet_select",
]

_CHUNK = 4096  # output positions unfolded at a time


@dataclass(frozen=True)
class ChannelGram:
    """Second moments of the per-channel contributions ``z_c`` and the target ``Y``."""

    gram: Tensor  # [C, C]  <z_c, z_d>
    cross: Tensor  # [C]    <Y, z_c>
    target_sq: float  # |Y|^2
    num_samples: int  # output positions summed over

    def error(self, kept: Sequence[int] | Tensor, scales: Tensor | None = None) -> float:
        """``|Y - sum_{c in kept} s_c z_c|^2`` (``s = 1`` when ``scales`` is None)."""
        idx = torch.as_tensor(kept, dtype=torch.long)
        s = torch.ones(len(idx), dtype=torch.float64) if scales is None else scales.double()
        g = self.gram[idx][:, idx]
        return float(self.target_sq - 2 * s @ self.cross[idx] + s @ g @ s)


def _check_layer(layer: nn.Module) -> None:
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise ValueError(f"Conv2d with padding_mode={layer.padding_mode!r} is not "
                             "supported; only zero padding unfolds exactly")
    elif not isinstance(layer, nn.Linear):
        raise TypeError("consumer layer must be nn.Conv2d or nn.Linear, "
                        f"got {type(layer).__name__}")


def _unfold(layer: nn.Conv2d, x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, C*kh*kw, L], honouring padding='same'/'valid'."""
    pad = layer.padding
    if isinstance(pad, str):
        if pad == "same":  # stride is 1 here (torch forbids 'same' otherwise)
            th, tw = (d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size))
            x = F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2))
        pad = 0
    return F.unfold(x, layer.kernel_size, layer.dilation, pad, layer.stride)


def _positions(layer: nn.Module, inputs: Tensor) -> tuple[int, int]:
    """(batch, positions per batch item) of the layer's output."""
    if isinstance(layer, nn.Linear):
        return inputs.reshape(-1, inputs.shape[-1]).shape[0], 1
    if inputs.dim() != 4:
        raise ValueError(f"Conv2d inputs must be [B, C, H, W], got shape {tuple(inputs.shape)}")
    return inputs.shape[0], _unfold(layer, inputs[:1]).shape[-1]


def _taps(layer: nn.Conv2d) -> int:
    return layer.kernel_size[0] * layer.kernel_size[1]


def _sample(total: int, num_samples: int | None, seed: int) -> Tensor:
    if num_samples is None or num_samples >= total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[:num_samples].sort().values


def _patches(layer: nn.Module, inputs: Tensor, rows: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (patches [n, C, K] float64, global position indices [n]) chunk by chunk."""
    if isinstance(layer, nn.Linear):
        flat = inputs.reshape(-1, inputs.shape[-1])
        for part in rows.split(_CHUNK):
            yield flat[part].double().unsqueeze(-1), part
        return
    batch, per = _positions(layer, inputs)
    step = max(1, _CHUNK // per)
    c = inputs.shape[1]
    for b0 in range(0, batch, step):
        lo, hi = b0 * per, min(batch, b0 + step) * per
        part = rows[(rows >= lo) & (rows < hi)]
        if len(part):
            cols = _unfold(layer, inputs[b0:b0 + step]).transpose(1, 2)
            yield cols.reshape(-1, c, _taps(layer))[part - lo].double(), part


def _dense_weight(layer: nn.Module) -> Tensor:
    """Weight as [O, C, K] float64, grouped convs expanded block-diagonally."""
    w = layer.weight.detach().double()
    if isinstance(layer, nn.Linear):
        return w.unsqueeze(-1)
    o, cg = w.shape[:2]
    g = layer.groups
    dense = w.new_zeros(o, cg * g, _taps(layer))
    og = o // g
    for i in range(g):
        dense[i * og:(i + 1) * og, i * cg:(i + 1) * cg] = w[i * og:(i + 1) * og].flatten(2)
    return dense


def _target_rows(layer: nn.Module, target: Tensor, part: Tensor, per: int) -> Tensor:
    """Rows of the (bias-free) target at global positions ``part``: [n, O] float64."""
    if isinstance(layer, nn.Linear):
        t = target.reshape(-1, target.shape[-1])[part]
    else:
        t = target.flatten(2)[part // per, :, part % per]
    t = t.double()
    return t - layer.bias.detach().double() if layer.bias is not None else t


@torch.no_grad()
def channel_contributions(layer: nn.Module, inputs: Tensor, num_samples: int | None = 1000,
                          seed: int = 0) -> Tensor:
    """``z[n, c, o]``: input channel ``c``'s share of output ``o`` at sampled position ``n``.

    ``num_samples`` output positions (over batch and space) are drawn without
    replacement with ``seed``; ``None`` keeps all, in (batch, row-major) order.
    ``z.sum(1) + bias`` equals ``layer(inputs)`` at those positions.  Float64.
    """
    _check_layer(layer)
    w = _dense_weight(layer)
    batch, per = _positions(layer, inputs)
    rows = _sample(batch * per, num_samples, seed)
    parts = [torch.einsum("nck,ock->nco", p, w) for p, _ in _patches(layer, inputs, rows)]
    return torch.cat(parts)


@torch.no_grad()
def channel_gram(layer: nn.Module, inputs: Tensor, *, target: Tensor | None = None,
                 num_samples: int | None = None, seed: int = 0) -> ChannelGram:
    """The :class:`ChannelGram` of ``layer`` on ``inputs`` in O((C*K)^2) memory.

    ``G = sum_{k,l} P[c,k,d,l] * M[c,k,d,l]`` with ``P`` the patch second moment and
    ``M[c,k,d,l] = sum_o W[o,c,k] W[o,d,l]``, so no ``[N, C, O]`` tensor is built.
    """
    _check_layer(layer)
    w = _dense_weight(layer)
    o, c, k = w.shape
    batch, per = _positions(layer, inputs)
    rows = _sample(batch * per, num_samples, seed)
    wflat = w.reshape(o, c * k)
    p_acc = torch.zeros(c * k, c * k, dtype=torch.float64)
    q_acc = torch.zeros(c * k, o, dtype=torch.float64)
    yy = 0.0
    for patch, part in _patches(layer, inputs, rows):
        flat = patch.reshape(len(part), c * k)
        y = flat @ wflat.T if target is None else _target_rows(layer, target, part, per)
        p_acc += flat.T @ flat
        q_acc += flat.T @ y
        yy += float((y * y).sum())
    m = torch.einsum("ock,odl->ckdl", w, w)
    gram = (p_acc.view(c, k, c, k) * m).sum((1, 3))
    cross = torch.einsum("cko,ock->c", q_acc.view(c, k, o), w)
    return ChannelGram(gram, cross, yy, len(rows))


def _as_gram(contrib: Tensor | ChannelGram) -> ChannelGram:
    if isinstance(contrib, ChannelGram):
        return contrib
    if contrib.dim() != 3:
        raise ValueError(f"contributions must be [N, C, O], got shape {tuple(contrib.shape)}")
    z = contrib.detach().double()
    gram = torch.einsum("nco,ndo->cd", z, z)
    return ChannelGram(gram, gram.sum(1), float(gram.sum()), z.shape[0])


def _check_keep(keep: int, c: int) -> None:
    if not 0 <= keep <= c:
        raise ValueError(f"keep must be in [0, {c}] (the layer's input channels), got {keep}")


def reconstruction_error(contrib: Tensor | ChannelGram, kept: Sequence[int] | Tensor,
                         scales: Tensor | None = None) -> float:
    """``|Y - sum_{c in kept} s_c z_c|^2`` summed over samples and outputs."""
    return _as_gram(contrib).error(kept, scales)


def thinet_select(contrib: Tensor | ChannelGram, keep: int) -> Tensor:
    """ThiNet's greedy: grow the removed set ``T`` by the channel that adds least error.

    With ``D = sum_all z - Y`` (zero when the target is the layer's own output), the
    error of keeping the complement of ``T`` is ``|sum_T z|^2 - 2<D, sum_T z> + |D|^2``;
    adding ``c`` costs ``G_cc + 2 sum_{t in T} G_ct - 2<D, z_c>``.  Ties: lowest index.
    Returns the kept indices, sorted.
    """
    g = _as_gram(contrib)
    c = g.gram.shape[0]
    _check_keep(keep, c)
    d_dot = g.gram.sum(1) - g.cross
    acc = torch.zeros(c, dtype=torch.float64)
    removed = torch.zeros(c, dtype=torch.bool)
    for _ in range(c - keep):
        cost = g.gram.diagonal() + 2 * acc - 2 * d_dot
        cost[removed] = float("inf")
        j = int(torch.argmin(cost))  # first minimum on ties
        removed[j] = True
        acc += g.gram[:, j]
    return torch.nonzero(~removed).flatten()


def least_squares_rescale(contrib: Tensor | ChannelGram, kept: Sequence[int] | Tensor) -> Tensor:
    """ThiNet's scales ``argmin_w |Y - sum_{c in kept} w_c z_c|^2`` (unconstrained sign).

    Multiply the consumer's ``W[:, kept]`` by the result.  Rank-deficient systems
    (duplicate or dead channels) get the minimum-norm solution.
    """
    g = _as_gram(contrib)
    idx = torch.as_tensor(kept, dtype=torch.long)
    sol = torch.linalg.lstsq(g.gram[idx][:, idx], g.cross[idx].unsqueeze(1), driver="gelsd")
    return sol.solution.flatten().to(torch.get_default_dtype())


def _lasso_design(g: ChannelGram) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) with ``X^T X = G`` and ``X^T y = b`` (up to one scale): a C-row LASSO problem."""
    scale = float(g.gram.trace()) or 1.0
    e, v = torch.linalg.eigh(g.gram / scale)
    good = e > e.max().clamp_min(0) * 1e-12
    root = e[good].sqrt()
    x = (v[:, good] * root).T
    y = (v[:, good].T @ (g.cross / scale)) / root
    return x.numpy(), y.numpy()


def _top_by_contribution(g: ChannelGram, coef: np.ndarray, keep: int) -> Tensor:
    """The ``keep`` channels of largest ``|beta_c| * |z_c|``, then ``|z_c|``, then lowest index."""
    norm = g.gram.diagonal().clamp_min(0).sqrt().numpy()
    score = np.abs(coef) * norm
    order = sorted(range(len(coef)), key=lambda i: (-score[i], -norm[i], i))
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)


def lasso_select(contrib: Tensor | ChannelGram, keep: int, *, positive: bool = False,
                 max_steps: int = 60, tol: float = 1e-8) -> Tensor:
    """He et al.'s LASSO selection: ``min_beta |Y - sum_c beta_c z_c|^2 + lam |beta|_1``.

    ``lam`` is bisected (log scale, at most ``max_steps`` fits, warm started, solved by
    scikit-learn's coordinate descent) until exactly ``keep`` coefficients are non-zero.
    When no ``lam`` gives exactly ``keep`` (ties, dead or duplicate channels), the
    sparsest solution with more than ``keep`` non-zeros is cut to the ``keep`` largest
    ``|beta_c| * |z_c|``.  Returns the kept indices, sorted.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    g = _as_gram(contrib)
    c = g.gram.shape[0]
    _check_keep(keep, c)
    if keep in (0, c):
        return torch.arange(keep)
    x, y = _lasso_design(g)
    hi = float(np.abs(x.T @ y).max()) / x.shape[0] if x.shape[0] else 0.0  # beta = 0 above
    if hi == 0.0:  # no channel contributes anything: nothing to learn
        return _top_by_contribution(g, np.zeros(c), keep)
    lo, best = hi * 1e-9, None
    solver = Lasso(alpha=lo, fit_intercept=False, positive=positive, warm_start=True,
                   max_iter=20000, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(max_steps):
            solver.alpha = (lo * hi) ** 0.5
            coef = solver.fit(x, y).coef_.copy()
            nnz = int(np.count_nonzero(coef))
            if nnz == keep:
                return torch.from_numpy(np.flatnonzero(coef)).long()
            if nnz > keep:
                lo = solver.alpha
                if best is None or nnz <= np.count_nonzero(best):
                    best = coef
            else:
                hi = solver.alpha
    return _top_by_contribution(g, best if best is not None else coef, keep)


def _check_target(layer: nn.Module, target: Tensor, batch: int, per: int) -> None:
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if isinstance(layer, nn.Linear):
        ok = target.shape[-1] == out and target.reshape(-1, out).shape[0] == batch
    else:
        ok = target.dim() == 4 and target.shape[:2] == (batch, out) and target[0, 0].numel() == per
    if not ok:
        raise ValueError(f"target shape {tuple(target.shape)} does not match the layer's "
                         f"output on these inputs ({batch} x {out} channels x {per} positions)")


@torch.no_grad()
def reconstruct_weight(layer: nn.Module, inputs_kept: Tensor, target_outputs: Tensor, *,
                       num_samples: int | None = None, seed: int = 0, ridge: float = 0.0) -> Tensor:
    """He et al.'s least-squares weight on the kept input channels.

    ``inputs_kept``: the layer's input restricted to the kept channels (``[B, C', H, W]``
    or ``[..., C']``); ``target_outputs``: what ``layer`` should output there (bias
    included, as ``layer(x)`` returns it; the bias is kept as is).  Returns the new
    weight, ``[O, C', kh, kw]`` or ``[O, C']``, solving ``min |Y - X W^T|^2 + ridge |W|^2``
    over ``num_samples`` sampled positions (all when None) via the normal equations.
    Grouped convolutions are rejected: their channels do not mix across groups.
    """
    _check_layer(layer)
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ValueError(f"reconstruct_weight needs groups == 1, this Conv2d has "
                         f"groups={layer.groups}; prune grouped convs group-wise instead")
    batch, per = _positions(layer, inputs_kept)
    _check_target(layer, target_outputs, batch, per)
    rows = _sample(batch * per, num_samples, seed)
    p_acc = q_acc = None
    for patch, part in _patches(layer, inputs_kept, rows):
        flat = patch.reshape(len(part), -1)
        y = _target_rows(layer, target_outputs, part, per)
        p_acc = flat.T @ flat if p_acc is None else p_acc + flat.T @ flat
        q_acc = flat.T @ y if q_acc is None else q_acc + flat.T @ y
    p_acc = p_acc + ridge * torch.eye(p_acc.shape[0], dtype=torch.float64)
    sol = torch.linalg.lstsq(p_acc, q_acc, driver="gelsd").solution  # [C'*K, O]
    shape = (sol.shape[1], inputs_kept.shape[1], *layer.kernel_size) \
        if isinstance(layer, nn.Conv2d) else (sol.shape[1], inputs_kept.shape[-1])
    return sol.T.reshape(shape).to(layer.weight.dtype)
