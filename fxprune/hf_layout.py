"""Where the prunable units of a Hugging Face model live, family by family.

A *unit set* is one kind of unit in one layer (the attention heads of layer 3,
the MLP channels of layer 3, or the model-wide hidden channels). Each unit owns
a block of entries along one dimension of several parameters (its *slots*):
unit ``i`` of a slot with ``block=b`` and ``offset=o`` owns entries
``[o + i*b, o + (i+1)*b)``. A *probe* is a module whose input (or output)
carries the units on its last dimension, which is where the activation
criterion measures them.

GQA: a key/value group owns one KV head and the ``n_rep`` query heads that
read it (query head ``h`` uses KV head ``h // n_rep``, as in HF's
``repeat_kv``), so in ``gqa="groups"`` mode a unit is a whole group (its
query rows are contiguous). In ``gqa="queries"`` mode a unit is one query
head and the set has ``groups = num_key_value_heads``: the same number of
query heads is removed from every group, so ``num_key_value_groups`` stays
an integer.

The tables are written per family (llama-like decoders, GPT-2, BERT) rather
than guessed from parameter shapes: a shape match cannot tell a query
projection from a hidden-to-hidden one when ``heads*head_dim == hidden``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import FxPruneError

__all__ = ["Slot", "UnitSet", "Family", "HFLayoutError", "family_of", "FAMILIES"]


class HFLayoutError(FxPruneError):
    """An HF model whose layout fxprune.hf does not know, or a width its config cannot hold."""


@dataclass(frozen=True)
class Slot:
    """Unit ``i`` owns entries ``offset + i*block ..< offset + (i+1)*block`` of ``param.dim``."""

    param: str
    dim: int
    block: int = 1
    offset: int = 0


@dataclass(frozen=True)
class UnitSet:
    """One kind of unit (``heads`` / ``mlp`` / ``hidden``) in one layer (``None``: model-wide)."""

    kind: str
    layer: int | None
    size: int
    slots: tuple[Slot, ...]
    probes: tuple[tuple[str, bool], ...]  # (module name, measure its output instead of its input)
    probe_block: int = 1
    groups: int = 1  # units are [groups, size // groups]; equal removal per group

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.kind, self.layer)


def _layers_prefix(model: nn.Module, suffix: str) -> str:
    """Qualified name of the ModuleList of blocks (``model.layers``, ``transformer.h`` …)."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and (name == suffix or name.endswith("." + suffix)):
            return name
    raise HFLayoutError(f"{type(model).__name__}: no ModuleList named *{suffix} (the layer stack); "
                        f"fxprune.hf supports {', '.join(FAMILIES)}")


def _dot(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class Family:
    """Base: the unit sets of one model family and the config keys that hold their widths."""

    name = ""
    model_types: tuple[str, ...] = ()
    layers_suffix = ""
    width_keys: dict[str, str] = {}  # unit kind -> config attribute that holds its width
    hf_kinds: tuple[str, ...] = ()   # kinds a plain HF config can express after pruning

    def unit_sets(self, model: nn.Module, gqa: str, kinds: tuple[str, ...]) -> list[UnitSet]:
        prefix = _layers_prefix(model, self.layers_suffix)
        n = len(model.get_submodule(prefix))
        sets = []
        for kind in kinds:
            if kind == "hidden":
                sets.append(self.hidden(model, prefix, n))
            else:
                build = getattr(self, kind)
                sets += [build(model, f"{prefix}.{i}", i, gqa) for i in range(n)]
        return sets


class LlamaLike(Family):
    """Llama, Qwen2, Mistral (and their kin): q/k/v/o_proj, gate/up/down_proj, RMSNorms."""

    name = "llama"
    model_types = ("llama", "qwen2", "mistral", "qwen3", "granite")
    layers_suffix = "layers"
    hf_kinds = ("heads", "mlp", "hidden")

    def heads(self, model: nn.Module, p: str, i: int, gqa: str) -> UnitSet:
        cfg = model.config
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        rep = nq // nkv
        a = f"{p}.self_attn"
        bias = model.get_submodule(f"{a}.q_proj").bias is not None  # Qwen2: q/k/v only
        if gqa == "groups" or rep == 1:
            q, kv = rep * hd, hd
            slots = [Slot(f"{a}.q_proj.weight", 0, q), Slot(f"{a}.k_proj.weight", 0, kv),
                     Slot(f"{a}.v_proj.weight", 0, kv), Slot(f"{a}.o_proj.weight", 1, q)]
            if bias:
                slots += [Slot(f"{a}.q_proj.bias", 0, q), Slot(f"{a}.k_proj.bias", 0, kv),
                          Slot(f"{a}.v_proj.bias", 0, kv)]
            return UnitSet("heads", i, nkv, tuple(slots), ((f"{a}.o_proj", False),), q)
        slots = [Slot(f"{a}.q_proj.weight", 0, hd), Slot(f"{a}.o_proj.weight", 1, hd)]
        if bias:
            slots.append(Slot(f"{a}.q_proj.bias", 0, hd))
        return UnitSet("heads", i, nq, tuple(slots), ((f"{a}.o_proj", False),), hd, groups=nkv)

    def mlp(self, model: nn.Module, p: str, i: int, gqa: str) -> UnitSet:
        cfg, m = model.config, f"{p}.mlp"
        slots = [Slot(f"{m}.gate_proj.weight", 0), Slot(f"{m}.up_proj.weight", 0),
                 Slot(f"{m}.down_proj.weight", 1)]
        if model.get_submodule(f"{m}.gate_proj").bias is not None:
            slots += [Slot(f"{m}.gate_proj.bias", 0), Slot(f"{m}.up_proj.bias", 0)]
        return UnitSet("mlp", i, cfg.intermediate_size, tuple(slots), ((f"{m}.down_proj", False),))

    def hidden(self, model: nn.Module, prefix: str, n: int) -> UnitSet:
        cfg = model.config
        base = prefix.rsplit(".", 1)[0] if "." in prefix else ""
        slots = [Slot(_dot(base, "embed_tokens.weight"), 1), Slot(_dot(base, "norm.weight"), 0)]
        probes = []
        for i in range(n):
            p = f"{prefix}.{i}"
            for norm in ("input_layernorm", "post_attention_layernorm"):
                slots.append(Slot(f"{p}.{norm}.weight", 0))
                probes.append((f"{p}.{norm}", True))
            for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                        "mlp.gate_proj", "mlp.up_proj"):
                slots.append(Slot(f"{p}.{lin}.weight", 1))
            for lin in ("self_attn.o_proj", "mlp.down_proj"):
                slots.append(Slot(f"{p}.{lin}.weight", 0))
                if model.get_submodule(f"{p}.{lin}").bias is not None:
                    slots.append(Slot(f"{p}.{lin}.bias", 0))
        names = dict(model.named_parameters(remove_duplicate=False))
        if "lm_head.weight" in names:
            slots.append(Slot("lm_head.weight", 1))
        return UnitSet("hidden", None, cfg.hidden_size, tuple(slots), tuple(probes))

    def new_config_values(self, cfg, widths: dict[str, int], gqa: str) -> dict[str, int]:
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        out = {"head_dim": hd}  # kept explicitly: hidden/heads would no longer give it
        if "heads" in widths:
            rep = cfg.num_attention_heads // cfg.num_key_value_heads
            if gqa == "groups" or rep == 1:
                out.update(num_key_value_heads=widths["heads"],
                           num_attention_heads=widths["heads"] * rep)
            else:
                out["num_attention_heads"] = widths["heads"]
        if "mlp" in widths:
            out["intermediate_size"] = widths["mlp"]
        if "hidden" in widths:
            out["hidden_size"] = widths["hidden"]
        return out


class GPT2(Family):
    """GPT-2: fused Conv1D c_attn (weights stored [in, out]), c_fc / c_proj MLP."""

    name = "gpt2"
    model_types = ("gpt2",)
    layers_suffix = "h"
    hf_kinds = ("mlp",)  # GPT2Attention derives head_dim = n_embd // n_head

    def mlp(self, model: nn.Module, p: str, i: int, gqa: str) -> UnitSet:
        cfg, m = model.config, f"{p}.mlp"
        width = cfg.n_inner or 4 * cfg.n_embd
        slots = (Slot(f"{m}.c_fc.weight", 1), Slot(f"{m}.c_fc.bias", 0),
                 Slot(f"{m}.c_proj.weight", 0))
        return UnitSet("mlp", i, width, slots, ((f"{m}.c_proj", False),))

    def new_config_values(self, cfg, widths: dict[str, int], gqa: str) -> dict[str, int]:
        return {"n_inner": widths["mlp"]} if "mlp" in widths else {}


class Bert(Family):
    """BERT-style encoders: intermediate.dense / output.dense MLP."""

    name = "bert"
    model_types = ("bert", "roberta")
    layers_suffix = "encoder.layer"
    hf_kinds = ("mlp",)  # BertSelfAttention derives head size = hidden_size // num_heads

    def mlp(self, model: nn.Module, p: str, i: int, gqa: str) -> UnitSet:
        cfg = model.config
        slots = (Slot(f"{p}.intermediate.dense.weight", 0), Slot(f"{p}.intermediate.dense.bias", 0),
                 Slot(f"{p}.output.dense.weight", 1))
        return UnitSet("mlp", i, cfg.intermediate_size, slots, ((f"{p}.output.dense", False),))

    def new_config_values(self, cfg, widths: dict[str, int], gqa: str) -> dict[str, int]:
        return {"intermediate_size": widths["mlp"]} if "mlp" in widths else {}


FAMILIES: dict[str, Family] = {f.name: f for f in (LlamaLike(), GPT2(), Bert())}


def family_of(model: nn.Module) -> Family:
    """The family of a PreTrainedModel, from ``config.model_type``."""
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    for fam in FAMILIES.values():
        if mtype in fam.model_types:
            return fam
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise HFLayoutError(f"{type(model).__name__} (model_type={mtype!r}) has no fxprune.hf layout; "
                        f"known model types: {', '.join(known)}. Prune it as a graph with "
                        "fxprune.prune(model, x, frontend='export') instead")
