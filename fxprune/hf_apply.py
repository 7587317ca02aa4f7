"""Apply an ``HFPlan``: index-select the model's own parameters and rebuild the model.

Uniform plans build a fresh model *of the same class* from the updated config
on the meta device and load the selected tensors with ``load_state_dict(strict=True,
assign=True)``: the model's own constructor decides every shape, so a loaded
state dict proves that the new config describes the pruned weights (and
therefore that ``save_pretrained`` / ``from_pretrained`` will round-trip).
Per-layer (non-uniform) plans cannot be described by a config; they swap the
parameters in place on a meta-built copy and fix each layer's attributes.
The dead-unit oracle is the original with every removed unit's entries zeroed.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import FxPruneError
from .hf_layout import FAMILIES, HFLayoutError, Slot, UnitSet

__all__ = ["HFPlan", "keep_masks", "build_pruned", "dead_unit_oracle", "swap_in", "finish"]


@dataclass(frozen=True)
class HFPlan:
    """Removed units per unit set, ``{(kind, layer): (unit, ...)}``, and how they were chosen."""

    family: str
    gqa: str
    sets: tuple[UnitSet, ...]
    removed: dict[tuple, tuple[int, ...]] = field(default_factory=dict)
    criterion: str = "l2"

    def widths(self, kind: str) -> list[int]:
        return [s.size - len(self.removed.get(s.key, ())) for s in self.sets if s.kind == kind]

    @property
    def uniform(self) -> bool:
        return all(len(set(self.widths(k))) <= 1 for k in {s.kind for s in self.sets})

    def to_json(self) -> dict:
        return {"family": self.family, "gqa": self.gqa, "criterion": self.criterion,
                "removed": [[k[0], k[1], list(v)] for k, v in self.removed.items()]}


def _entries(slot: Slot, units, size: int) -> torch.Tensor:
    u = torch.as_tensor(sorted(units), dtype=torch.long)
    return (slot.offset + u[:, None] * slot.block + torch.arange(slot.block)).reshape(-1)


def keep_masks(plan: HFPlan,
               params: dict[str, torch.Tensor]) -> dict[tuple[str, int], torch.Tensor]:
    """``{(param, dim): bool mask}`` of the entries that survive, for every touched (param, dim)."""
    masks: dict[tuple[str, int], torch.Tensor] = {}
    for s in plan.sets:
        gone = plan.removed.get(s.key, ())
        if not gone:
            continue
        for sl in s.slots:
            key = (sl.param, sl.dim)
            if key not in masks:
                masks[key] = torch.ones(params[sl.param].shape[sl.dim], dtype=torch.bool)
            masks[key][_entries(sl, gone, s.size)] = False
    return masks


def _selected(model: nn.Module, plan: HFPlan, consume: bool = False) -> dict[str, torch.Tensor]:
    """The pruned state dict (every key of ``model.state_dict()``).

    ``consume``: each pruned tensor of ``model`` is freed as soon as its selection exists and
    untouched tensors are shared, not copied, so the peak is the model plus one tensor;
    ``model`` is unusable afterwards.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    by_param = defaultdict(list)
    for (name, dim), mask in keep_masks(plan, params).items():
        by_param[name].append((dim, mask.nonzero().squeeze(1)))
    del params
    names = list(model.state_dict().keys())
    out, done = {}, {}
    for name in names:
        mod_name, _, leaf = name.rpartition(".")
        mod = model.get_submodule(mod_name)
        t = mod._parameters.get(leaf) if leaf in mod._parameters else mod._buffers[leaf]
        if id(t) not in done:  # tied tensors (embeddings / LM head) are selected once
            sel = t.detach()
            for dim, idx in by_param.get(name, ()):
                sel = sel.index_select(dim, idx.to(sel.device))
            done[id(t)] = sel if (consume or name in by_param) else sel.clone()
        out[name] = done[id(t)]
        if consume and name in by_param and leaf in mod._parameters:
            mod._parameters[leaf] = nn.Parameter(t.new_empty(0), requires_grad=False)
        del t
    return out


def _fill_meta_from(new: nn.Module, old: nn.Module) -> None:
    """Buffers and tensor attributes the state dict does not carry (rotary ``inv_freq`` …)."""
    old_mods = dict(old.named_modules())
    for name, mod in new.named_modules():
        src = old_mods.get(name)
        for attr, val in list(vars(mod).items()) + list(mod._buffers.items()):
            if isinstance(val, torch.Tensor) and val.is_meta and src is not None:
                ref = getattr(src, attr, None)
                if not isinstance(ref, torch.Tensor) or ref.shape != val.shape:
                    raise FxPruneError(f"{name}.{attr}: no tensor of shape {tuple(val.shape)} in "
                                       "the original to copy into the pruned model")
                if attr in mod._buffers:
                    mod._buffers[attr] = ref.clone()
                else:
                    setattr(mod, attr, ref.clone())


def _meta_shell(cls: type, cfg) -> nn.Module:
    """``cls(cfg)`` on the meta device without running its weight initialisers: every
    parameter is replaced by a loaded tensor, and on 2 CPU cores the (meta) init of a
    300M-parameter config costs 0.1-0.6 s of Python dispatch."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers < 5
        from contextlib import nullcontext as no_init_weights
    with torch.device("meta"), no_init_weights():
        return cls(cfg)


def finish(new: nn.Module, model: nn.Module) -> nn.Module:
    _fill_meta_from(new, model)
    if getattr(new.config, "tie_word_embeddings", False) and hasattr(new, "tie_weights"):
        new.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    return new.train(model.training)


def new_config(model: nn.Module, plan: HFPlan):
    fam = FAMILIES[plan.family]
    widths = {k: plan.widths(k)[0] for k in {s.kind for s in plan.sets}
              if plan.widths(k) and any(plan.removed.get(s.key) for s in plan.sets if s.kind == k)}
    cfg = copy.deepcopy(model.config)
    for key, value in fam.new_config_values(model.config, widths, plan.gqa).items():
        setattr(cfg, key, value)
    return cfg


def build_pruned(model: nn.Module, plan: HFPlan, consume: bool = False) -> nn.Module:
    """A new model of ``type(model)`` holding the pruned weights; ``model`` is untouched
    unless ``consume`` (then its pruned tensors are freed on the way: see ``_selected``)."""
    sd = _selected(model, plan, consume)
    if not plan.uniform:
        return _build_per_layer(model, plan, sd)
    new = _meta_shell(type(model), new_config(model, plan))
    try:
        new.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise HFLayoutError(f"{type(model).__name__}: the pruned weights do not fit the updated "
                            f"config ({e}); the {plan.family} layout table is wrong for it") from e
    return finish(new, model)


def _build_per_layer(model: nn.Module, plan: HFPlan, sd: dict[str, torch.Tensor]) -> nn.Module:
    if plan.family != "llama":
        raise HFLayoutError(f"per-layer widths are supported for llama-like models only, not "
                            f"{plan.family}; use uniform=True")
    shell = _meta_shell(type(model), copy.deepcopy(model.config))
    return finish(swap_in(shell, sd), model)


def swap_in(shell: nn.Module, sd: dict[str, torch.Tensor]) -> nn.Module:
    """Put ``sd``'s tensors (any widths) into ``shell`` and make each layer agree with them."""
    for name, t in sd.items():
        mod_name, _, leaf = name.rpartition(".")
        mod = shell.get_submodule(mod_name)
        if leaf in mod._parameters:
            mod._parameters[leaf] = nn.Parameter(t, requires_grad=t.is_floating_point())
        else:
            mod._buffers[leaf] = t
    for mod in shell.modules():
        if isinstance(mod, nn.Linear) and not mod.weight.is_meta:
            mod.out_features, mod.in_features = mod.weight.shape
        if hasattr(mod, "num_key_value_groups") and hasattr(mod, "k_proj"):
            mod.num_key_value_groups = mod.q_proj.out_features // mod.k_proj.out_features
    return shell


def dead_unit_oracle(model: nn.Module, plan: HFPlan) -> nn.Module:
    """A copy of ``model`` with every entry of every removed unit set to zero."""
    oracle = copy.deepcopy(model)
    params = dict(oracle.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for (name, dim), mask in keep_masks(plan, params).items():
            params[name].index_fill_(dim, (~mask).nonzero().squeeze(1), 0.0)
    return oracle
