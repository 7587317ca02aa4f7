"""Where fxprune.prune spends its time, stage by stage (not run in CI).

    python bench/prune_stages.py                          # six torchvision models, 1 thread
    python bench/prune_stages.py --models resnet18 --repeats 10 --threads 2

Runs prune's pipeline by hand, one stage after another, as ``fxprune.prune(model, x,
ratio=0.5, criterion="l1")`` and ``passes/shrink.py`` do, with a clock between stages;
each stage's time is the median over ``--repeats`` runs (fresh ChannelGraph each time,
so cached properties are paid where prune pays them). Stages: fx trace + shapes, op
rules, grouping, scoring, selection, plan (signature), and inside shrink: plan check,
kept indices, graph copy, module copy (what the graph uses, minus the tensors
index-selected next), index-select, module update, constant fixing (meta re-run), dead
code, compile (the one GraphModule build, with lint); then the self-check
(the dead-unit oracle ``prune`` runs by default). The last two columns are plain
``fxprune.prune`` calls for comparison, as users call it and with ``check=False``.
Run from the repository root with ``PYTHONPATH=.`` so the worktree's fxprune is imported.
"""
from __future__ import annotations

import argparse
import time
import warnings
from collections import defaultdict

import numpy as np
import torch
import torchvision
from fxprune.passes.shrink import _copy_graph, _Draft, _targets, kept_indices, replaced_tensors
from fxprune.passes.shrink_constants import fix_constants
from fxprune.passes.shrink_modules import update_modules
from rich.console import Console
from rich.table import Table

import fxprune
from fxprune.analysis import apply_rules
from fxprune.channel_graph import ChannelGraph
from fxprune.criteria import get_criterion
from fxprune.grouping import find_groups
from fxprune.rewrite import copy_targets, replace_tensor, select
from fxprune.rules.purity import eliminate_dead_pure_nodes
from fxprune.select import make_plan, select_by_ratio
from fxprune.trace import trace_graph

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "vit_b_16"]
STAGES = ["trace", "rules", "grouping", "scoring", "selection", "plan",
          "check", "kept idx", "graph copy", "module copy", "index-select", "modules",
          "constants", "dead code", "compile", "self-check"]
SHRINK = STAGES[STAGES.index("check"):STAGES.index("compile") + 1]
WHOLE = ["prune()", "prune(check=False)"]


def one_run(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    t: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        t[name] = (now - clock[0]) * 1e3
        clock[0] = now

    traced = trace_graph(model, x); lap("trace")
    space, aliases = apply_rules(traced); lap("rules")
    groups, frozen = find_groups(space, set())
    cg = ChannelGraph(traced, tuple(groups), tuple(frozen), tensor_names=aliases, space=space)
    lap("grouping")
    out = get_criterion("l1")(cg, model=model, calibration=None)
    scores = getattr(out, "scores", out); lap("scoring")
    removed = select_by_ratio(cg, scores, 0.5); lap("selection")
    plan = make_plan(cg, removed, "l1", {"ratio": 0.5}); lap("plan")
    plan.check_against(cg.signature, {g.id: g.size for g in cg.groups}); lap("check")
    keep = kept_indices(cg, plan); lap("kept idx")
    graph = _copy_graph(cg.traced.graph); lap("graph copy")
    draft = _Draft(copy_targets(cg.traced.root, _targets(graph), skip=replaced_tensors(cg, keep)), graph)
    lap("module copy")
    by_tensor: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
    for (key, d), idx in keep.items():
        by_tensor[key][d] = idx
    for key, dims in by_tensor.items():
        if key[0] in "pb":
            replace_tensor(draft, cg.tensor_names[key], select(cg.tensor(key), dims))
    lap("index-select")
    update_modules(draft, cg, keep); lap("modules")
    fix_constants(draft, cg, keep); lap("constants")
    eliminate_dead_pure_nodes(draft); lap("dead code")
    graph.lint()
    gm = cg.traced.module(draft, graph); lap("compile")
    res = fxprune.PruneResult(gm, plan, cg, (x,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's zero-initialised heads
        fxprune.verify(model, res, x, raise_on_fail=False)
    lap("self-check")
    return t


def measure(name: str, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    runs = [one_run(model, x) for _ in range(repeats + 1)][1:]  # the first warms caches
    med = {k: float(np.median([r[k] for r in runs])) for k in STAGES}
    whole: dict[str, list[float]] = {k: [] for k in WHOLE}
    for _ in range(repeats):  # alternate: as users call it, then without the self-check
        for key, check in zip(WHOLE, (True, False)):
            t0 = time.perf_counter()
            fxprune.prune(model, x, ratio=0.5, criterion="l1", check=check)
            whole[key].append((time.perf_counter() - t0) * 1e3)
    med.update({k: float(np.median(v)) for k, v in whole.items()})
    return med


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    console = Console(width=250)
    t = Table(title=f"fxprune.prune(ratio=0.5, l1) by stage, median ms of {args.repeats} runs, "
                    f"{args.threads} thread(s); shrink = check..compile", title_justify="left")
    for col in ["model", *STAGES, "shrink", *WHOLE]:
        t.add_column(col, justify="left" if col == "model" else "right")
    for name in args.models:
        r = measure(name, args.repeats)
        shrink = sum(r[k] for k in SHRINK)
        pipeline = sum(r[k] for k in STAGES if k != "self-check")
        t.add_row(name, *[f"{r[k]:.1f}" for k in STAGES], f"{shrink:.0f} ({shrink / pipeline:.0%})",
                  *[f"{r[k]:.0f}" for k in WHOLE])
        console.print(f"{name}: " + ", ".join(f"{k} {r[k]:.1f}" for k in [*STAGES, *WHOLE]))
    console.print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
