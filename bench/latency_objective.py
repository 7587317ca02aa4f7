"""What the latency search keeps: importance-weighted MACs vs importance alone (HALP),
side by side at the same modelled budgets (not run in CI).

    python bench/latency_objective.py                          # 5 models, batch 1
    python bench/latency_objective.py --models mobilenet_v2 --batch 32 --budgets 0.5

Per model: one ChannelGraph, L1 scores and one latency table (ORT CPU, 1 thread, cached);
for each modelled budget (a fraction of the timed layers' milliseconds) the greedy picks
widths under each ``latency_objective``, the model is shrunk, and both pruned models are
timed interleaved with the original in one ``time_runners`` call. Prints a markdown table
(and writes it with ``--out``): measured fraction, MACs kept and efficiency (measured /
MACs speed-up) per objective. The correction loop of ``prune(target_latency=...)`` is
left out: this compares the two selections at equal modelled cost.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

import fxprune
from fxprune.bench.latency import time_runners, with_batch
from fxprune.criteria import get_criterion
from fxprune.io import atomic_path
from fxprune.latency_select import OBJECTIVES, build_model, removed_for
from fxprune.latency_table import LatencyTable
from fxprune.passes.shrink import shrink
from fxprune.select import make_plan

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "vit_b_16"]


def compare(name: str, batch: int, budgets: list[float], repeats: int,
            min_seconds: float) -> list[str]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = (torch.randn(1, 3, 224, 224),)
    cg = fxprune.analyze(model, x, warn=False)
    scores = get_criterion("l1")(cg, model=model, calibration=None)
    table = LatencyTable("onnxruntime", 1, batch)
    try:
        lm = build_model(cg, scores, table)
        be, xb = table.backend, with_batch(x, batch)
        macs0 = fxprune.count(model, x).macs
        original = be.prepare(model, xb)  # exported once, timed beside every budget's pair
        rows = []
        for budget in budgets:
            runners, cells = [original], []
            for objective in OBJECTIVES:
                lm.objective = objective
                keep = lm.widths(budget * lm.total_full_ms)
                gm = shrink(cg, make_plan(cg, removed_for(cg, scores, keep), "latency", {}))
                runners.append(be.prepare(gm.eval(), xb))
                cells.append(fxprune.count(gm, x).macs / macs0)
            times = time_runners(runners, 2, repeats, min_seconds)
            base = float(np.median(times[0]))
            row = f"| {name} | {batch} | {budget} |"
            for t, macs in zip(times[1:], cells):
                f = float(np.median(t)) / base
                row += f" {f:.3f} | {macs:.1%} | {macs / f:.0%} |"
            rows.append(row)
            print(row, flush=True)
        return rows
    finally:
        table.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--budgets", nargs="+", type=float, default=[0.6, 0.4, 0.2])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=None, help="write the table here (markdown)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    cols = " | ".join(f"{o}: {c}" for o in OBJECTIVES
                      for c in ("measured", "MACs kept", "efficiency"))
    lines = ["| model | batch | modelled budget | " + cols + " |",
             "|---|---|---|" + "---|" * 3 * len(OBJECTIVES)]
    print("\n".join(lines), flush=True)
    for name in args.models:
        lines += compare(name, args.batch, args.budgets, args.repeats, args.min_seconds)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text("# Latency objectives (`bench/latency_objective.py`)\n\nProduced by "
                           f"`python bench/latency_objective.py {' '.join(sys.argv[1:] if argv is None else argv)}`. ONNX "
                           "Runtime CPU, 1 thread; measured = pruned / original latency "
                           "(interleaved); efficiency = MACs kept / measured fraction (measured "
                           "over MACs speed-up).\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
