"""``taylor``: first-order Taylor importance (Molchanov et al., 2017/2019).

Removing unit ``u`` sets its parameter entries ``w`` (every member of its
group: producer filters, BN scale and shift, consumer columns) to zero; to first
order the loss changes by ``-sum_{w in u} w * dL/dw``. Per calibration batch
``b`` the pass computes the signed sum ``t_b(u) = sum_{w in u} w * dL/dw``
(:func:`taylor_contributions`, exactly ``dL/d alpha`` at ``alpha = 1`` when the
unit's entries are scaled by ``alpha``), and scores

* ``variant="abs"`` (default): ``mean_b |t_b(u)|``;
* ``variant="squared"``: ``mean_b t_b(u)^2`` (Molchanov et al. 2019).

Caveat: the entries of a unit enter the loss as a product (filter x BN scale x
consumer column), so ``t_b(u)`` is the derivative along a scaling of the whole
unit, not the loss change of removing it: for conv -> BN -> conv with zero
biases it is 3x the first-order removal estimate. Units of groups of the same
structure rank the same either way; the planner's global ranking divides each
group's scores by their mean.

The loss: ``loss_fn(output, target)`` when given; else cross-entropy when the
batches carry integer class targets, mean squared error for float targets of
the output's shape; without targets the L2 norm of the output (summed over
outputs), which ranks units by how much they move the network's output.

The model runs in eval mode (BatchNorm uses its running statistics, dropout is
off); gradients come from ``torch.autograd.grad``, so no ``.grad`` is written
and the model is left as it was.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fxprune.channel_graph import ChannelGraph
from fxprune.errors import FxPruneError

from .calibration import eval_mode, iter_batches, module_device, require_calibration

__all__ = ["taylor_loss", "taylor_contributions", "taylor_criterion"]


def _leaves(out) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _leaves(o)]
    return []


def _up(t: Tensor) -> Tensor:
    """Half precision is too coarse for a loss; float32 and float64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def taylor_loss(out, target: Tensor | None, loss_fn: Callable | None = None) -> Tensor:
    """The loss the Taylor scores differentiate (see the module docstring)."""
    if loss_fn is not None:
        return loss_fn(out, target)
    if target is not None and isinstance(out, Tensor):
        if not target.is_floating_point() and out.ndim >= 2:
            return F.cross_entropy(_up(out), target)
        if target.shape == out.shape:
            return F.mse_loss(_up(out), target.to(_up(out).dtype))
    leaves = _leaves(out)
    if not leaves:
        raise FxPruneError("taylor: the model returned no tensor; pass loss_fn=")
    return sum(_up(t).norm() for t in leaves)


def _unit_sums(cg: ChannelGraph, prods: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Per group, per unit: the sum of ``prods[param]`` over the entries the unit owns."""
    out = {}
    for g in cg.groups:
        s = np.zeros(g.size)
        for m in g.params():
            t = prods[m.name]
            other = [d for d in range(t.ndim) if d != m.dim]
            per_index = (t.sum(dim=other) if other else t).double().cpu().numpy()
            np.add.at(s, m.unit, per_index[m.index])
        out[g.id] = s
    return out


def taylor_contributions(cg: ChannelGraph, calibration: Iterable, num_batches: int = 10, *,
                         loss_fn: Callable | None = None, progress: bool = True
                         ) -> dict[str, np.ndarray]:
    """{group id: [batches, units]} signed ``sum_{w in unit} w * dL/dw`` per batch."""
    names = sorted({m.name for g in cg.groups for m in g.params()})
    params = [cg.gm.get_parameter(n) for n in names]
    flags = [p.requires_grad for p in params]
    rows: dict[str, list[np.ndarray]] = {g.id: [] for g in cg.groups}
    try:
        for p in params:
            p.requires_grad_(True)
        with eval_mode(cg.gm), torch.enable_grad():
            for b in iter_batches(calibration, num_batches, device=module_device(cg.gm),
                                  description="taylor: gradients", progress=progress):
                loss = taylor_loss(cg.gm(*b.inputs), b.target, loss_fn)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                prods = {n: _up(p.detach() * g if g is not None else torch.zeros_like(p))
                         for n, p, g in zip(names, params, grads)}
                for gid, s in _unit_sums(cg, prods).items():
                    rows[gid].append(s)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return {gid: np.stack(v) for gid, v in rows.items()}


def taylor_criterion(cg: ChannelGraph, *, model: nn.Module | None = None, calibration=None,
                     num_batches: int = 10, variant: str = "abs", loss_fn: Callable | None = None,
                     progress: bool = True, **_) -> dict[str, np.ndarray]:
    """Taylor importance of every unit of every group (higher = keep)."""
    if variant not in ("abs", "squared"):
        raise FxPruneError(f"taylor: variant must be 'abs' or 'squared', got {variant!r}")
    calibration = require_calibration(calibration, "taylor")
    contrib = taylor_contributions(cg, calibration, num_batches, loss_fn=loss_fn,
                                   progress=progress)
    if variant == "abs":
        return {gid: np.abs(t).mean(0) for gid, t in contrib.items()}
    return {gid: (t ** 2).mean(0) for gid, t in contrib.items()}
