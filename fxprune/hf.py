"""Prune Hugging Face ``PreTrainedModel``s into models Hugging Face can load.

    import fxprune.hf
    small = fxprune.hf.prune(model, ids, ratio=0.5, criterion="activation", calibration=batches)
    small.save_pretrained("out/")          # config.json + model.safetensors
    AutoModelForCausalLM.from_pretrained("out/")   # plain transformers, no fxprune

Why selection works on the HF module structure and not on the traced graph:
the result has to be the model's *own class* built from its *own config*, so
every layer must shrink to widths the config can state (``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ``intermediate_size``, ``hidden_size``).
The per-family tables in ``hf_layout`` name the parameters each head / KV group
/ MLP channel / hidden channel owns; the new model is built from the new
config and loaded strictly (so a wrong table cannot pass silently), and the
result is checked against the dead-unit oracle (``verify=True``), which is what
proves the coupling is right. ``uniform=True`` removes the same number of units
in every layer (each layer picks its own lowest-scoring units), which is what
makes the result a plain HF checkpoint.

``transformers`` is imported lazily (extra ``hf``): without it this module
imports, and using it raises ``MissingDependencyError``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import FxPruneError, VerificationError
from .hf_apply import HFPlan, build_pruned, dead_unit_oracle, finish, swap_in
from .hf_layout import FAMILIES, HFLayoutError, UnitSet, family_of
from .hf_scores import CRITERIA, as_batch, score_units

__all__ = ["prune", "plan", "apply", "check", "save", "load", "is_uniform", "dead_unit_oracle",
           "HFPlan", "MissingDependencyError", "NonUniformCheckpointError",
           "require_transformers"]

KINDS = ("heads", "mlp", "hidden")
FORMAT_FILE = "fxprune_hf.json"


class MissingDependencyError(FxPruneError):
    """An optional dependency (``transformers`` for fxprune.hf) is not installed."""


class NonUniformCheckpointError(FxPruneError):
    """A model with per-layer widths was asked to be written as a plain HF checkpoint."""


def require_transformers():
    try:
        import transformers
    except ImportError as e:
        raise MissingDependencyError(
            "fxprune.hf needs transformers: pip install 'fxprune[hf]'") from e
    return transformers


def _ratios(ratio: float | dict[str, float], fam, prune_hidden: bool) -> dict[str, float]:
    if isinstance(ratio, dict):
        unknown = set(ratio) - set(KINDS)
        if unknown:
            raise FxPruneError(f"ratio keys {sorted(unknown)}: expected some of {KINDS}")
        out = dict(ratio)
    else:  # one number: every kind this family's config can express (hidden only on request)
        out = {k: float(ratio) for k in fam.hf_kinds if k != "hidden" or prune_hidden}
    for k, r in out.items():
        if not 0.0 <= r < 1.0:
            raise FxPruneError(f"ratio[{k!r}]={r!r}: expected a value in [0, 1)")
        if r > 0 and k not in fam.hf_kinds:
            raise HFLayoutError(f"ratio[{k!r}]={r}: {fam.name} configs cannot express pruned "
                                f"{k} (its attention derives head_dim from hidden_size); "
                                f"fxprune.hf prunes {', '.join(fam.hf_kinds)} for {fam.name}")
    return {k: r for k, r in out.items() if r > 0}


def _remove_uniform(s: UnitSet, score: torch.Tensor, ratio: float) -> tuple[int, ...]:
    per = s.size // s.groups
    n = min(int(ratio * per), per - 1)
    lowest = score.reshape(s.groups, per).argsort(dim=1)[:, :n]
    gone = lowest + torch.arange(s.groups).unsqueeze(1) * per
    return tuple(sorted(gone.flatten().tolist()))


def _remove_global(sets: list[UnitSet], scores: dict, ratio: float) -> dict[tuple, tuple[int, ...]]:
    """Per-layer widths: rank every unit of one kind together (scores / layer mean)."""
    if any(s.groups > 1 for s in sets):
        raise FxPruneError("uniform=False with gqa='queries' is not supported: use gqa='groups'")
    pool = [(float(v), s.key, i) for s in sets
            for i, v in enumerate(scores[s.key] / scores[s.key].mean().clamp_min(1e-12))]
    budget = sum(int(ratio * s.size) for s in sets)
    left = {s.key: s.size for s in sets}
    gone: dict[tuple, list[int]] = {s.key: [] for s in sets}
    for _, key, i in sorted(pool):
        if budget == 0:
            break
        if left[key] > 1:
            gone[key].append(i)
            left[key] -= 1
            budget -= 1
    return {k: tuple(sorted(v)) for k, v in gone.items()}


def plan(model: nn.Module, example_inputs: Any = None, *, ratio: float | dict[str, float] = 0.3,
         criterion: str = "l2", uniform: bool = True, prune_hidden: bool = False,
         gqa: str = "groups", calibration: Iterable[Any] | None = None) -> HFPlan:
    """Which units to remove; ``ratio``: one fraction, or a fraction per "heads"/"mlp"/"hidden"."""
    require_transformers()
    if gqa not in ("groups", "queries"):
        raise FxPruneError(f"gqa={gqa!r}: expected 'groups' (remove whole KV groups) or "
                           "'queries' (the same number of query heads from every group)")
    if criterion not in CRITERIA:
        raise FxPruneError(f"criterion={criterion!r}: fxprune.hf knows {', '.join(CRITERIA)}")
    fam = family_of(model)
    ratios = _ratios(ratio, fam, prune_hidden)
    sets = fam.unit_sets(model, gqa, tuple(k for k in KINDS if k in ratios))
    batches = calibration if calibration is not None else (
        [example_inputs] if example_inputs is not None else None)
    scores = score_units(model, sets, criterion, batches)
    removed: dict[tuple, tuple[int, ...]] = {}
    for kind, r in ratios.items():
        of_kind = [s for s in sets if s.kind == kind]
        if uniform or kind == "hidden":
            removed.update({s.key: _remove_uniform(s, scores[s.key], r) for s in of_kind})
        else:
            removed.update(_remove_global(of_kind, scores, r))
    return HFPlan(fam.name, gqa, tuple(sets), removed, criterion)


def _logits(model: nn.Module, x: Any) -> torch.Tensor:
    out = model(**as_batch(x))
    return out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))


@torch.no_grad()
def check(model: nn.Module, pruned: nn.Module, p: HFPlan, example_inputs: Any,
          rtol: float | None = None) -> float:
    """Max relative difference between ``pruned`` and the dead-unit oracle of ``model``
    (default tolerance 1e-4 in float32/64, 2e-2 in half precision: smaller reductions
    round differently)."""
    if rtol is None:
        half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
        rtol = 2e-2 if half else 1e-4
    want = _logits(dead_unit_oracle(model, p).eval(), example_inputs).float()
    got = _logits(pruned.eval(), example_inputs).float()
    diff = float((want - got).abs().max() / want.abs().max().clamp_min(1e-12))
    if diff > rtol:
        raise VerificationError(f"{type(model).__name__}: pruned logits differ from the dead-unit "
                                f"oracle by {diff:.2e} (relative, tolerance {rtol:g})")
    return diff


def apply(model: nn.Module, p: HFPlan, *, inplace: bool = False) -> nn.Module:
    """The pruned model (same class, updated config); ``model`` is not modified unless
    ``inplace``, which frees its pruned tensors on the way (peak memory: the model plus one
    tensor instead of both models) and leaves it unusable."""
    require_transformers()
    if family_of(model).name != p.family:
        raise FxPruneError(f"a {p.family} plan cannot be applied to {type(model).__name__}")
    return build_pruned(model, p, consume=inplace)


def prune(model: nn.Module, example_inputs: Any = None, *, ratio: float | dict[str, float] = 0.3,
          criterion: str = "l2", uniform: bool = True, prune_hidden: bool = False,
          gqa: str = "groups", calibration: Iterable[Any] | None = None,
          verify: bool = True, inplace: bool = False) -> nn.Module:
    """Plan + apply; with ``verify`` (and no hidden pruning, which RMS/LayerNorm makes inexact)
    the result is checked against the dead-unit oracle on ``example_inputs``. ``inplace``
    consumes ``model`` to save memory (see ``apply``) and so needs ``verify=False``."""
    if inplace and verify:
        raise FxPruneError("inplace=True consumes the model the dead-unit oracle needs: "
                           "pass verify=False with it (or check a smaller copy first)")
    p = plan(model, example_inputs, ratio=ratio, criterion=criterion, uniform=uniform,
             prune_hidden=prune_hidden, gqa=gqa, calibration=calibration)
    was_training = model.training
    pruned = apply(model, p, inplace=inplace)
    hidden = any(p.removed.get(s.key) for s in p.sets if s.kind == "hidden")
    if verify and example_inputs is not None and not hidden:
        model.eval()
        try:
            check(model, pruned, p, example_inputs)
        finally:
            model.train(was_training)
        pruned.train(was_training)
    return pruned


# ------------------------------------------------------------------ save / load
def _layer_widths(model: nn.Module) -> list[dict[str, int]]:
    """Widths read from the modules themselves (not the config): what the weights really are."""
    rows = []
    for name, mod in model.named_modules():
        if hasattr(mod, "q_proj") and hasattr(mod, "k_proj") and hasattr(mod, "o_proj"):
            rows.append({"layer": name, "q": mod.q_proj.out_features,
                         "kv": mod.k_proj.out_features})
        if hasattr(mod, "down_proj") and hasattr(mod, "gate_proj"):
            rows.append({"layer": name, "mlp": mod.down_proj.in_features})
    return rows


def is_uniform(model: nn.Module) -> bool:
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    for row in _layer_widths(model):
        if "q" in row and (row["q"] != cfg.num_attention_heads * hd
                           or row["kv"] != cfg.num_key_value_heads * hd):
            return False
        if "mlp" in row and row["mlp"] != cfg.intermediate_size:
            return False
    return True


def save(model: nn.Module, path: str | os.PathLike, *, hf: bool | None = None) -> str:
    """``save_pretrained`` when the config describes every layer, else fxprune's own format.

    Returns ``"hf"`` or ``"fxprune"``. ``hf=True`` insists on a plain HF checkpoint and raises
    ``NonUniformCheckpointError`` for per-layer widths.
    """
    from . import io

    uniform = is_uniform(model)
    if hf and not uniform:
        raise NonUniformCheckpointError(_why_not_hf(model))
    if uniform and hf is not False:
        model.save_pretrained(path)
        return "hf"
    import warnings

    warnings.warn(_why_not_hf(model) + f"; writing fxprune's format to {path} (fxprune.hf.load)",
                  stacklevel=2)
    from safetensors.torch import save_file

    with io.atomic_dir(path) as tmp:
        model.config.to_json_file(str(Path(tmp) / "config.json"))
        meta = {"class": type(model).__name__, "widths": _layer_widths(model),
                "why": _why_not_hf(model)}
        (Path(tmp) / FORMAT_FILE).write_text(json.dumps(meta, indent=1))
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            sd.pop("lm_head.weight", None)
        save_file(sd, str(Path(tmp) / "model.safetensors"))
    return "fxprune"


def _why_not_hf(model: nn.Module) -> str:
    return (f"{type(model).__name__} has per-layer widths (uniform=False) and a Hugging Face "
            "config holds one num_attention_heads / num_key_value_heads / intermediate_size "
            "for all layers, so it cannot be a plain HF checkpoint")


def load(path: str | os.PathLike) -> nn.Module:
    """Load either kind of save: a plain HF checkpoint or fxprune's per-layer format."""
    transformers = require_transformers()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FxPruneError(f"{path}: no config.json; expected a directory written by "
                           "fxprune.hf.save or save_pretrained")
    if not (path / FORMAT_FILE).is_file():
        return _hf_class(transformers, path).from_pretrained(path, local_files_only=True).eval()
    from safetensors.torch import load_file

    meta = json.loads((path / FORMAT_FILE).read_text())
    cls = getattr(transformers, meta["class"])
    cfg = transformers.AutoConfig.from_pretrained(path)
    sd = load_file(str(path / "model.safetensors"))
    with torch.device("meta"):
        shell = cls(cfg)
    # the buffers a state dict does not carry (rotary inv_freq) come from a full-size build
    return finish(swap_in(shell, sd), cls(cfg).eval()).eval()


def _hf_class(transformers, path: Path):
    cfg = json.loads((path / "config.json").read_text())
    arch = (cfg.get("architectures") or [None])[0]
    if arch and hasattr(transformers, arch):
        return getattr(transformers, arch)
    return transformers.AutoModel
