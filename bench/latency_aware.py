"""Latency-aware pruning on ONNX Runtime CPU: achieved vs target latency, and what it
keeps against ratio-based pruning at equal measured latency (not run in CI).

    python bench/latency_aware.py                       # 5 models x batch 1, 32 x targets .7/.5/.3
    python bench/latency_aware.py --quick               # resnet18 + mobilenet_v2, batch 1, 0.5
    python bench/latency_aware.py --models resnet50 --batch 32 --targets 0.5 --resume

For each model, batch size and target: ``fxprune.prune(model, x, target_latency=T,
backend="onnxruntime", batch_size=B, threads=1)`` (L1 scores); the final model is timed
again against the original, interleaved (``fxprune.bench.speedup``), giving the achieved
fraction (pruned / original latency), the measured and the MACs speed-up. Then
ratio-based pruning (one L1 ratio for every group, ``round_to=1``) is searched (secant
steps on the ratio, each measured the same way) for the same measured latency, and the
MACs and params both keep there are compared (interpolated between the two measured
ratios that bracket the latency). Writes ``bench/results/latency_aware.{json,md,png}``
after every run (``--resume`` skips runs already there). Timings on a busy machine are
noisy: the JSON records the load average at each run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from rich.console import Console

import fxprune
from fxprune.bench import speedup
from fxprune.io import atomic_path
from fxprune.latency_select import OBJECTIVES

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "vit_b_16"]
RESULTS = Path(__file__).resolve().parent / "results"
console = Console(width=160)


def measured_fraction(model, pruned, x, bs: int, args) -> tuple[float, Any]:
    rep = speedup(model, pruned, x, backends=("onnxruntime",), batch_sizes=(bs,), threads=1,
                  warmup=3, repeats=args.repeats, min_seconds=args.min_seconds)
    return 1.0 / rep.rows[0].speedup, rep


def ratio_at_latency(model, x, bs: int, latency: float, c0, args) -> dict[str, Any]:
    """Uniform-ratio L1 pruning (round_to=1) at the measured latency fraction ``latency``."""
    points: list[tuple[float, float, float, float]] = []  # ratio, latency, macs, params kept
    r = float(np.clip(1 - np.sqrt(latency), 0.05, 0.95))
    for _ in range(args.ratio_steps):
        res = fxprune.prune(model, x, ratio=r, criterion="l1")
        f, _ = measured_fraction(model, res, x, bs, args)
        c = fxprune.count(res.module, x)
        points.append((r, f, c.macs / c0.macs, c.params / c0.params))
        if abs(f / latency - 1) < 0.02:
            break
        below = [p for p in points if p[1] <= latency]
        above = [p for p in points if p[1] > latency]
        if below and above:  # secant between the closest bracketing points
            lo, hi = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
            r = hi[0] + (lo[0] - hi[0]) * (latency - hi[1]) / (lo[1] - hi[1])
        else:  # keep walking: latency ~ (1 - r)^2 for convs
            r = float(np.clip(1 - (1 - r) * np.sqrt(latency / f), 0.02, 0.97))
    pts = sorted(points, key=lambda p: p[1])
    lat = [p[1] for p in pts]
    return {"points": points,
            "macs_kept": float(np.interp(latency, lat, [p[2] for p in pts])),
            "params_kept": float(np.interp(latency, lat, [p[3] for p in pts])),
            "bracketed": min(lat) <= latency <= max(lat)}


def run_one(name: str, bs: int, target: float, args) -> dict[str, Any]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = (torch.randn(1, 3, 224, 224),)
    t0 = time.perf_counter()
    res = fxprune.prune(model, x, target_latency=target, backend="onnxruntime",
                        batch_size=bs, threads=1, latency_objective=args.objective)
    prune_s = time.perf_counter() - t0
    achieved, rep = measured_fraction(model, res, x, bs, args)
    c0, c1 = fxprune.count(model, x), fxprune.count(res.module, x)
    row = {"model": name, "batch": bs, "target": target, "objective": args.objective,
           "prune_s": prune_s,
           "load": os.getloadavg()[0], "achieved": achieved,
           "search_achieved": res.plan.settings.get("achieved_latency"),
           "alignment": res.plan.settings.get("alignment"),
           "macs_kept": c1.macs / c0.macs, "params_kept": c1.params / c0.params,
           "measured_speedup": rep.rows[0].speedup, "macs_speedup": rep.macs_speedup,
           "efficiency": rep.rows[0].efficiency, "original_ms": rep.rows[0].original_ms,
           "pruned_ms": rep.rows[0].pruned_ms}
    if not args.no_baseline:
        row["ratio_based"] = ratio_at_latency(model, x, bs, achieved, c0, args)
    return row


def markdown(rows: list[dict[str, Any]], command: str = "") -> str:
    lines = ["# Latency-aware pruning (`bench/latency_aware.py`)", "",
             f"Produced by `{command}`." if command else "", "",
             "ONNX Runtime CPU, 1 thread, `latency_objective` "
             f"{', '.join(sorted({r.get('objective', 'importance') for r in rows}))}. achieved = pruned / original latency, re-measured "
             "interleaved with the original; efficiency = measured / MACs speed-up; the "
             "ratio-based columns are uniform L1 pruning (round_to=1) at the same measured "
             "latency. `load` is the 1-minute load average during the run (the machine was "
             "shared).", "",
             "| model | batch | target | achieved | within 5% | MACs kept | params kept | "
             "ratio-based MACs kept | ratio-based params kept | measured speed-up | "
             "MACs speed-up | efficiency | prune s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["batch"], -r["target"])):
        rb = r.get("ratio_based") or {}
        ok = abs(r["achieved"] / r["target"] - 1) <= 0.05
        rb_m = f"{rb['macs_kept']:.1%}" + ("" if rb.get("bracketed") else "*") if rb else "-"
        rb_p = f"{rb['params_kept']:.1%}" if rb else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['target']} | {r['achieved']:.3f} | "
                     f"{'yes' if ok else 'no'} | {r['macs_kept']:.1%} | {r['params_kept']:.1%} | "
                     f"{rb_m} | {rb_p} | {r['measured_speedup']:.2f}× | "
                     f"{r['macs_speedup']:.2f}× | {r['efficiency']:.0%} | {r['prune_s']:.0f} | "
                     f"{r['load']:.1f} |")
    lines += ["", "\\* not bracketed: the ratio search did not reach both sides of the "
              "latency; the value is extrapolated flat."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.6), squeeze=False)
    for ax, name in zip(axes[0], models):
        ax.plot([0.2, 1], [0.2, 1], "k--", lw=0.8, label="target")
        for bs, marker in ((1, "o"), (32, "s")):
            pts = sorted((r["target"], r["achieved"]) for r in rows
                         if r["model"] == name and r["batch"] == bs)
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=f"batch {bs}")
        ax.fill_between([0.2, 1], [0.19, 0.95], [0.21, 1.05], color="grey", alpha=0.15)
        ax.set(title=name, xlabel="target latency (fraction)", ylabel="measured fraction")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(rows: list[dict[str, Any]], out: Path, command: str) -> None:
    with atomic_path(out / "latency_aware.json") as tmp:
        tmp.write_text(json.dumps({"command": command, "results": rows}, indent=2) + "\n",
                       encoding="utf-8")
    with atomic_path(out / "latency_aware.md") as tmp:
        tmp.write_text(markdown(rows, command), encoding="utf-8")
    plot(rows, out / "latency_aware.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    p.add_argument("--targets", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--ratio-steps", type=int, default=4, help="measured ratios per baseline")
    p.add_argument("--objective", default=OBJECTIVES[0], choices=OBJECTIVES,
                   help="prune(latency_objective=...): what the width search keeps")
    p.add_argument("--no-baseline", action="store_true", help="skip the ratio-based search")
    p.add_argument("--quick", action="store_true", help="resnet18, mobilenet_v2, batch 1, 0.5")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.targets = ["resnet18", "mobilenet_v2"], [1], [0.5]
        args.repeats, args.min_seconds = 10, 1.0
    torch.set_num_threads(1)
    command = "python bench/latency_aware.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[dict[str, Any]] = []
    if args.resume and (args.out / "latency_aware.json").is_file():
        doc = json.loads((args.out / "latency_aware.json").read_text())
        rows, command = doc["results"], f"{doc['command']}`, then `{command}"
    done = {(r["model"], r["batch"], r["target"]) for r in rows}
    for name in args.models:
        for bs in args.batch:
            for target in args.targets:
                if (name, bs, target) in done:
                    continue
                console.print(f"{name} batch {bs} target {target} (load {os.getloadavg()[0]:.1f})")
                row = run_one(name, bs, target, args)
                rows.append(row)
                save(rows, args.out, command)
                rb = row.get("ratio_based") or {}
                console.print(f"  achieved {row['achieved']:.3f}, MACs kept "
                              f"{row['macs_kept']:.1%} vs ratio-based "
                              f"{rb.get('macs_kept', float('nan')):.1%}, efficiency "
                              f"{row['efficiency']:.0%}, prune {row['prune_s']:.0f}s")
    console.print(markdown(rows, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
