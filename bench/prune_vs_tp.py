"""fxprune.prune end to end against Torch-Pruning's DependencyGraph build + MetaPruner.step(),
side by side in one process (not run in CI). Run from the repository root with
``PYTHONPATH=.`` so the worktree's fxprune is imported.

    python bench/prune_vs_tp.py              # eight torchvision models, 1 thread and default
    python bench/prune_vs_tp.py --models resnet18 mobilenet_v2 --repeats 5 --threads 1

Both prune 50% of the channels of every group by L1 magnitude and keep the classifier's
outputs: ``fxprune.prune(model, x, ratio=0.5, criterion="l1")`` against
``tp.pruner.MetaPruner(model, x, MagnitudeImportance(p=1), pruning_ratio=0.5,
ignored_layers=[classifier])`` (whose constructor builds the DependencyGraph) then
``.step()``. Torch-Pruning edits the model in place, so each of its runs gets a fresh
deep copy (not timed); fxprune never mutates its input. The two are timed alternately
(fxprune, TP, fxprune, ...) so machine load hits both alike; the table shows the
medians, per thread setting (1 and torch's default unless ``--threads`` says otherwise),
and the median over models of the per-model ratio TP / fxprune.
"""
from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np
import torch
import torchvision
from rich.console import Console
from rich.table import Table
from torch import nn

import fxprune

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
          "densenet121", "regnet_y_400mf", "vit_b_16"]


def classifier(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def fx_once(model: nn.Module, x: torch.Tensor, check: bool = True) -> float:
    t0 = time.perf_counter()
    fxprune.prune(model, x, ratio=0.5, criterion="l1", check=check)
    return time.perf_counter() - t0


def tp_once(model: nn.Module, x: torch.Tensor) -> float:
    import torch_pruning as tp

    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=0.5, ignored_layers=[classifier(m)])
    pruner.step()
    return time.perf_counter() - t0


def compare(name: str, repeats: int) -> tuple[float, float, float]:
    """Median seconds of fxprune.prune (self-check on, the default), fxprune.prune with
    check=False (the same work as TP, which checks nothing), and TP, timed alternately."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    fx_once(model, x), tp_once(model, x)  # warm-up: imports, allocator, caches
    checked, unchecked, tp_t = [], [], []
    for _ in range(repeats):
        checked.append(fx_once(model, x))
        unchecked.append(fx_once(model, x, check=False))
        tp_t.append(tp_once(model, x))
    return float(np.median(checked)), float(np.median(unchecked)), float(np.median(tp_t))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", nargs="+", type=int, default=None,
                   help="torch thread counts (default: 1 and torch's default)")
    args = p.parse_args(argv)
    default = torch.get_num_threads()
    threads = args.threads or sorted({1, default})
    console = Console(width=160)
    warnings.filterwarnings("ignore")
    for n in threads:
        torch.set_num_threads(n)
        t = Table(title=f"prune 50% by L1, median s of {args.repeats} runs, {n} thread(s)",
                  title_justify="left")
        for col in ("model", "fxprune.prune (checked)", "check=False", "TP DepGraph + step",
                    "TP / checked", "TP / check=False"):
            t.add_column(col, justify="left" if col == "model" else "right")
        ratios = []
        for name in args.models:
            try:
                f, u, g = compare(name, args.repeats)
            except Exception as e:  # report the model and go on
                t.add_row(name, "failed", "", "", f"{type(e).__name__}: {str(e)[:60]}")
                continue
            ratios.append((g / f, g / u))
            t.add_row(name, f"{f:.3f}", f"{u:.3f}", f"{g:.3f}", f"{g / f:.2f}x", f"{g / u:.2f}x")
            console.print(f"{n} thread(s) {name}: fxprune {f:.3f}s (check=False {u:.3f}s), "
                          f"TP {g:.3f}s")
        if ratios:
            med = np.median(np.asarray(ratios), axis=0)
            t.add_row("median", "", "", "", f"{med[0]:.2f}x", f"{med[1]:.2f}x")
        console.print(t)
    torch.set_num_threads(default)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
