"""Print the dead-unit oracle's difference and prune()'s tolerance per dtype.

    python bench/dtype_tolerance.py [--model resnet18] [--size 224]

A correct rewrite differs from the oracle only by float rounding, which grows with the
dtype's epsilon; fxprune.verify.tolerance derives the limit from it.
"""
from __future__ import annotations

import argparse

import torch
import torchvision

import fxprune
from fxprune.verify import tolerance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    print(f"{'dtype':8} {'oracle diff':>12} {'limit':>10}")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        torch.manual_seed(0)
        model = torchvision.models.get_model(a.model, weights=None).eval().to(dtype)
        x = torch.randn(1, 3, a.size, a.size, dtype=dtype)
        res = fxprune.prune(model, x, ratio=0.5, check=False)
        diff = fxprune.verify(model, res, x)
        print(f"{str(dtype).removeprefix('torch.'):8} {diff:12.2e} {tolerance(model, (x,)):10.2e}")


if __name__ == "__main__":
    main()
