"""Rules for norms and fused multiply-adds, on both frontends.

timm's CSATv2 (and any model with cosine attention or L2-normalised features) uses
``F.normalize`` / ``linalg.vector_norm`` and ``addcmul``; without rules each was a
barrier. A p-norm of order >= 0 ignores zero entries, so a dead unit is inert in it
(the reduced dim is a sink, as for ``sum``); a negative order (``-inf``: min |x|) is not,
and must freeze the dim instead of producing a different model.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune

FRONTENDS = ["fx", "export"]
RTOL = 1e-5


class NormOps(nn.Module):
    """conv -> normalize over channels -> addcmul with a gate / channel norm -> conv;
    ``c1`` (16 channels) and ``gate`` share one prunable group, exact under the oracle."""

    def __init__(self, order: float = 2.0) -> None:
        super().__init__()
        self.order = order
        self.c1, self.gate = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.normalize(torch.relu(self.c1(x)), dim=1)
        n = torch.linalg.vector_norm(h, ord=self.order, dim=1, keepdim=True)
        h = torch.addcmul(h, h, torch.sigmoid(self.gate(x)), value=0.5) / (n + 1.0)
        h = h.addcdiv(h, h.norm(p=1, dim=(2, 3), keepdim=True) + 1.0)
        return self.c2(h)


def _c1_group(cg: fxprune.ChannelGraph):
    return [g for g in cg.groups if ("p:c1.weight", 0) in {(m.key, m.dim) for m in g.params()}]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_norms_and_addcmul_prune_exactly(frontend: str) -> None:
    torch.manual_seed(0)
    model, x = NormOps().eval(), torch.randn(2, 3, 8, 8)
    cg = fxprune.analyze(model, x, frontend=frontend, warn=False)
    assert not [f for f in cg.frozen if f.barrier], [f.reason for f in cg.frozen if f.barrier]
    (group,) = _c1_group(cg)
    assert group.size == 16 and ("p:gate.weight", 0) in {(m.key, m.dim) for m in group.params()}
    for seed in range(3):
        res = fxprune.dead_channel_plan(model, x, fraction=0.5, seed=seed, frontend=frontend)
        assert res.plan.removed.get(group.id)
        assert fxprune.verify(model, res, x) <= RTOL, f"seed {seed}"
    res = fxprune.prune(model, x, ratio=0.5, frontend=frontend)
    assert res.module.get_parameter("c1.weight").shape[0] == 8
    assert res.oracle_diff is not None and res.oracle_diff <= RTOL


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_negative_order_norm_freezes_its_dim(frontend: str) -> None:
    torch.manual_seed(0)
    model, x = NormOps(order=float("-inf")).eval(), torch.randn(2, 3, 8, 8)
    cg = fxprune.analyze(model, x, frontend=frontend, warn=False)
    assert not _c1_group(cg), "min |x| over channels changes when a channel is removed"
    res = fxprune.prune(model, x, ratio=0.5, frontend=frontend)  # prunes around it, exactly
    assert res.oracle_diff is None or res.oracle_diff <= RTOL
