"""The published ``l1-filter`` configurations (Li et al. 2017, Table 1), as the
Rethinking code (``cifar/l1-norm-pruning/{vgg,res56,res110}prune.py``) writes them.

    fxprune.prune(model, x, criterion="l1-filter", preset="resnet56-a")

Conv layers are numbered 1.. in forward order, the stem conv being 1; in an
option-A CIFAR ResNet the first conv of block ``b`` (0-based, over all stages)
is layer ``2 + 2b``, so the even layers are the ones pruned. A ResNet preset
prunes the even layers of stage ``s`` by ``stage_ratios[s]`` except those in
``skip``; the VGG preset gives the kept widths of single layers. Kept filters
are ``int(C * (1 - p))``, as in the Rethinking code.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fxprune.errors import FxPruneError

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """One pruned configuration of one model (``fxprune.models.get_model(model)``)."""

    name: str
    model: str
    num_convs: int
    stage_ratios: tuple[float, ...] = ()
    skip: tuple[int, ...] = ()
    widths: tuple[tuple[int, int], ...] = ()  # (conv layer, kept filters)
    published: tuple[float, float] = (0.0, 0.0)  # (params, FLOPs) reduction in %, Table 1

    def layer_ratios(self, convs: Sequence[tuple[str, int]]) -> dict[int, float]:
        """{conv layer number: fraction of filters to prune} for a model with ``convs``
        ((name, out_channels) in forward order)."""
        if len(convs) != self.num_convs:
            raise FxPruneError(
                f"preset {self.name!r} is for get_model({self.model!r}) with {self.num_convs} "
                f"convs; this model has {len(convs)}. fix: use criterion='l1-filter' with "
                "layer_ratios= and skip= for another architecture")
        if self.widths:
            return {k: 1.0 - w / convs[k - 1][1] for k, w in self.widths}
        per_stage = (self.num_convs - 1) // (2 * len(self.stage_ratios))  # blocks per stage
        out = {}
        for k in range(2, self.num_convs + 1, 2):  # the first conv of every block
            r = self.stage_ratios[(k - 2) // (2 * per_stage)]
            if k not in self.skip and r > 0:
                out[k] = r
        return out


_VGG16_A = tuple((k, w) for k, w in [(1, 32)] + [(k, 256) for k in range(8, 14)])

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("vgg16-a", "vgg16", 13, widths=_VGG16_A, published=(64.0, 34.2)),
    Preset("resnet56-a", "resnet56", 55, (0.1, 0.1, 0.1), (16, 20, 38, 54),
           published=(9.3, 10.4)),
    Preset("resnet56-b", "resnet56", 55, (0.6, 0.3, 0.1), (16, 18, 20, 34, 38, 54),
           published=(13.8, 27.6)),
    Preset("resnet110-a", "resnet110", 109, (0.5, 0.0, 0.0), (36,), published=(2.3, 15.9)),
    Preset("resnet110-b", "resnet110", 109, (0.5, 0.4, 0.3), (36, 38, 74),
           published=(32.4, 38.7)),
)}


def get_preset(name: str) -> Preset:
    key = name.lower().replace("_", "-")
    if key not in PRESETS:
        raise FxPruneError(f"unknown l1-filter preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key]
