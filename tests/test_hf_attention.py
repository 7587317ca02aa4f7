"""Hugging Face attention through the export frontend (fxprune/rules/aten_attention.py).

Tiny random-weight models from configs (tests/hf_models.py). Per model: the head
and MLP groups exist with the expected number of units; pruning a random part
of every exact group equals the dead-channel oracle; for the grouped-query
decoders, removing a KV head removes the query heads that share it; and
prune(ratio=0.5) removes at least 30% of the MACs. BERT (encoder), GPT-2
(Conv1D, tied embeddings) and LLaMA (GQA, rotary, RMSNorm, gated MLP) run in
the fast suite, the rest are marked slow.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import fxprune  # noqa: E402
from fxprune.api import PruneResult  # noqa: E402
from fxprune.count import count  # noqa: E402
from fxprune.passes.shrink import shrink  # noqa: E402
from fxprune.select import make_plan  # noqa: E402

import hf_models  # noqa: E402

FAST = {"bert", "gpt2", "llama"}

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

_MODELS = [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in EXPECTED]
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
    frozen = [fg for fg in cg.frozen if any(d == f"{param}:{axis}" for d in fg.dims)]
    raise AssertionError(f"{param}:{axis} is in no prunable group"
                         + (f" (frozen: {frozen[0].describe()})" if frozen else ""))


def _run(cg, model, x, removed: dict) -> tuple[PruneResult, float]:
    """Shrink with ``removed`` and compare against the dead-channel oracle."""
    plan = make_plan(cg, removed, "test", {})
    result = PruneResult(shrink(cg, plan), plan, cg, x)
    return result, fxprune.verify(model, result, x)


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


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
                                  for n in HIDDEN])
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


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
                                  for n in hf_models.GQA])
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
    rows = {m.key: m.unit for m in g.members if m.key == f"p:{attn}.q_proj.weight"}
    q_unit = rows[f"p:{attn}.q_proj.weight"]
    assert q_unit.tolist() == [0] * 32 + [1] * 32  # query heads 0-3 (8 rows each) share KV head 0
    result, diff = _run(cg, model, x, {g.id: [0]})
    assert diff < 1e-5
    shapes = {n: tuple(p.shape) for n, p in result.module.named_parameters()}
    hd = 8
    q, k, v = (shapes[f"{attn}.{p}_proj.weight"][0] for p in "qkv")
    assert (q, k, v) == (4 * hd, hd, hd)
    assert shapes[f"{attn}.o_proj.weight"] == (64, 4 * hd)
    assert (q // hd) // (k // hd) == 4  # num_key_value_groups is unchanged
    keep = torch.cat([torch.arange(32, 64)])
    original = dict(model.named_parameters())[f"{attn}.q_proj.weight"]
    pruned = dict(result.module.named_parameters())[f"{attn}.q_proj.weight"]
    assert torch.equal(pruned, original[keep])  # the surviving query heads are heads 4-7


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
