"""Attention as real models write it, through the export frontend
(fxprune/rules/aten_attention.py).

Toy modules (no transformers needed) pin down each rule: a per-head additive
bias passed as the sdpa mask, sdpa's enable_gqa with several and with one KV
head, and RMSNorm's mean of squares. Then tiny random-weight Hugging Face
models from configs (tests/hf_models.py, skipped without transformers). Per model: the head
and MLP groups exist with the expected number of units; pruning a random part
of every exact group equals the dead-channel oracle; for the grouped-query
decoders, removing a KV head removes the query heads that share it; and
prune(ratio=0.5) removes at least 30% of the MACs. BERT (encoder) and LLaMA
(GQA, rotary, RMSNorm, gated MLP) run in the fast suite; the rest (GPT-2's
Conv1D and tied embeddings among them) are marked slow.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.api import PruneResult
from fxprune.count import count
from fxprune.passes.shrink import shrink
from fxprune.select import make_plan

import hf_models

needs_hf = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                              reason="transformers is not installed (extra 'hf')")

FAST = {"bert", "llama"}  # one encoder, one GQA decoder (the CI subset)

# model -> (head param, axis, head units per layer), (MLP param, axis, MLP units)
EXPECTED = {
    "bert": (("model.bert.encoder.layer.0.attention.self.query.weight", 0, 4),
             ("model.bert.encoder.layer.0.intermediate.dense.weight", 0, 128)),
    "roberta": (("model.encoder.layer.0.attention.self.query.weight", 0, 4),
                ("model.encoder.layer.0.intermediate.dense.weight", 0, 128)),
    "distilbert": (("model.transformer.layer.0.attention.q_lin.weight", 0, 4),
                   ("model.transformer.layer.0.ffn.lin1.weight", 0, 128)),
    "gpt2": (("model.transformer.h.0.attn.c_attn.weight", 1, 4),  # Conv1D: weight is [in, out]
             ("model.transformer.h.0.mlp.c_fc.weight", 1, 256)),
    # 8 query heads, 2 KV heads: a unit is one KV group (4 query heads)
    "llama": (("model.model.layers.0.self_attn.q_proj.weight", 0, 2),
              ("model.model.layers.0.mlp.gate_proj.weight", 0, 128)),
    "qwen2": (("model.model.layers.0.self_attn.q_proj.weight", 0, 2),
              ("model.model.layers.0.mlp.gate_proj.weight", 0, 128)),
    "mistral": (("model.model.layers.0.self_attn.q_proj.weight", 0, 2),
                ("model.model.layers.0.mlp.gate_proj.weight", 0, 128)),
    # T5 shares layer 0's relative attention bias with every layer: one head group
    "t5_encoder": (("model.encoder.block.0.layer.0.SelfAttention.q.weight", 0, 4),
                   ("model.encoder.block.0.layer.1.DenseReluDense.wi.weight", 0, 128)),
    "vit": (("model.vit.layers.0.attention.q_proj.weight", 0, 4),
            ("model.vit.layers.0.mlp.fc1.weight", 0, 128)),
    "swin": (("model.swin.encoder.layers.0.blocks.0.attention.q_proj.weight", 0, 2),
             ("model.swin.encoder.layers.0.blocks.0.mlp.fc1.weight", 0, 64)),
    "convnext": (None, ("model.convnext.encoder.stages.0.layers.0.pwconv1.weight", 0, 64)),
}

# model -> (embedding / patch-projection param, axis, hidden width): the residual stream,
# prunable through LayerNorm / RMSNorm and marked mixing. (RoBERTa, DistilBERT and the T5
# encoder return the hidden states, so their width is an output and stays.)
HIDDEN = {
    "bert": ("model.bert.embeddings.word_embeddings.weight", 1, 64),
    "gpt2": ("model.transformer.wpe.weight", 1, 64),
    "llama": ("model.model.embed_tokens.weight", 1, 64),
    "qwen2": ("model.model.embed_tokens.weight", 1, 64),
    "mistral": ("model.model.embed_tokens.weight", 1, 64),
    "vit": ("model.vit.embeddings.patch_embeddings.projection.weight", 0, 64),
    "swin": ("model.swin.embeddings.patch_embeddings.projection.weight", 0, 16),
}


def _param(name: str):
    return pytest.param(name, marks=(needs_hf,) if name in FAST else (needs_hf, pytest.mark.slow))


_MODELS = [_param(n) for n in EXPECTED]
_CACHE: dict = {}


def _analysed(name: str):
    """(model, inputs, ignore, ChannelGraph) of one tiny model, exported once per session."""
    if name not in _CACHE:
        model, x, ignore = hf_models.build(name)
        cg = fxprune.analyze(model, x, frontend="export", warn=False)
        _CACHE[name] = (model, x, ignore, cg)
    return _CACHE[name]


def _group_of(cg, param: str, axis: int):
    """The group whose members include dim ``axis`` of parameter ``param``."""
    for g in cg.groups:
        if any(m.key == f"p:{param}" and m.dim == axis for m in g.members):
            return g
    frozen = [fg for fg in cg.frozen if f"{param}:{axis}" in fg.members]
    raise AssertionError(f"{param}:{axis} is in no prunable group"
                         + (f" (frozen: {frozen[0].describe()})" if frozen else ""))


def _run(cg, model, x, removed: dict) -> tuple[PruneResult, float]:
    """Shrink with ``removed`` and compare against the dead-channel oracle."""
    plan = make_plan(cg, removed, "test", {})
    result = PruneResult(shrink(cg, plan), plan, cg, x)
    return result, fxprune.verify(model, result, x)


# ---- toy modules: one rule each ------------------------------------------------------

TOKENS = torch.randn(2, 6, 32)


class BiasedHeads(nn.Module):
    """Self-attention with a learned per-head bias (H, S, S) passed as sdpa's additive mask
    (T5's relative attention bias, Swin's position table): the bias rows follow the heads."""

    def __init__(self, dim: int = 32, heads: int = 4, seq: int = 6):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.randn(heads, seq, seq))

    def forward(self, x):
        B, S, E = x.shape
        q, k, v = (t.view(B, S, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(E, -1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias.unsqueeze(0))
        return self.proj(y.transpose(1, 2).reshape(B, S, E))


class GroupedQuery(nn.Module):
    """sdpa(..., enable_gqa=True): ``heads`` query heads read ``kv_heads`` key/value heads."""

    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 2, head_dim: int = 8):
        super().__init__()
        self.hd = head_dim
        self.q, self.o = nn.Linear(dim, heads * head_dim), nn.Linear(heads * head_dim, dim)
        self.k, self.v = nn.Linear(dim, kv_heads * head_dim), nn.Linear(dim, kv_heads * head_dim)

    def forward(self, x):
        B, S, _ = x.shape
        q, k, v = (f(x).view(B, S, -1, self.hd).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(B, S, -1))


class RMSNormMLP(nn.Module):
    """fc1 -> RMSNorm written out (x * rsqrt(mean(x**2) + eps) * w) -> fc2."""

    def __init__(self, dim: int = 32, hidden: int = 16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.weight = nn.Parameter(torch.rand(hidden) + 0.5)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight)


class CenteredMLP(nn.Module):
    """fc1 -> subtract the channel mean -> fc2: a mean that is not RMSNorm's (not of a square)."""

    def __init__(self, dim: int = 32, hidden: int = 16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h - h.mean(-1, keepdim=True))


def _toy(model: nn.Module):
    torch.manual_seed(0)
    model = model.eval()
    return model, fxprune.analyze(model, TOKENS, frontend="export", warn=False)


def test_per_head_bias_mask_follows_the_heads():
    model, cg = _toy(BiasedHeads())
    g = _group_of(cg, "bias", 0)
    assert g.size == 4 and not g.mixing
    assert _group_of(cg, "qkv.weight", 0) is g and _group_of(cg, "proj.weight", 1) is g
    result, diff = _run(cg, model, TOKENS, {g.id: [1, 2]})
    assert diff < 1e-5
    assert tuple(result.module.get_parameter("bias").shape) == (2, 6, 6)


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["grouped", "multi-query"])
def test_enable_gqa_prunes_query_heads_with_their_kv_head(kv_heads):
    """Two KV heads: a unit is one KV group (2 query heads + its k/v rows). One KV head
    (multi-query): every query head is a unit, the KV head stays."""
    model, cg = _toy(GroupedQuery(kv_heads=kv_heads))
    g = _group_of(cg, "q.weight", 0)
    q_rows = next(m for m in g.members if m.key == "p:q.weight")
    if kv_heads == 2:
        assert g.size == 2 and _group_of(cg, "k.weight", 0) is g
        assert q_rows.unit.tolist() == [0] * 16 + [1] * 16
    else:
        assert g.size == 4 and all(m.key != "p:k.weight" for m in g.members)
    result, diff = _run(cg, model, TOKENS, {g.id: [0]})
    assert diff < 1e-5
    shapes = {n: tuple(p.shape) for n, p in result.module.named_parameters()}
    assert shapes["q.weight"][0] == 32 - (16 if kv_heads == 2 else 8)
    assert shapes["k.weight"][0] == (8 if kv_heads == 2 else 8)


def test_rms_norm_is_prunable_and_mixing_but_a_plain_channel_mean_freezes():
    model, cg = _toy(RMSNormMLP())
    g = _group_of(cg, "fc1.weight", 0)
    assert g.size == 16 and g.mixing and _group_of(cg, "weight", 0) is g
    result, _ = _run(cg, model, TOKENS, {g.id: [0, 5]})
    assert tuple(result.module.get_parameter("weight").shape) == (14,)
    with torch.no_grad():
        assert result.module(TOKENS).shape == TOKENS.shape
    _, centred = _toy(CenteredMLP())
    with pytest.raises(AssertionError, match="no prunable group"):
        _group_of(centred, "fc1.weight", 0)


# ---- tiny Hugging Face models ------------------------------------------------------------

@pytest.mark.parametrize("name", _MODELS)
def test_head_and_mlp_groups_are_prunable(name):
    model, x, _, cg = _analysed(name)
    assert cg.frontend == "export"
    heads, mlp = EXPECTED[name]
    for spec in filter(None, (heads, mlp)):
        param, axis, units = spec
        g = _group_of(cg, param, axis)
        assert g.size == units, f"{param}:{axis}: {g.size} units, expected {units}"
        assert not g.mixing, f"{g.id} should be exact (no normalisation inside)"


@pytest.mark.parametrize("name", [_param(n) for n in HIDDEN])
def test_hidden_width_is_prunable_and_mixing(name):
    """The residual width runs through LayerNorm/RMSNorm: prunable, never claimed exact."""
    model, x, _, cg = _analysed(name)
    param, axis, width = HIDDEN[name]
    g = _group_of(cg, param, axis)
    assert g.size == width and g.mixing
    result, _ = _run(cg, model, x, {g.id: list(range(0, width, 4))})
    before = {f"{n}.weight" for n, m in model.named_modules()
              if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None
              and m.weight.shape == (width,)}
    after = dict(result.module.named_parameters())
    assert before and all(after[n].shape == (width - width // 4,) for n in before)
    with torch.no_grad():
        assert result.module(*x).shape == model(*x).shape


@pytest.mark.parametrize("name", _MODELS)
def test_dead_channel_equivalence_on_head_and_mlp_groups(name):
    model, x, _, cg = _analysed(name)
    rng = np.random.default_rng(0)
    removed = {g.id: sorted(rng.choice(g.size, g.size // 2, replace=False).tolist())
               for g in cg.groups if not g.mixing and g.size > 1}
    heads, mlp = EXPECTED[name]
    for param, axis, _ in filter(None, (heads, mlp)):
        assert _group_of(cg, param, axis).id in removed
    result, diff = _run(cg, model, x, removed)
    assert diff < 1e-5, f"{name}: pruned module differs from the dead-channel oracle by {diff:.3g}"
    assert sum(p.numel() for p in result.module.parameters()) < \
        sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", [_param(n) for n in hf_models.GQA])
@pytest.mark.parametrize("force_gqa", [False, True], ids=["repeat_kv", "enable_gqa"])
def test_removing_a_kv_head_removes_its_query_heads(name, force_gqa, monkeypatch):
    """8 query heads share 2 KV heads (repeat_kv, or sdpa's enable_gqa when forced):
    removing KV head 0 removes query heads 0-3 and keeps num_key_value_groups at 4."""
    if force_gqa:
        monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "1")
        model, x, _ = hf_models.build(name)
        cg = fxprune.analyze(model, x, frontend="export", warn=False)
        sdpa = [n for n in cg.traced.graph.nodes
                if n.target is torch.ops.aten.scaled_dot_product_attention.default]
        assert sdpa and all(n.kwargs.get("enable_gqa") for n in sdpa)
    else:
        model, x, _, cg = _analysed(name)
    attn = "model.model.layers.0.self_attn"
    g = _group_of(cg, f"{attn}.q_proj.weight", 0)
    assert g.size == 2
    q_rows = next(m for m in g.members if m.key == f"p:{attn}.q_proj.weight")
    assert q_rows.unit.tolist() == [0] * 32 + [1] * 32  # query heads 0-3 (8 rows each): KV head 0
    result, diff = _run(cg, model, x, {g.id: [0]})
    assert diff < 1e-5
    shapes = {n: tuple(p.shape) for n, p in result.module.named_parameters()}
    hd = 8
    q, k, v = (shapes[f"{attn}.{p}_proj.weight"][0] for p in "qkv")
    assert (q, k, v) == (4 * hd, hd, hd)
    assert shapes[f"{attn}.o_proj.weight"] == (64, 4 * hd)
    assert (q // hd) // (k // hd) == 4  # num_key_value_groups is unchanged
    original = dict(model.named_parameters())[f"{attn}.q_proj.weight"]
    pruned = dict(result.module.named_parameters())[f"{attn}.q_proj.weight"]
    assert torch.equal(pruned, original[32:])  # the surviving query heads are heads 4-7


@pytest.mark.parametrize("name", _MODELS)
def test_half_ratio_removes_a_third_of_the_macs(name):
    model, x, ignore, _ = _analysed(name)
    result = fxprune.prune(model, x, ratio=0.5, ignore=ignore, frontend="export")
    before = count(_analysed(name)[3].gm, x).macs
    after = count(result.module, x).macs
    assert after <= 0.7 * before, f"{name}: {before} -> {after} MACs"
    with torch.no_grad():
        out = result.module(*x)
    assert out.shape == model(*x).shape
