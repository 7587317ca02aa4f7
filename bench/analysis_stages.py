"""Where fxprune.analyze spends its time, stage by stage (not run in CI).

    python bench/analysis_stages.py                          # six torchvision models
    python bench/analysis_stages.py --models resnet50 vit_b_16 --repeats 20

One torch thread. Each stage is timed on its own (best of ``--repeats``):
fx tracing, meta shape propagation, the op rules, the grouping (connected
components and units), and the whole ``analyze`` call; shares are of the sum
of the four stages.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torchvision
from rich.console import Console
from rich.table import Table

import fxprune
from fxprune.analysis import apply_rules
from fxprune.grouping import find_groups
from fxprune.shapes import propagate_shapes
from fxprune.trace import _LeafTracer, trace_graph

MODELS = ["resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "densenet121", "vit_b_16"]


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def stages(name: str, repeats: int) -> dict[str, float]:
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    graph = _LeafTracer((), set()).trace(model)
    traced = trace_graph(model, x)
    space, _ = apply_rules(traced)
    return {
        "nodes": len(graph.nodes),
        "trace": best_ms(lambda: _LeafTracer((), set()).trace(model), repeats),
        "shapes": best_ms(lambda: propagate_shapes(model, (x,), graph), repeats),
        "rules": best_ms(lambda: apply_rules(traced), repeats),
        "grouping": best_ms(lambda: find_groups(space, set()), repeats),
        "analyze": best_ms(lambda: fxprune.analyze(model, x, warn=False), repeats),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t = Table(title="fxprune.analyze by stage, ms (share of the four stages), 1 thread")
    for col in ("model", "nodes", "fx trace", "meta shapes", "rules", "grouping", "analyze",
                "µs/node"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for name in args.models:
        r = stages(name, args.repeats)
        total = r["trace"] + r["shapes"] + r["rules"] + r["grouping"]
        cell = lambda k: f"{r[k]:.1f} ({r[k] / total:.0%})"  # noqa: E731
        t.add_row(name, str(r["nodes"]), cell("trace"), cell("shapes"), cell("rules"),
                  cell("grouping"), f"{r['analyze']:.1f}", f"{r['analyze'] * 1e3 / r['nodes']:.0f}")
    Console().print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
