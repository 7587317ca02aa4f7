"""The torch.export frontend: ATen graphs through analysis, shrink, the oracle, replay,
train/eval switching and re-export; and frontend="auto"."""
from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxprune
from fxprune.export import check_onnx, to_onnx, to_pt2

X = torch.randn(1, 3, 64, 64)


def _tv(name: str) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, name)().eval()


def _timm(name: str) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False).eval()


def _run_and_check(model: nn.Module, x=X, fraction: float = 0.5, **kw) -> fxprune.PruneResult:
    """Dead-channel plan on the export frontend: exact against the oracle, output shapes kept."""
    res = fxprune.dead_channel_plan(model, x, fraction, frontend="export", **kw)
    assert res.graph.frontend == "export"
    assert res.plan.settings["frontend"] == "export"
    assert res.plan.num_removed > 0
    assert fxprune.verify(model, res, x) <= 1e-5
    return res


class Heads(nn.Module):
    """A ViT-style block in plain torch: view/permute heads, unbind, sdpa, chunk, slice,
    pad, group and layer norm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)
        self.norm = nn.LayerNorm(16)
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(16, 8)
        self.gn = nn.GroupNorm(4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(self.gn(self.stem(x)), (1, 1, 1, 1))
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm(t)).reshape(b, h * w, 3, 4, c // 4).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        t = t + self.proj(a.transpose(1, 2).reshape(b, h * w, c))
        u, g = self.fc1(t).chunk(2, dim=-1)
        return self.fc2(u * torch.sigmoid(g))[:, 1:].mean(1)


class SamePad(nn.Module):
    """'same' padding computed from x.shape in Python, and a loop over a tensor:
    symbolic fx cannot trace it, torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih = x.shape[-1]
        pad = max((-(-ih // 2) - 1) * 2 + 3 - ih, 0)  # TF 'same' for stride 2, kernel 3
        x = torch.relu(self.bn(self.a(F.pad(x, [pad // 2, pad - pad // 2] * 2))))
        x = sum(t for t in x.unbind(0)).unsqueeze(0) if x.shape[0] > 1 else x
        return self.fc(self.drop(self.b(x).mean((2, 3))))


# ---- analysis ----------------------------------------------------------------

def test_resnet18_groups_match_fx() -> None:
    model = _tv("resnet18")
    ex = fxprune.analyze(model, X, frontend="export")
    fx_ = fxprune.analyze(model, X, frontend="fx")
    assert sorted(g.size for g in ex.groups) == sorted(g.size for g in fx_.groups)
    assert not [fg for fg in ex.frozen if fg.barrier]
    assert fx_.frontend == "fx" and ex.frontend == "export"


def test_heads_are_the_units_of_attention() -> None:
    cg = fxprune.analyze(Heads().eval(), X, frontend="export")
    assert {g.id: g.size for g in cg.groups} == {"stem.weight:0": 4, "qkv.weight:0": 4,
                                                  "fc1.weight:0": 16}


def test_unknown_frontend_is_refused() -> None:
    with pytest.raises(ValueError, match="frontend"):
        fxprune.analyze(Heads(), X, frontend="onnx")


# ---- equivalence ----------------------------------------------------------------

@pytest.mark.parametrize("build", [
    lambda: _tv("resnet18"), lambda: Heads().eval(),
    pytest.param(lambda: _tv("mobilenet_v3_small"), marks=pytest.mark.slow),
    pytest.param(lambda: _timm("efficientnet_b0"), marks=pytest.mark.slow)],
    ids=["resnet18", "heads", "mobilenet_v3_small", "efficientnet_b0"])
def test_dead_channels_are_exact(build) -> None:
    torch.manual_seed(0)
    model = build()
    res = _run_and_check(model)
    with torch.no_grad():
        assert res.module(X).shape == model(X).shape
    names = {n for n, _ in model.named_parameters()}
    assert {n for n, _ in res.module.named_parameters()} <= names  # the user's names


def test_empty_plan_is_bit_identical() -> None:
    model = SamePad().eval()
    res = fxprune.dead_channel_plan(model, X, 0.0, frontend="export")
    assert res.plan.num_removed == 0
    with torch.no_grad():
        assert torch.equal(res.module(X), model(X))


@pytest.mark.slow
def test_efficientnet_macs_drop_at_half() -> None:
    model = _timm("efficientnet_b0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fxprune.prune(model, X, 0.5, frontend="export")
    before, after = fxprune.count(model, X), fxprune.count(res.module, X)
    assert before.macs > 0 and after.macs < 0.6 * before.macs
    assert after.params < before.params


# ---- fine-tuning, re-export, replay ------------------------------------------------------

def test_train_eval_switch_batch_norm_and_dropout() -> None:
    torch.manual_seed(0)
    model = SamePad().eval()
    res = _run_and_check(model, fraction=0.25)
    m = res.module
    before = m.bn.running_mean.clone()
    m.train()
    y_train = m(X)
    assert not torch.equal(m.bn.running_mean, before)  # running stats update in train mode
    assert int(m.bn.num_batches_tracked) == 1
    m.eval()
    after = m.bn.running_mean.clone()
    y_eval, y_eval2 = m(X), m(X)
    assert torch.equal(m.bn.running_mean, after) and torch.equal(y_eval, y_eval2)
    assert not torch.allclose(y_train, y_eval)
    m.train()
    m(X).sum().backward()  # fine-tunable: gradients reach the user-named parameters
    assert m.get_parameter("a.weight").grad is not None


class StdConvNet(nn.Module):
    """A weight-standardised conv (timm's StdConv2d / ScaledStdConv2d: ``F.batch_norm`` on
    the weight with ``training=True`` and no running stats) after a plain conv, and an
    always-on dropout. Both hard-code their mode, so an eval-mode capture must keep them as
    written; the standardisation normalises over ``a``'s input channels (``c0``'s group:
    prunable, mixing), while ``a``'s own output channels stay exact."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.a.weight
        w = F.batch_norm(w.reshape(1, 8, -1), None, None, training=True, momentum=0.0,
                         eps=1e-5).reshape_as(w)
        h = torch.relu(F.conv2d(torch.relu(self.c0(x)), w, self.a.bias, padding=1))
        return self.b(F.dropout(h, 0.0, training=True))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_weight_standardisation_mixes_input_channels(frontend: str) -> None:
    torch.manual_seed(0)
    model = StdConvNet().eval()
    cg = fxprune.analyze(model, X, frontend=frontend, warn=False)
    mixing = {next(m.key for m in g.params() if m.dim == 0): g.mixing for g in cg.groups}
    assert mixing == {"p:c0.weight": True, "p:a.weight": False}, mixing
    res = fxprune.prune(model, X, ratio=0.5, frontend=frontend)
    assert res.oracle_diff is not None and res.oracle_diff <= 1e-5  # the exact group's check


def test_hard_coded_batch_statistics_and_dropout_keep_their_mode() -> None:
    torch.manual_seed(0)
    model = StdConvNet().eval()
    res = _run_and_check(model)  # raised "running_mean must be defined" when it read the mode
    bns = [n for n in res.module.graph.nodes if n.target is torch.ops.aten.batch_norm.default]
    assert bns and all(n.args[5] is True for n in bns)
    with torch.no_grad():
        assert torch.allclose(res.module.train()(X), res.module.eval()(X))


def test_pruned_module_exports_again(tmp_path) -> None:
    model = SamePad().eval()
    res = _run_and_check(model)
    ep = torch.export.export(res.module, (X,), strict=False)
    with torch.no_grad():
        assert torch.allclose(ep.module()(X), res.module(X), atol=1e-5)
    to_pt2(res.module, X, tmp_path / "m.pt2")
    assert (tmp_path / "m.pt2").exists()


@pytest.mark.slow
def test_pruned_module_exports_to_onnx(tmp_path) -> None:
    res = _run_and_check(_tv("mobilenet_v3_small"))
    res.module.eval()
    path = to_onnx(res.module, X, tmp_path / "m.onnx", exporter="dynamo", dynamic_batch=False)
    assert check_onnx(res.module, X, path) < 1e-3


def test_plan_replays_on_a_fresh_model() -> None:
    torch.manual_seed(0)
    model = Heads().eval()
    res = _run_and_check(model)
    fresh = copy.deepcopy(model)
    plan = fxprune.PruningPlan.from_json(res.plan.to_json())
    again = fxprune.apply_plan(fresh, X, plan)
    assert again.graph.frontend == "export"
    with torch.no_grad():
        assert torch.equal(again.module(X), res.module(X))


def test_fx_plan_replays_with_fx() -> None:
    model = _tv("resnet18")
    res = fxprune.dead_channel_plan(model, X, 0.5, frontend="fx")
    assert res.plan.settings["frontend"] == "fx"
    again = fxprune.apply_plan(copy.deepcopy(model), X, res.plan)
    assert again.graph.frontend == "fx"


# ---- auto --------------------------------------------------------------------------

def test_auto_picks_fx_for_traceable_models() -> None:
    cg = fxprune.analyze(_tv("resnet18"), X)
    assert cg.frontend == "fx" and "fx" in cg.frontend_reason


def test_auto_falls_back_to_export_and_says_why() -> None:
    model = SamePad().eval()
    with pytest.raises(fxprune.TraceError):
        fxprune.analyze(model, X, frontend="fx")
    cg = fxprune.analyze(model, X)
    assert cg.frontend == "export"
    assert "symbolic torch.fx failed" in cg.frontend_reason
    res = fxprune.prune(model, X, 0.5)
    assert res.plan.settings["frontend"] == "export"
    assert res.module(X).shape == model(X).shape


class ClampMin(nn.Module):
    """torch.clamp_min has no fx rule (a barrier there) but an ATen one."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.b(torch.clamp_min(self.a(x), 0.0))


def test_auto_prefers_export_when_fx_leaves_barriers() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fx_ = fxprune.analyze(ClampMin(), X, frontend="fx")
        cg = fxprune.analyze(ClampMin(), X)
    if not [f for f in fx_.frozen if f.barrier]:
        pytest.skip("fx has a rule for clamp_min now; nothing for auto to improve")
    assert cg.frontend == "export" and "export left 0" in cg.frontend_reason
    assert [g.id for g in cg.groups] == ["a.weight:0"]


@pytest.mark.slow
def test_auto_keeps_fx_for_timm_batchnormact() -> None:
    """BatchNormAct2d runs F.batch_norm on get_attr parameters under fx: once a barrier that
    sent auto to export, now a functional-form rule, so fx leaves nothing for export to fix."""
    model = _timm("efficientnet_b0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cg = fxprune.analyze(model, X)
    assert cg.frontend == "fx" and not [f for f in cg.frozen if f.barrier]


def test_data_dependent_branch_fails_on_both_frontends() -> None:
    class Branchy(nn.Module):
        """Branches on a tensor value: neither frontend can capture it."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return torch.relu(y) if y.sum() > 0 else y

    with pytest.raises(fxprune.TraceError, match="torch.export failed too"):
        fxprune.analyze(Branchy(), X)


def test_trace_returns_a_runnable_exported_graph() -> None:
    model = SamePad().eval()
    gm = fxprune.trace(model, X)
    assert any(isinstance(n.target, torch._ops.OpOverload) for n in gm.graph.nodes)
    with torch.no_grad():
        assert torch.allclose(gm(X), model(X))


# ---- Ultralytics ---------------------------------------------------------------------

@pytest.mark.slow
def test_yolov8n_prunes_through_export_keeping_detect_shapes() -> None:
    os.environ["YOLO_OFFLINE"] = "1"
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DetectionModel("yolov8n.yaml", verbose=False).eval()
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        ref = model(x)
    res = fxprune.dead_channel_plan(model, x, 0.5)
    assert res.graph.frontend == "export"
    assert fxprune.verify(model, res, x) <= 1e-4
    with torch.no_grad():
        out = res.module(x)
    flat = lambda o: [t.shape for t in torch.utils._pytree.tree_leaves(o)]  # noqa: E731
    assert flat(out) == flat(ref)
    before, after = fxprune.count(model, x), fxprune.count(res.module, x)
    assert after.macs < 0.7 * before.macs


def test_inspect_says_which_frontend(capsys) -> None:
    from fxprune import cli

    assert cli.main(["inspect", "resnet18", "--input-shape", "1,3,32,32"]) == 0
    assert "frontend fx: auto: symbolic torch.fx traced" in capsys.readouterr().out


def test_saved_export_result_loads_back(tmp_path) -> None:
    from fxprune import io

    torch.manual_seed(0)
    model = SamePad().eval()
    res = fxprune.prune(model, X, 0.5)  # auto -> export: the plan records it
    assert res.plan.settings["frontend"] == "export"
    with torch.no_grad():  # the trained weights: the loaded module must carry them
        res.module.get_parameter("fc.weight").mul_(2)
    io.save(tmp_path / "m", res, example_inputs=(X,))
    back = io.load(tmp_path / "m", lambda: SamePad())
    assert back.graph.frontend == "export"
    with torch.no_grad():
        assert torch.equal(back.module.eval()(X), res.module.eval()(X))


class TokenMLP(nn.Module):
    """Integer token inputs (embedding) and an MLP: the rewrite runs on integer inputs too."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        return h + self.down(F.gelu(self.up(h)))


def test_integer_inputs_prune_exactly() -> None:
    ids = torch.randint(0, 50, (2, 7))
    res = _run_and_check(TokenMLP().eval(), ids)
    assert [g for g in res.plan.removed] == ["up.weight:0"]


@pytest.mark.slow
def test_tiny_bert_heads_and_mlp_exact() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, vocab_size=100)
    model = transformers.BertForSequenceClassification(cfg).eval()
    res = _run_and_check(model, torch.randint(0, 100, (1, 16)))
    assert "bert.encoder.layer.0.attention.self.query.weight:0" in res.plan.removed


class _EinsumAttention(torch.nn.Module):
    """Relative-position attention written with einsum (torchvision's MViT does this)."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.einsum("bhqd,bhkd->bhqk", q, k).softmax(-1)
        return self.proj(torch.einsum("bhqk,bhkd->bhqd", attn, v).transpose(1, 2).reshape(b, n, c))


def test_einsum_is_not_a_barrier_at_aten_level() -> None:
    model, x = _EinsumAttention().eval(), torch.randn(2, 5, 16)
    cg = fxprune.analyze(model, x, frontend="export")
    assert not [fg for fg in cg.frozen if fg.barrier]
    dead = fxprune.dead_channel_plan(model, x, frontend="export")
    assert any(dead.plan.removed.values())
    assert fxprune.verify(model, dead, x) < 1e-5


class _CachesIntoItsOwnDict(nn.Module):
    """Caches a tensor computed from a parameter at the first eval-mode forward, into a
    dict it owns (timm's TinyViT/LeViT attention-bias caches do this)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)
        self.shift = nn.Parameter(torch.randn(8))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            shift = self.shift[:, None, None]
        else:
            if "shift" not in self.cache:
                self.cache["shift"] = self.shift[:, None, None] * 1.0
            shift = self.cache["shift"]
        return self.head(self.conv(x) + shift)


def test_export_leaves_no_fake_tensor_in_a_cache_the_model_owns() -> None:
    torch.manual_seed(0)
    model, x = _CachesIntoItsOwnDict().eval(), torch.randn(1, 3, 12, 12)
    reference = copy.deepcopy(model)
    res = fxprune.prune(model, x, ratio=0.5, frontend="export")
    assert res.plan.num_removed > 0
    assert not model.cache  # what the fake-tensor forward put there is gone
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
