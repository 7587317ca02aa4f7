"""Tiny Hugging Face models from configs (random weights, no downloads), for the
attention tests and the real-world bench.

Every builder returns ``(model, example_inputs, ignore)``: the model in eval
mode (seeded, so two calls give the same weights), a tuple of example inputs,
and the modules a pruning call should ignore (LM head / classifier). Text
models are wrapped so that the forward takes ``input_ids`` and returns one
tensor (logits or the last hidden state), which is what ``torch.export`` and
the oracle compare. Importable as ``hf_models:NAME`` with ``tests/`` on the path.
"""
from __future__ import annotations

import os
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from torch import nn

__all__ = ["BUILDERS", "TEXT", "VISION", "GQA", "build", "HFWrapper"]

HIDDEN, LAYERS, HEADS, VOCAB, SEQ = 64, 2, 4, 128, 8


class HFWrapper(nn.Module):
    """forward(input_ids | pixel_values) -> one tensor (``logits`` or ``last_hidden_state``)."""

    def __init__(self, model: nn.Module, field: str = "logits", input_name: str = "input_ids"):
        super().__init__()
        self.model = model
        self.field = field
        self.input_name = input_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kw = {self.input_name: x}
        if self.input_name == "input_ids" and _takes_use_cache(self.model):
            kw["use_cache"] = False
        return getattr(self.model(**kw, return_dict=True), self.field)


def _takes_use_cache(model: nn.Module) -> bool:
    return hasattr(model.config, "use_cache")


def _ids(seed: int = 0) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, VOCAB, (2, SEQ), generator=g),)


def _pixels(size: int = 32, seed: int = 0) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, size, size, generator=g),)


def _text(cls_name: str, config_name: str, field: str, head: str | None, **cfg):
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**cfg)
    config._attn_implementation = "sdpa"
    model = getattr(transformers, cls_name)(config).eval()
    wrapped = HFWrapper(model, field).eval()
    ignore = [wrapped.get_submodule(f"model.{head}")] if head else []
    return wrapped, _ids(), ignore


def _vision(cls_name: str, config_name: str, head: str, size: int = 32, sdpa: bool = True, **cfg):
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**cfg)
    if sdpa:
        config._attn_implementation = "sdpa"
    model = getattr(transformers, cls_name)(config).eval()
    wrapped = HFWrapper(model, "logits", "pixel_values").eval()
    return wrapped, _pixels(size), [wrapped.get_submodule(f"model.{head}")]


_BERT_LIKE = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, intermediate_size=128, max_position_embeddings=64)
_DECODER = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                num_attention_heads=8, num_key_value_heads=2, intermediate_size=128,
                max_position_embeddings=64, use_cache=False)


def bert():
    return _text("BertForSequenceClassification", "BertConfig", "logits", "classifier",
                 num_labels=3, **_BERT_LIKE)


def roberta():
    return _text("RobertaModel", "RobertaConfig", "last_hidden_state", None,
                 **{**_BERT_LIKE, "max_position_embeddings": 64 + 2})


def distilbert():
    return _text("DistilBertModel", "DistilBertConfig", "last_hidden_state", None,
                 vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=128,
                 max_position_embeddings=64)


def gpt2():
    return _text("GPT2LMHeadModel", "GPT2Config", "logits", "lm_head",
                 vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64,
                 use_cache=False)


def llama():
    return _text("LlamaForCausalLM", "LlamaConfig", "logits", "lm_head", **_DECODER)


def qwen2():
    return _text("Qwen2ForCausalLM", "Qwen2Config", "logits", "lm_head", **_DECODER)


def mistral():
    return _text("MistralForCausalLM", "MistralConfig", "logits", "lm_head", **_DECODER,
                 sliding_window=None)


def t5_encoder():
    return _text("T5EncoderModel", "T5Config", "last_hidden_state", None,
                 vocab_size=VOCAB, d_model=HIDDEN, d_kv=16, d_ff=128, num_layers=LAYERS,
                 num_heads=HEADS, relative_attention_num_buckets=8, use_cache=False)


def vit():
    return _vision("ViTForImageClassification", "ViTConfig", "classifier",
                   image_size=32, patch_size=8, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                   num_attention_heads=HEADS, intermediate_size=128, num_labels=3)


def swin():
    return _vision("SwinForImageClassification", "SwinConfig", "classifier",
                   image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                   window_size=4, num_labels=3)


def convnext():
    return _vision("ConvNextForImageClassification", "ConvNextConfig", "classifier", sdpa=False,
                   num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3)


TEXT = ("bert", "roberta", "distilbert", "gpt2", "llama", "qwen2", "mistral", "t5_encoder")
VISION = ("vit", "swin", "convnext")
GQA = ("llama", "qwen2", "mistral")
BUILDERS: dict[str, Callable] = {name: globals()[name] for name in TEXT + VISION}


def build(name: str):
    """``(model, example_inputs, ignore)`` of one tiny model by name."""
    return BUILDERS[name]()


def summary(name: str, ratio: float = 0.5) -> dict:
    """Groups, frozen groups, MACs before/after ``prune(ratio)`` (LM head / classifier
    ignored) and the dead-channel oracle's difference, for one tiny model."""
    import time

    import fxprune
    from fxprune.count import count

    model, x, ignore = build(name)
    start = time.perf_counter()
    cg = fxprune.analyze(model, x, frontend="export", warn=False)
    seconds = time.perf_counter() - start
    pruned = fxprune.prune(model, x, ratio=ratio, ignore=ignore, frontend="export")
    dead = fxprune.dead_channel_plan(model, x, 0.5, frontend="export")
    before, after = count(cg.gm, x), count(pruned.module, x)
    return {"model": name, "groups": len(cg.groups), "mixing": sum(g.mixing for g in cg.groups),
            "frozen": len(cg.frozen), "macs": before.macs, "macs_pruned": after.macs,
            "params": before.params, "params_pruned": after.params,
            "dead_channel_diff": fxprune.verify(model, dead, x), "analyze_s": seconds}


if __name__ == "__main__":  # PYTHONPATH=. python tests/hf_models.py [name ...]: the report table
    import sys

    print("| model | groups (mixing) | frozen | MMACs | pruned (ratio 0.5) | params | pruned | "
          "dead-channel diff | analyze s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sys.argv[1:] or BUILDERS:
        r = summary(n)
        print(f"| {n} | {r['groups']} ({r['mixing']}) | {r['frozen']} | {r['macs'] / 1e6:.3f} | "
              f"{r['macs_pruned'] / 1e6:.3f} ({1 - r['macs_pruned'] / r['macs']:.0%} off) | "
              f"{r['params'] / 1e3:.1f}k | {r['params_pruned'] / 1e3:.1f}k | "
              f"{r['dead_channel_diff']:.1e} | {r['analyze_s']:.1f} |", flush=True)
