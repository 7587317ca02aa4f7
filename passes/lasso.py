"""``lasso``: channel pruning of He et al. (2017) -- LASSO channel selection, then
least-squares reconstruction of the next layer's weights.

Same groups as ``thinet`` (one Conv2d/Linear consumer; others are skipped and
stay unpruned, or get group-L1 scores with ``fallback="l1"``). For each, the
consumer's per-channel output contributions ``z_c`` on the calibration data
give the problem ``min_beta |Y - sum_c beta_c z_c|^2 + lam |beta|_1``. The
paper raises ``lam`` until the wanted number of ``beta_c`` are non-zero; here
the whole LASSO path is solved once (scikit-learn, ``n_alphas`` values of
``lam`` log-spaced down to ``eps * lam_max``) and a unit's **score** is the
largest ``lam`` at which its channel is still active (ties: ``|beta_c| |z_c|``
there). Removing the lowest ``n`` is the paper's selection for that count
whenever the path is monotone (channels never re-enter), and lets ``ratio`` /
``global_ranking`` / ``target_macs`` choose the count. After selection the
consumer's weight is refitted on the kept channels by least squares
(:func:`~.reconstruct.reconstruct_weight`, its output as target, bias kept).

Memory: the consumers' calibration inputs are kept (float32, CPU) until the
plan is made; lower ``num_batches`` for large models.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from fxprune.channel_graph import ChannelGraph
from fxprune.criteria import CriterionOutput
from fxprune.plan import PruningPlan

from .reconstruct import ChannelGram, reconstruct_weight
from .thinet import Consumer, consumer_updates, pruned_tensor, score_consumers

__all__ = ["gram_design", "lasso_path_scores", "lasso_criterion"]


def gram_design(g: ChannelGram) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) with ``X^T X = G / s`` and ``X^T y = b / s`` (``s = trace G``): a least-squares
    problem with C rows and the same minimisers as ``|Y - sum_c beta_c z_c|^2``."""
    s = float(g.gram.trace()) or 1.0
    e, v = torch.linalg.eigh(g.gram / s)
    good = e > e.max().clamp_min(0) * 1e-12
    root = e[good].sqrt()
    return (v[:, good] * root).T.numpy(), ((v[:, good].T @ (g.cross / s)) / root).numpy()


def lasso_path_scores(g: ChannelGram, n_alphas: int = 100, eps: float = 1e-4) -> np.ndarray:
    """Per channel: (number of path steps it is active from the top) + a tie-break < 1."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import lasso_path

    c = g.gram.shape[0]
    norm = g.gram.diagonal().clamp_min(0).sqrt().numpy()
    x, y = gram_design(g)
    top = float(np.abs(x.T @ y).max()) / max(x.shape[0], 1) if x.size else 0.0
    if top == 0.0:  # no channel explains anything: rank by contribution size
        return 0.5 * norm / (norm.max() + 1e-300)
    alphas = top * np.logspace(0, np.log10(eps), n_alphas)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, coefs, _ = lasso_path(x, y, alphas=alphas, max_iter=5000)
    active = coefs != 0
    on = active.any(1)
    first = np.where(on, active.argmax(1), n_alphas)  # the largest lam where c is active
    beta = np.abs(coefs[np.arange(c), np.minimum(first, n_alphas - 1)])
    mag = np.where(on, beta, 1.0) * norm
    return (n_alphas - first) + 0.5 * mag / (mag.max() + 1e-300)


def _target(layer: nn.Module, x: Tensor, chunk: int = 256) -> Tensor:
    with torch.no_grad():
        return torch.cat([layer(part) for part in x.split(chunk)])


def _refit_updates(cg: ChannelGraph, cons: dict[str, Consumer], inputs: dict[str, Tensor],
                   num_samples: int | None):
    def refit(c: Consumer, kept: np.ndarray, plan: PruningPlan) -> Tensor:
        layer = cg.gm.get_submodule(c.module)
        x = inputs[c.module]
        cpu = copy.deepcopy(layer).float().cpu()
        dim = 1 if isinstance(layer, nn.Conv2d) else x.ndim - 1
        x_kept = x.index_select(dim, torch.as_tensor(kept))
        w = reconstruct_weight(cpu, x_kept, _target(cpu, x), num_samples=num_samples)
        return pruned_tensor(cg, plan, c.weight, w.to(layer.weight), skip_dims=(1,))
    return consumer_updates(cons, refit)


def lasso_criterion(cg: ChannelGraph, *, model: nn.Module | None = None, calibration=None,
                    num_batches: int = 10, num_samples: int | None = None, n_alphas: int = 100,
                    fallback: str | None = None, progress: bool = True, **_) -> CriterionOutput:
    """LASSO-path scores for single-consumer groups, plus least-squares refits of the consumers."""
    cons, _, inputs, scores = score_consumers(
        "lasso", cg, calibration, fallback, lambda gram: lasso_path_scores(gram, n_alphas),
        num_batches, num_samples, progress, keep_inputs=True)
    total = None if num_samples is None else num_samples * num_batches
    return CriterionOutput(scores=scores, weight_updates=_refit_updates(cg, cons, inputs, total))
