"""PrunePass in a torch.fx PassManager, next to a conv-bn fusion pass."""
from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import dead_half, tiny
from torch import fx, nn
from torch.fx.experimental.optimization import fuse
from torch.fx.passes.infra.pass_base import PassBase, PassResult
from torch.fx.passes.infra.pass_manager import PassManager

import fxprune
from fxprune.errors import FxPruneError
from fxprune.passes.prune_pass import PrunePass

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class FuseConvBN(PassBase):
    """``torch.fx.experimental.optimization.fuse`` as a pass: folds each BatchNorm into
    the conv before it (eval mode only); returns the input unchanged if there is none."""

    def requires(self, graph_module: fx.GraphModule) -> None:
        if graph_module.training:
            raise FxPruneError("FuseConvBN folds running statistics: call .eval() first")

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        def bns(m: nn.Module) -> int:
            return sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())

        fused = fuse(graph_module, inplace=False)
        return PassResult(fused, True) if bns(fused) < bns(graph_module) else \
            PassResult(graph_module, False)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _run_and_check(model: nn.Module, passes: list, atol: float = 1e-5) -> PassResult:
    """Run ``passes`` on the traced eval model; the result must match the original."""
    gm = fx.symbolic_trace(model.eval())
    before = copy.deepcopy(gm.state_dict())
    with torch.no_grad():
        ref = model(X)
    res = PassManager(passes=passes)(gm)
    assert isinstance(res.graph_module, fx.GraphModule)
    with torch.no_grad():
        torch.testing.assert_close(res.graph_module.eval()(X), ref, rtol=1e-4, atol=atol)
    for k, v in gm.state_dict().items():
        assert torch.equal(v, before[k]), f"the pass pipeline mutated its input ({k})"
    return res


@pytest.mark.parametrize("order", ["fuse-then-prune", "prune-then-fuse"])
def test_pipeline_with_fusion_equals_original_on_dead_channels(order):
    model = dead_half()
    fuse_pass, prune_pass = FuseConvBN(), PrunePass((X,), ratio=0.5, criterion="l1")
    passes = [fuse_pass, prune_pass] if order == "fuse-then-prune" else [prune_pass, fuse_pass]
    res = _run_and_check(model, passes)
    assert res.modified
    out = res.graph_module
    assert not any(isinstance(m, nn.BatchNorm2d) for m in out.modules())
    assert out.conv1.out_channels == 4 and out.conv2.out_channels == 8
    assert _params(out) < _params(model) / 2
    assert prune_pass.result.plan.num_removed == 4 + 8


def test_pruning_live_channels_matches_the_dead_channel_oracle():
    model = tiny()
    fused = FuseConvBN()(fx.symbolic_trace(model)).graph_module
    p = PrunePass((X,), ratio=0.5)
    res = p(fused)
    assert res.modified and _params(res.graph_module) < _params(fused)
    assert fxprune.verify(fused, p.result, (X,)) < 1e-5


def test_nothing_pruned_is_not_modified():
    gm = fx.symbolic_trace(tiny())
    res = PrunePass((X,), ratio=0.0)(gm)
    assert res.modified is False and res.graph_module is gm


def test_preconditions():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        PrunePass((X,), ratio=1.5)
    with pytest.raises(FxPruneError, match="GraphModule"):
        PrunePass((X,))(tiny())
    with pytest.raises(FxPruneError, match="eval"):
        FuseConvBN()(fx.symbolic_trace(tiny().train()))


def test_training_flag_and_buffers_are_preserved():
    gm = fx.symbolic_trace(tiny().train())
    stats = gm.bn1.running_mean.clone()
    res = PrunePass((X,), ratio=0.5)(gm)
    assert res.graph_module.training and torch.equal(gm.bn1.running_mean, stats)
