"""Measured speed-up against MACs reduction for torchvision models (not run in CI).

    python bench/speedup.py                       # all models, ratios 0.3/0.5/0.7
    python bench/speedup.py --quick               # resnet18 at 0.5, small batches, minutes
    python bench/speedup.py --models resnet50 --backends onnxruntime --ratios 0.5
    python bench/speedup.py --threads 1 2         # each run at 1 and at 2 threads

For each model and ratio (the classifier's outputs are never pruned), prunes by L1
norm and times original and pruned on every available backend (interleaved runs, see
``fxprune.bench.speedup``); at ratio 0.5 also with ``round_to`` 8 and 16, which keeps
channel counts friendly to vectorised kernels. Writes ``bench/results/speedup.json``
after every run (``--resume`` skips the runs already there) and
``bench/results/speedup.png``: measured speed-up against the MACs speed-up, with the
ideal line. Ends with the target check: for CNNs
at ratio 0.5, ONNX Runtime CPU speed-up >= 0.8x the MACs speed-up at batch 1 and 32.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torchvision
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

import fxprune
from fxprune.bench import available_backends, speedup
from fxprune.io import atomic_path

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "vit_b_16"]
CNNS = {"resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0"}
RESULTS = Path(__file__).resolve().parent / "results"
console = Console()


def classifier(model: nn.Module) -> nn.Module:
    """The last Linear layer: fc, classifier[-1], heads.head."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def run_one(name: str, ratio: float, round_to: int, threads: int | None,
            args: argparse.Namespace) -> dict[str, Any]:
    model = torchvision.models.get_model(name, weights=None).eval()
    x = (torch.randn(1, 3, 224, 224),)
    t0 = time.perf_counter()
    # The classifier's outputs are the graph output, which analysis never prunes. Passing
    # it to ``ignore`` keeps the layer whole, i.e. also freezes its *input* channels (the
    # whole last stage of a ResNet), so it is opt-in (--ignore-classifier).
    ignore = [classifier(model)] if args.ignore_classifier else []
    res = fxprune.prune(model, x, ratio=ratio, criterion="l1", ignore=ignore, round_to=round_to)
    prune_s = time.perf_counter() - t0
    rep = speedup(model, res, x, backends=args.backends, batch_sizes=args.batch_sizes,
                  warmup=args.warmup, repeats=args.repeats, threads=threads,
                  min_seconds=args.min_seconds)
    return {"model": name, "ratio": ratio, "round_to": round_to, "threads": threads or 0,
            "prune_s": prune_s,
            "macs_speedup": rep.macs_speedup, "report": rep.to_dict()}


def save(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    doc = {"machine": {"cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "torch": torch.__version__,
                       "default_threads": torch.get_num_threads()},
           "settings": {k: v for k, v in vars(args).items() if k != "out"},
           "results": results}
    with atomic_path(args.out / "speedup.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["backend"], r["batch_size"], r["threads"]) for res in results
                     for r in res["report"]["rows"] if not r["skipped"]})
    if not panels:
        return
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    markers = dict(zip(MODELS, "os^Dv"))
    hi = max(res["macs_speedup"] for res in results) * 1.1
    for ax, (backend, bs, threads) in zip(axes.flat, panels):
        ax.plot([1, hi], [1, hi], "k--", lw=0.8, label="ideal (MACs)")
        for res in results:
            row = next((r for r in res["report"]["rows"]
                        if (r["backend"], r["batch_size"], r["threads"]) == (backend, bs, threads)
                        and not r["skipped"]),
                       None)
            if row is None:
                continue
            fill = {1: "full", 8: "left", 16: "none"}.get(res["round_to"], "full")
            ax.plot(res["macs_speedup"], row["speedup"], markers.get(res["model"], "x"),
                    fillstyle=fill, color=f"C{MODELS.index(res['model']) % 10}",
                    label=f"{res['model']}" if res["round_to"] == 1 else None)
        ax.set(title=f"{backend}, batch {bs}, {threads} thread{'s' * (threads != 1)}", xlabel="MACs speed-up (original / pruned)",
               ylabel="measured speed-up")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=len(uniq), fontsize=8)
    fig.text(0.01, 0.01, "filled: round_to=1, half: 8, hollow: 16", fontsize=7)
    fig.tight_layout(rect=(0, 0.08 / nrows, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def target_check(results: list[dict[str, Any]]) -> bool:
    """CNNs at ratio 0.5: ORT-CPU speed-up >= 0.8x MACs speed-up at batch 1 and 32.

    Checked separately for every (round_to, threads) setting that was run; the table
    shows each row, and the verdict names the settings where all four CNNs pass at both
    batch sizes. Returns whether the plain setting (round_to 1) passes at some thread count.
    """
    t = Table(title="target: CNNs at ratio 0.5, onnxruntime (CPU) speed-up >= 0.8x MACs speed-up",
              title_justify="left")
    for col in ("model", "round_to", "threads", "batch", "MACs speed-up", "measured",
                "efficiency", "pass"):
        t.add_column(col)
    verdict: dict[tuple[int, int], list[bool]] = {}
    for res in sorted(results, key=lambda r: (r["model"], r["round_to"], r.get("threads", 0))):
        if res["model"] not in CNNS or res["ratio"] != 0.5:
            continue
        for r in res["report"]["rows"]:
            if r["backend"] != "onnxruntime" or r["batch_size"] not in (1, 32) or r["skipped"]:
                continue
            passed = r["efficiency"] >= 0.8
            verdict.setdefault((res["round_to"], r["threads"]), []).append(passed)
            t.add_row(res["model"], str(res["round_to"]), str(r["threads"]),
                      str(r["batch_size"]), f"{res['macs_speedup']:.2f}x",
                      f"{r['speedup']:.2f}x", f"{r['efficiency']:.0%}",
                      "[green]yes[/green]" if passed else "[red]no[/red]")
    if not t.row_count:
        console.print("target check: no ONNX Runtime CPU run of a CNN at ratio 0.5, "
                      "batch 1 or 32 to check")
        return True
    console.print(t)
    full = 2 * len(CNNS)  # four CNNs at batch 1 and 32
    for (round_to, threads), passes in sorted(verdict.items()):
        state = ("[green]met[/green]" if len(passes) == full and all(passes) else
                 f"[red]not met[/red] ({sum(passes)}/{len(passes)} rows pass"
                 + (f", {full - len(passes)} rows not run" if len(passes) < full else "") + ")")
        console.print(f"round_to {round_to}, {threads} thread(s): {state}")
    return any(rt == 1 and len(p) == full and all(p) for (rt, _), p in verdict.items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--backends", nargs="+", default=None,
                   help="default: every backend available here")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    p.add_argument("--round-to", nargs="*", type=int, default=[8, 16],
                   help="extra round_to values tried at ratio 0.5 (default 8 16)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--min-seconds", type=float, default=2.0,
                   help="keep timing past --repeats until this many seconds have passed "
                        "(more samples for fast runs, e.g. batch 1)")
    p.add_argument("--threads", nargs="+", type=int, default=[0],
                   help="intra-op thread counts; every run is repeated at each "
                        "(default 0: the runtime's default)")
    p.add_argument("--quick", action="store_true",
                   help="resnet18 at ratio 0.5, batch 1 and 8, 10 repeats")
    p.add_argument("--ignore-classifier", action="store_true",
                   help="keep the last Linear whole, input channels included")
    p.add_argument("--resume", action="store_true", help="skip runs already in the JSON")
    p.add_argument("--report-only", action="store_true",
                   help="re-write the plot and markdown and re-check the target from the JSON")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.ratios, args.batch_sizes = ["resnet18"], [0.5], [1, 8]
        args.warmup, args.repeats, args.round_to = 3, 10, [8]
    args.backends = args.backends or available_backends()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return report(json.loads((args.out / "speedup.json").read_text())["results"], args.out)
    jobs = [(m, r, 1, t) for t in args.threads for m in args.models for r in args.ratios]
    jobs += [(m, 0.5, k, t) for t in args.threads for m in args.models for k in args.round_to
             if 0.5 in args.ratios]
    results: list[dict[str, Any]] = []
    if args.resume and (args.out / "speedup.json").is_file():
        results = json.loads((args.out / "speedup.json").read_text())["results"]
    done = {(r["model"], r["ratio"], r["round_to"], r.get("threads", 0)) for r in results}
    console.print(f"backends: {', '.join(args.backends)}; {len(jobs)} runs "
                  f"({len(done & set(jobs))} already done)")
    with Progress(console=console) as prog:
        task = prog.add_task("speed-up", total=len(jobs), completed=len(done & set(jobs)))
        for name, ratio, k, threads in jobs:
            if (name, ratio, k, threads) in done:
                continue
            prog.update(task, description=f"{name} ratio {ratio} round_to {k} threads {threads}")
            res = run_one(name, ratio, k, threads or None, args)
            results.append(res)
            save(results, args)
            prog.console.print(speedup_table(res))
            prog.advance(task)
    return report(results, args.out)


def report(results: list[dict[str, Any]], out: Path) -> int:
    """Plot, markdown table and target check of every run in ``results``."""
    plot(results, out / "speedup.png")
    with atomic_path(out / "speedup.md") as tmp:
        tmp.write_text(markdown(results), encoding="utf-8")
    console.print(f"wrote {out / 'speedup.json'}, {out / 'speedup.md'} and {out / 'speedup.png'}")
    return 0 if target_check(results) else 1


def markdown(results: list[dict[str, Any]]) -> str:
    """One row per model, ratio, round_to, thread count, backend and batch size."""
    lines = ["# Measured speed-up (`bench/speedup.py`)", "",
             "Speed-ups are original / pruned; efficiency is measured / MACs speed-up; "
             "threads is the runtime's intra-op thread count.", "",
             "| model | ratio | round_to | threads | backend | batch | MACs speed-up | "
             "latency ms (original → pruned, median) | measured | efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["model"], r["ratio"], r["round_to"], r.get("threads", 0))  # noqa: E731
    for res in sorted(results, key=key):
        for r in res["report"]["rows"]:
            if r["skipped"]:
                continue
            lines.append(
                f"| {res['model']} | {res['ratio']} | {res['round_to']} | {r['threads']} | "
                f"{r['backend']} | {r['batch_size']} | {res['macs_speedup']:.2f}× | "
                f"{r['original_ms']:.1f} → {r['pruned_ms']:.1f} | {r['speedup']:.2f}× | "
                f"{r['efficiency']:.0%} |")
    return "\n".join(lines) + "\n"


def speedup_table(res: dict[str, Any]) -> Table:
    from fxprune.bench import SpeedupReport

    rep = SpeedupReport.from_dict(res["report"])
    return rep.table(title=f"{res['model']} ratio {res['ratio']} round_to {res['round_to']} "
                           f"threads {res.get('threads') or 'default'}: "
                           f"MACs speed-up {rep.macs_speedup:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
