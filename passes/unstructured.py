"""Unstructured magnitude pruning: weight masks as ``torch.nn.utils.parametrize``.

The baseline of *Rethinking the Value of Network Pruning* (Liu et al., 2019;
global |w| threshold over conv weights) and of Renda et al. 2020 (conv + linear
weights, iterative rounds of 20 % of the remaining weights with rewinding).

    plan = magnitude_masks(model, 0.5, scope="global", layers="conv")
    apply_masks(model, plan)            # in place; masks survive retraining
    ...train...
    plan2 = magnitude_masks(model, iterative_sparsity(0.2, 2))  # round 2
    fold(model)                         # plain weights again, for export

Unlike every other fxprune pass this one does not shrink the model: the
weights keep their shape and pruned entries are exactly zero.  A mask is
``True`` where the weight is kept.  Selection is count based (the k smallest
|w| under a stable sort, ties broken by position), so the requested sparsity is
reached exactly: ``k = floor(sparsity * n + 1/2)`` weights of the ``n`` in
scope (per layer with ``scope="layer"``).  Entries that an installed mask
already prunes stay pruned and count towards ``k``.
"""
from __future__ import annotations

import base64
import copy as _copy
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from fxprune.errors import FxPruneError, PlanMismatchError

__all__ = [
    "Mask",
    "MaskPlan",
    "SparsityRow",
    "apply_masks",
    "fold",
    "iterative_sparsity",
    "magnitude_masks",
    "sparsity_report",
    "sparsity_table",
]

_LAYERS = {
    "conv": (nn.modules.conv._ConvNd,),
    "conv+linear": (nn.modules.conv._ConvNd, nn.Linear),
}


class Mask(nn.Module):
    """Parametrization ``w -> w * mask``: pruned entries read as exact zeros.

    The gradient reaching the raw weight is zero on masked entries, and
    ``right_inverse`` zeroes them in the raw weight too, so SGD with momentum
    and weight decay keeps them at zero.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().to(torch.bool).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


@dataclass(frozen=True, eq=False)
class MaskPlan:
    """Per parameter qualified name, a boolean keep-mask; plus criterion and settings."""

    masks: Mapping[str, torch.Tensor]
    criterion: str = "magnitude"
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        masks = {k: v.detach().to("cpu", torch.bool).clone() for k, v in self.masks.items()}
        object.__setattr__(self, "masks", MappingProxyType(masks))
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    def sparsity(self) -> float:
        """Fraction of masked (pruned) entries over all masked parameters."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return (total - kept) / total if total else 0.0

    def to_json(self, indent: int | None = None) -> str:
        """Masks as shape + base64 of the bit-packed, row-major flattened mask."""
        masks = {
            name: {"shape": list(m.shape),
                   "bits": base64.b64encode(np.packbits(m.numpy().ravel()).tobytes()).decode()}
            for name, m in self.masks.items()
        }
        doc = {"format": "fxprune.MaskPlan", "version": 1, "criterion": self.criterion,
               "settings": dict(self.settings), "masks": masks}
        return json.dumps(doc, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> MaskPlan:
        doc = json.loads(text)
        if doc.get("format") != "fxprune.MaskPlan" or doc.get("version") != 1:
            raise FxPruneError("not an fxprune MaskPlan (version 1) JSON document")
        masks = {}
        for name, entry in doc["masks"].items():
            shape = tuple(entry["shape"])
            n = math.prod(shape)
            bits = np.frombuffer(base64.b64decode(entry["bits"]), dtype=np.uint8)
            flat = np.unpackbits(bits, count=n).astype(bool)
            masks[name] = torch.from_numpy(flat.reshape(shape))
        return cls(masks, doc["criterion"], doc["settings"])

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a crash never leaves a half-written plan behind."""
        path = os.fspath(path)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.to_json(indent=1))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> MaskPlan:
        with open(path) as f:
            return cls.from_json(f.read())


def iterative_sparsity(per_round: float = 0.2, round: int = 1) -> float:
    """Total sparsity after ``round`` rounds that each prune ``per_round`` of what remains."""
    if not 0.0 <= per_round < 1.0 or round < 0:
        raise ValueError(f"need 0 <= per_round < 1 and round >= 0, got {per_round}, {round}")
    return 1.0 - (1.0 - per_round) ** round


def _count(sparsity: float, n: int) -> int:
    # Half-up rounding, so 1-(0.8)**2 = 0.35999.. on 100 weights gives 36, not 35.
    return math.floor(sparsity * n + 0.5)


def _existing_mask(module: nn.Module, tensor_name: str) -> torch.Tensor | None:
    """AND of the Mask parametrizations already installed on ``module.<tensor_name>``."""
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    masks = [p.mask for p in module.parametrizations[tensor_name] if isinstance(p, Mask)]
    if not masks:
        return None
    out = masks[0].clone()
    for m in masks[1:]:
        out &= m
    return out


def _targets(model: nn.Module, layers: str, exclude: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """(weight qualified name, module) of every layer in scope, in module order."""
    if layers not in _LAYERS:
        raise ValueError(f"layers must be one of {sorted(_LAYERS)}, got {layers!r}")
    excl = set(exclude)
    out = []
    for mname, module in model.named_modules():
        if not isinstance(module, _LAYERS[layers]):
            continue
        pname = f"{mname}.weight" if mname else "weight"
        if mname in excl or pname in excl:
            continue
        out.append((pname, module))
    known = {n for n, _ in model.named_modules()}
    known |= {f"{n}.weight" if n else "weight"
              for n, m in model.named_modules() if hasattr(m, "weight")}
    unknown = excl - known
    if unknown:
        raise ValueError(f"exclude names no module or weight of the model: {sorted(unknown)}")
    return out


def _scores(module: nn.Module) -> torch.Tensor:
    """|w| flattened; already-masked entries score -1 so they are always taken first."""
    with torch.no_grad():
        s = module.weight.detach().abs().flatten().float().cpu()
        old = _existing_mask(module, "weight")
        if old is not None:
            s[~old.flatten().cpu()] = -1.0
    return s


def _smallest_k(scores: torch.Tensor, k: int, already: int, where: str) -> torch.Tensor:
    if k < already:
        raise ValueError(f"{where}: {already} weights are already masked, more than the "
                         f"{k} the requested sparsity allows; masks are never undone")
    keep = torch.ones_like(scores, dtype=torch.bool)
    order = torch.sort(scores, stable=True).indices  # ties: lower position first
    keep[order[:k]] = False
    return keep


def magnitude_masks(model: nn.Module, sparsity: float, *, scope: str = "global",
                    layers: str = "conv", exclude: Iterable[str] = ()) -> MaskPlan:
    """Mask the smallest-|w| weights so that exactly ``sparsity`` of those in scope are zero.

    ``scope="global"``: one ranking over all weights in scope; ``"layer"``: each layer
    reaches ``sparsity`` on its own.  ``layers``: ``"conv"`` or ``"conv+linear"``.
    ``exclude``: module or weight qualified names left dense (an unknown name is an error).
    Does not modify ``model``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    exclude = tuple(exclude)
    targets = _targets(model, layers, exclude)
    if not targets:
        raise ValueError(f"model has no {layers} weights to prune (after exclude={exclude})")
    scores = [_scores(m) for _, m in targets]
    if scope == "global":
        flat = torch.cat(scores)
        keep = _smallest_k(flat, _count(sparsity, flat.numel()), int((flat < 0).sum()), "model")
        parts = keep.split([s.numel() for s in scores])
    else:
        parts = [_smallest_k(s, _count(sparsity, s.numel()), int((s < 0).sum()), name)
                 for (name, _), s in zip(targets, scores)]
    masks = {name: p.view_as(m.weight) for (name, m), p in zip(targets, parts)}
    settings = {"sparsity": sparsity, "scope": scope, "layers": layers, "exclude": list(exclude)}
    return MaskPlan(masks, "magnitude", settings)


def _resolve(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mpath, _, tname = name.rpartition(".")
    try:
        module = model.get_submodule(mpath)
    except AttributeError as e:
        raise PlanMismatchError(f"mask for {name!r}: the model has no module {mpath!r}") from e
    if not hasattr(module, tname):
        raise PlanMismatchError(f"mask for {name!r}: module {mpath!r} has no {tname!r}")
    return module, tname


def apply_masks(model: nn.Module, plan: MaskPlan, *, copy: bool = False) -> nn.Module:
    """Install ``plan`` as :class:`Mask` parametrizations and zero the raw weights.

    Modifies ``model`` in place and returns it, unless ``copy=True`` (a deep copy is
    masked and returned).  A weight that already carries a Mask gets the AND of both,
    so pruned weights stay pruned.  Every mask is checked before any is installed.
    """
    resolved = []
    for name, mask in plan.masks.items():
        module, tname = _resolve(model, name)
        shape = tuple(getattr(module, tname).shape)
        if shape != tuple(mask.shape):
            raise PlanMismatchError(f"mask for {name!r} has shape {tuple(mask.shape)}, "
                                    f"the model's tensor has {shape}")
        resolved.append((name, mask))
    if copy:
        model = _copy.deepcopy(model)
    for name, mask in resolved:
        module, tname = _resolve(model, name)
        mask = mask.to(getattr(module, tname).device)
        old = _existing_mask(module, tname)
        if old is None:
            parametrize.register_parametrization(module, tname, Mask(mask))
            continue
        for p in module.parametrizations[tname]:
            if isinstance(p, Mask):
                p.mask.logical_and_(mask)
        if all(isinstance(p, Mask) for p in module.parametrizations[tname]):
            with torch.no_grad():
                module.parametrizations[tname].original.mul_(old & mask)
    return model


@dataclass(frozen=True)
class SparsityRow:
    """One line of :func:`sparsity_report`; the last row is named ``"total"``."""

    name: str
    numel: int
    zeros: int
    sparsity: float


def sparsity_report(model: nn.Module, layers: str = "conv+linear") -> list[SparsityRow]:
    """Exact zeros of every conv (and linear) weight as the forward pass sees it."""
    rows = []
    for name, module in _targets(model, layers, ()):
        w = module.weight.detach()
        zeros = int((w == 0).sum())
        rows.append(SparsityRow(name, w.numel(), zeros, zeros / w.numel()))
    n, z = sum(r.numel for r in rows), sum(r.zeros for r in rows)
    rows.append(SparsityRow("total", n, z, z / n if n else 0.0))
    return rows


def sparsity_table(rows: list[SparsityRow], title: str = "sparsity"):
    """A ``rich.table.Table`` of :func:`sparsity_report` rows (``rich.print`` it)."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("layer", "numel", "zeros", "sparsity"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        style = "bold" if r.name == "total" else None
        table.add_row(r.name, f"{r.numel:,}", f"{r.zeros:,}", f"{r.sparsity:.2%}", style=style)
    return table


def fold(model: nn.Module, *, copy: bool = False) -> nn.Module:
    """Replace every masked tensor by a plain parameter holding the masked values.

    In place unless ``copy=True``.  A tensor whose parametrization chain mixes a Mask
    with other parametrizations is an error: folding would silently bake those in too.
    """
    if copy:
        model = _copy.deepcopy(model)
        for module in model.modules():
            if parametrize.is_parametrized(module):
                # the copy shares torch's generated Parametrized* class with the original;
                # removing a parametrization deletes its property from that class, so give
                # the copy a class of its own first
                cls = module.__class__
                module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    for mname, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tname, plist in list(module.parametrizations.items()):
            kinds = [isinstance(p, Mask) for p in plist]
            if not any(kinds):
                continue
            if not all(kinds):
                raise FxPruneError(f"{mname}.{tname}: a Mask shares the parametrization chain "
                                   "with other parametrizations; remove those first")
            parametrize.remove_parametrizations(module, tname, leave_parametrized=True)
    return model
