"""timm models the fx frontend now sees through: BatchNormAct2d (F.batch_norm on get_attr
parameters), weight-standardised convs (StdConv2d: F.batch_norm on the reshaped weight,
reshape_as, F.conv2d on the computed weight), LeViT's attention-bias tables
(``biases[:, idxs]``) and its bias cache filled while tracing.

Built with pretrained=False at small inputs; each must leave no barrier, prune most of
its groups and pass the dead-unit oracle on its exact groups.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import fxprune

timm = pytest.importorskip("timm")
RTOL = 1e-5


def _model(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).eval()


def _run_and_check(model: torch.nn.Module, x: torch.Tensor, exact: bool = True) -> fxprune.ChannelGraph:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a barrier warns: none is allowed here
        cg = fxprune.analyze(model, x)
    assert not [fg.id for fg in cg.frozen if fg.barrier]
    # only the model's input/output channels and kernel dims stay frozen
    held = [fg.id for fg in cg.frozen if not any(r.kind in ("boundary", "structural", "ignored")
                                                 for r in fg.reasons)]
    assert not held and len(cg.groups) >= 10, held
    with torch.no_grad():
        assert torch.equal(fxprune.prune(model, x, ratio=0.0).module(x), model(x))
    res = fxprune.dead_channel_plan(model, x, fraction=0.5, exact_only=exact)
    assert res.plan.num_removed > 0
    with torch.no_grad():
        assert res.module(x).shape == model(x).shape
    if exact:
        assert fxprune.verify(model, res, x) <= RTOL
    return cg


def test_efficientnet_b0_batchnormact() -> None:
    """BatchNormAct2d is traced into: F.batch_norm with get_attr params (was 16 groups, 173 frozen)."""
    cg = _run_and_check(_model("efficientnet_b0"), torch.randn(1, 3, 64, 64))
    assert not any(g.mixing for g in cg.groups)


def test_stdconv_resnetv2() -> None:
    """StdConv2d's statistics are per output filter over its inputs: a group that reaches a
    StdConv's input channels is prunable but marked mixing (not exact); the others are exact."""
    from functools import partial

    from timm.layers import GroupNormAct, StdConv2d
    from timm.models.resnetv2 import ResNetV2

    torch.manual_seed(0)
    model = ResNetV2(layers=(1, 1, 1, 1), channels=(32, 64, 96, 128), num_classes=10,
                     stem_chs=16, conv_layer=StdConv2d, stem_type="fixed",
                     norm_layer=partial(GroupNormAct, num_groups=8)).eval()  # BiT, shrunk
    x = torch.randn(1, 3, 64, 64)
    cg = _run_and_check(model, x, exact=False)
    assert any(g.mixing for g in cg.groups) and not all(g.mixing for g in cg.groups)
    _run_and_check(model, x, exact=True)  # the groups that reach no StdConv input are exact


@pytest.mark.slow
def test_levit_attention_bias_tables() -> None:
    model, x = _model("levit_128s"), torch.randn(1, 3, 224, 224)
    _run_and_check(model, x)
    fxprune.analyze(model, x)  # a second trace: the bias cache holds no proxy of the first


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_vit_5m_224", "levit_128s"])
def test_self_check_leaves_eval_time_caches_of_the_users_model_alone(name: str) -> None:
    """These cache tensors computed from their parameters (attention biases) at the first
    eval-mode forward: nothing prune runs on the user's model may leave its own values in
    that cache (the export frontend's fake-tensor forward left a FakeTensor in TinyViT's,
    and a self-check run on the user's model would leave zeroed ones)."""
    model, x = _model(name), torch.randn(1, 3, 224, 224)  # in eval mode, and stays so
    fxprune.prune(model, x, ratio=0.3)
    with torch.no_grad():
        after = model(x)  # no .eval() here: that would clear the cache
        fresh = _model(name)
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(after, fresh.eval()(x))
