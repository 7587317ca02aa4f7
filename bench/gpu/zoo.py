"""The models of the latency stage and their pruned variants.

Each model is built with ``weights=None`` after ``torch.manual_seed(seed)``, so the same
call in another process (the ``torch.compile`` worker) gives the same weights and, L1
selection being deterministic, the same pruned architectures. Pruning runs on the CPU
once per variant (``fxprune.prune(criterion="l1")``, as ``bench/speedup.py`` does); the
timing code moves copies to the device. The dry run swaps in small stand-ins (32x32
inputs, a two-layer ViT) so the whole pipeline runs on a CPU in seconds.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
import torchvision
from torch import nn

import fxprune

__all__ = ["FULL_MODELS", "DRY_MODELS", "RESNETS", "Variant", "build_model", "input_for",
           "variant_specs", "prune_variants"]

#: (name, input side) of the full run: the models of bench/speedup.py at 224x224.
FULL_MODELS = [("resnet18", 224), ("resnet50", 224), ("mobilenet_v2", 224),
               ("efficientnet_b0", 224), ("vit_b_16", 224)]
#: The dry run's stand-ins: a CNN and a transformer, tiny inputs.
DRY_MODELS = [("resnet18", 32), ("vit_tiny", 32)]
#: The models the GPU target is stated for.
RESNETS = ("resnet18", "resnet50")


@dataclass(frozen=True)
class Variant:
    """One pruned (or the original) architecture of a model, with its counts."""

    name: str          # "original", "r0.5", "r0.5/rt1"
    ratio: float
    round_to: int
    macs: int
    params: int
    prune_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A seeded, randomly initialised model in eval mode."""
    torch.manual_seed(seed)
    if name == "vit_tiny":
        m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                                 num_heads=4, hidden_dim=64, mlp_dim=128,
                                                 num_classes=10)
    else:
        m = torchvision.models.get_model(name, weights=None)
    return m.eval()


def input_for(side: int) -> torch.Tensor:
    """The example input (batch 1); the timing code repeats it to each batch size."""
    return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))


def variant_specs(ratios: list[float], round_to: int,
                  extra_round_to: list[int]) -> list[tuple[str, float, int]]:
    """(name, ratio, round_to) of every pruned variant: each ratio at ``round_to``, plus
    ratio 0.5 at each of ``extra_round_to`` (the channel-alignment comparison)."""
    specs = [(f"r{r:g}", float(r), int(round_to)) for r in ratios]
    if 0.5 in ratios:
        specs += [(f"r0.5/rt{k}", 0.5, int(k)) for k in extra_round_to if k != round_to]
    return specs


def prune_variants(model: nn.Module, x: torch.Tensor, specs: list[tuple[str, float, int]],
                   log=print) -> list[tuple[Variant, nn.Module]]:
    """The original and each pruned variant of ``model`` (on the CPU), with counts."""
    c0 = fxprune.count(model, x)
    out = [(Variant("original", 0.0, 1, int(c0.macs), int(c0.params), 0.0), model)]
    for name, ratio, round_to in specs:
        t0 = time.perf_counter()
        res = fxprune.prune(model, x, ratio=ratio, criterion="l1", round_to=round_to)
        dt = time.perf_counter() - t0
        c = fxprune.count(res.module, x)
        out.append((Variant(name, ratio, round_to, int(c.macs), int(c.params), dt),
                    res.module.eval()))
        log(f"  {name}: {c0.macs / 1e6:.0f} -> {c.macs / 1e6:.0f} MMACs "
            f"({c0.macs / max(c.macs, 1):.2f}x), pruned in {dt:.1f}s")
    return out
