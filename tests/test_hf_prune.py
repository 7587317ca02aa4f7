"""fxprune.hf: Hugging Face in, Hugging Face out (tiny random-weight configs, no downloads).

Per family (Llama, Qwen2, Mistral with GQA; GPT-2 and BERT MLP-only): the result is the
same class with an updated config and equals the dead-unit oracle; the GQA modes keep
``num_key_value_groups`` integral; ``save_pretrained`` + ``from_pretrained`` in a fresh
process without fxprune gives the same logits; greedy ``generate()`` with the KV cache
matches the oracle; calibration from tests/data/calib.txt tokenised by a BPE trained
offline; hidden-size pruning keeps tied embeddings; per-layer plans save in fxprune's
format; errors name the argument.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"

import hf_models  # noqa: E402

import fxprune.hf as H  # noqa: E402
from fxprune.errors import FxPruneError  # noqa: E402
from fxprune.hf_layout import HFLayoutError  # noqa: E402

CALIB = Path(__file__).parent / "data" / "calib.txt"
DECODERS = ("llama", "qwen2", "mistral")
FAMILIES = DECODERS + ("gpt2", "bert")


def _model(name: str, **overrides):
    """The bare HF model of a tiny builder (hf_models wraps it for torch.export)."""
    wrapped, (ids,), _ = hf_models.build(name)
    model = wrapped.model
    if overrides:
        cfg = model.config
        for k, v in overrides.items():
            setattr(cfg, k, v)
        torch.manual_seed(0)
        model = type(model)(cfg).eval()
    return model, ids


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _run_and_check(name: str, **kw):
    """Prune without the built-in check, then check against the oracle here."""
    model, ids = _model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = H.plan(model, ids, **kw)
    pruned = H.apply(model, p)
    assert type(pruned) is type(model)
    diff = H.check(model, pruned, p, ids, rtol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "input mutated"
    return model, pruned, p, ids, diff


def _tokenizer():
    """A byte-level BPE trained on calib.txt, offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=hf_models.VOCAB, special_tokens=["[UNK]"])
    tok.train([str(CALIB)], trainer)
    return tok


def _calibration(n: int = 4, seq: int = 16) -> list[torch.Tensor]:
    ids = _tokenizer().encode(CALIB.read_text()).ids
    assert max(ids) < hf_models.VOCAB
    return [torch.tensor(ids[i * seq:(i + 1) * seq]) for i in range(n)]


@pytest.mark.parametrize("criterion", ["l2", "activation", "taylor"])
@pytest.mark.parametrize("name", FAMILIES)
def test_same_class_updated_config_equals_oracle(name, criterion):
    model, pruned, p, ids, diff = _run_and_check(name, ratio=0.5, criterion=criterion)
    cfg0, cfg = model.config, pruned.config
    if name in DECODERS:
        assert cfg.num_key_value_heads == cfg0.num_key_value_heads // 2
        assert cfg.num_attention_heads == cfg0.num_attention_heads // 2
        assert cfg.head_dim == cfg0.hidden_size // cfg0.num_attention_heads
        assert cfg.intermediate_size == cfg0.intermediate_size // 2
        q = pruned.model.layers[1].self_attn.q_proj
        assert q.out_features == cfg.num_attention_heads * cfg.head_dim
    else:
        width = pruned.config.n_inner if name == "gpt2" else pruned.config.intermediate_size
        width0 = (cfg0.n_inner or 4 * cfg0.n_embd) if name == "gpt2" else cfg0.intermediate_size
        assert width == width0 // 2
    assert sum(t.numel() for t in pruned.parameters()) < sum(t.numel() for t in model.parameters())
    if name == "gpt2":  # GPT-2 ties its LM head to the token embedding
        assert pruned.lm_head.weight is pruned.transformer.wte.weight


def test_half_precision_and_prune_hidden_flag():
    """bf16 weights prune and pass the oracle check at a half-precision tolerance; a single
    ratio with prune_hidden=True also shrinks the hidden size."""
    model, ids = _model("llama")
    pruned = H.prune(model.to(torch.bfloat16), ids, ratio=0.5, criterion="activation")
    assert pruned.dtype == torch.bfloat16 and pruned.config.num_key_value_heads == 1
    p = H.plan(model.float(), ids, ratio=0.25, prune_hidden=True)
    assert {s.kind for s in p.sets} == {"heads", "mlp", "hidden"}
    assert H.apply(model, p).config.hidden_size == 48


@pytest.mark.parametrize("name", DECODERS)
def test_gqa_queries_mode_removes_equal_query_heads_per_group(name):
    model, pruned, p, _, _ = _run_and_check(name, ratio={"heads": 0.5}, gqa="queries")
    nq, nkv = model.config.num_attention_heads, model.config.num_key_value_heads
    assert pruned.config.num_key_value_heads == nkv
    assert pruned.config.num_attention_heads == nq // 2
    rep = nq // nkv
    for s in p.sets:
        gone = p.removed[s.key]
        per_group = [sum(1 for u in gone if u // rep == g) for g in range(nkv)]
        assert per_group == [rep // 2] * nkv
    attn = pruned.model.layers[0].self_attn
    assert attn.num_key_value_groups == pruned.config.num_attention_heads // nkv


def test_kv_group_scored_with_its_query_heads():
    """Activation score of a KV group = sum of its query heads' scores (queries mode)."""
    model, ids = _model("llama")
    fam = H.family_of(model)
    from fxprune.hf_scores import score_units

    groups = fam.unit_sets(model, "groups", ("heads",))
    queries = fam.unit_sets(model, "queries", ("heads",))
    sg = score_units(model, groups, "activation", [ids])
    sq = score_units(model, queries, "activation", [ids])
    nkv = model.config.num_key_value_heads
    for a, b in zip(groups, queries):
        per_query = sq[b.key].reshape(nkv, -1)
        # the group's block norm is the root of the sum of its heads' squared norms, per token:
        # it lies between the largest head and the sum of heads
        assert torch.all(sg[a.key] <= per_query.sum(1) + 1e-6)
        assert torch.all(sg[a.key] >= per_query.max(1).values - 1e-6)


def _save_all(tmp_path) -> list[tuple[str, str]]:
    """Prune every family (and a tied Llama with hidden pruning), save_pretrained, keep logits."""
    jobs = []
    for name in FAMILIES:
        model, ids = _model(name)
        pruned = H.prune(model, ids, ratio=0.5)
        out = tmp_path / name
        pruned.save_pretrained(out)
        assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
        torch.save({"ids": ids, "logits": _logits(pruned, ids)}, out / "expect.pt")
        auto = "AutoModelForSequenceClassification" if name == "bert" else "AutoModelForCausalLM"
        jobs.append((str(out), auto))
    hidden, ids = _model("llama", tie_word_embeddings=True)
    pruned = H.prune(hidden, ids, ratio={"heads": 0.5, "mlp": 0.25, "hidden": 0.5})
    pruned.save_pretrained(tmp_path / "hidden")
    torch.save({"ids": ids, "logits": _logits(pruned, ids)}, tmp_path / "hidden" / "expect.pt")
    jobs.append((str(tmp_path / "hidden"), "AutoModelForCausalLM"))
    return jobs


def test_round_trip_from_pretrained_same_logits(tmp_path):
    """In this process (fast): from_pretrained through the Auto classes gives the same logits."""
    import transformers

    for d, auto in _save_all(tmp_path):
        m = getattr(transformers, auto).from_pretrained(d).eval()
        e = torch.load(Path(d) / "expect.pt")
        got = _logits(m, e["ids"])
        assert float((got - e["logits"]).abs().max() / e["logits"].abs().max()) <= 1e-5, d
    saved = json.loads((tmp_path / "hidden" / "config.json").read_text())
    assert saved["hidden_size"] == 32 and saved["head_dim"] == 8


@pytest.mark.slow
def test_round_trip_fresh_process_same_logits(tmp_path):
    """save_pretrained -> from_pretrained in a subprocess without fxprune -> same logits
    (slow only because a fresh interpreter imports transformers: ~20 s on 2 busy cores)."""
    jobs = _save_all(tmp_path)
    script = (
        "import json, sys, torch, transformers\n"
        "res = []\n"
        "for d, auto in json.loads(sys.argv[1]):\n"
        "    m = getattr(transformers, auto).from_pretrained(d).eval()\n"
        "    e = torch.load(d + '/expect.pt')\n"
        "    with torch.no_grad(): got = m(input_ids=e['ids']).logits\n"
        "    w = e['logits']\n"
        "    res.append([d, float((got - w).abs().max() / w.abs().max()), type(m).__name__])\n"
        "assert 'fxprune' not in sys.modules\n"
        "print(json.dumps(res))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(res) == len(jobs)
    for d, rel, cls in res:
        assert rel <= 1e-5, (d, rel)


@pytest.mark.parametrize("name", DECODERS + ("gpt2",))
def test_generate_with_kv_cache_matches_oracle(name):
    model, ids = _model(name)
    p = H.plan(model, ids, ratio=0.5, criterion="activation")
    pruned, oracle = H.apply(model, p), H.dead_unit_oracle(model, p)
    kw = dict(max_new_tokens=20, do_sample=False, use_cache=True, pad_token_id=0)
    prompt = ids[:1]
    got = pruned.generate(prompt, **kw)
    want = oracle.generate(prompt, **kw)
    assert got.shape[1] == prompt.shape[1] + 20
    assert torch.equal(got, want)


def test_calibration_from_text_file_activation_matches_hooks():
    batches = _calibration()
    model, ids = _model("llama")
    fam = H.family_of(model)
    sets = fam.unit_sets(model, "groups", ("mlp",))
    from fxprune.hf_scores import score_units

    scores = score_units(model, sets, "activation", batches)
    seen = []
    h = model.model.layers[1].mlp.down_proj.register_forward_hook(
        lambda m, a, o: seen.append(a[0].detach().abs().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for b in batches:
            model(input_ids=b[None])
    h.remove()
    want = torch.cat(seen).mean(0)
    torch.testing.assert_close(scores[("mlp", 1)], want, rtol=1e-5, atol=1e-7)
    pruned = H.prune(model, ids, ratio=0.3, criterion="taylor", calibration=batches)
    assert pruned.config.intermediate_size == model.config.intermediate_size - 38


def test_criteria_choose_different_units():
    model, ids = _model("llama")
    batches = _calibration()
    removed = {c: H.plan(model, ids, ratio={"mlp": 0.5}, criterion=c, calibration=batches).removed
               for c in ("l2", "activation", "taylor")}
    assert removed["l2"] != removed["activation"] or removed["l2"] != removed["taylor"]


def test_hidden_pruning_keeps_ties():
    model, ids = _model("llama", tie_word_embeddings=True)
    pruned = H.prune(model, ids, ratio={"hidden": 0.25})
    assert pruned.config.hidden_size == 48 and pruned.config.head_dim == 8
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    assert pruned.model.norm.weight.shape == (48,)
    assert torch.isfinite(_logits(pruned, ids)).all()


def test_non_uniform_saves_fxprune_format(tmp_path):
    model, ids = _model("llama")
    p = H.plan(model, ids, ratio={"mlp": 0.5}, uniform=False)
    widths = p.widths("mlp")
    assert sum(widths) == sum(s.size for s in p.sets) - 2 * 64
    pruned = H.apply(model, p)
    H.check(model, pruned, p, ids, rtol=1e-5)
    if len(set(widths)) == 1:
        pytest.skip(f"global ranking happened to give equal widths {widths}")
    assert not H.is_uniform(pruned)
    with pytest.raises(H.NonUniformCheckpointError, match="per-layer widths"):
        H.save(pruned, tmp_path / "hf", hf=True)
    with pytest.warns(UserWarning, match="cannot be a plain HF checkpoint"):
        assert H.save(pruned, tmp_path / "fx") == "fxprune"
    back = H.load(tmp_path / "fx")
    torch.testing.assert_close(_logits(back, ids), _logits(pruned, ids), rtol=1e-5, atol=1e-6)


def test_uniform_save_is_hf(tmp_path):
    model, ids = _model("qwen2")
    pruned = H.prune(model, ids, ratio=0.5)
    assert H.save(pruned, tmp_path / "q") == "hf"
    back = H.load(tmp_path / "q")
    assert type(back) is type(model)
    torch.testing.assert_close(_logits(back, ids), _logits(pruned, ids), rtol=1e-5, atol=1e-6)


def test_errors_name_the_argument():
    model, ids = _model("gpt2")
    with pytest.raises(HFLayoutError, match="heads"):
        H.prune(model, ids, ratio={"heads": 0.5})
    with pytest.raises(FxPruneError, match=r"ratio\['mlp'\]"):
        H.prune(model, ids, ratio={"mlp": 1.0})
    with pytest.raises(FxPruneError, match="criterion='fisher'"):
        H.prune(model, ids, criterion="fisher")
    with pytest.raises(FxPruneError, match="gqa="):
        H.prune(model, ids, gqa="kv")
    with pytest.raises(HFLayoutError, match="model_type"):
        H.prune(torch.nn.Linear(2, 2), ids)


def test_missing_transformers_is_a_named_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(H.MissingDependencyError, match=r"fxprune\[hf\]"):
        H.require_transformers()


def test_inplace_consumes_the_model_and_gives_the_same_result():
    model, ids = _model("llama", tie_word_embeddings=True)
    want = H.prune(model, ids, ratio={"heads": 0.5, "mlp": 0.5, "hidden": 0.25})
    with pytest.raises(FxPruneError, match="verify=False"):
        H.prune(model, ids, ratio=0.5, inplace=True)
    got = H.prune(model, ids, ratio={"heads": 0.5, "mlp": 0.5, "hidden": 0.25},
                  inplace=True, verify=False)
    torch.testing.assert_close(_logits(got, ids), _logits(want, ids), rtol=0, atol=0)
    assert got.lm_head.weight is got.model.embed_tokens.weight
    assert model.model.layers[0].mlp.gate_proj.weight.numel() == 0  # freed
