"""The public entry points: prune, apply_plan, dead_channel_plan."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx

from .analysis import analyze
from .channel_graph import ChannelGraph
from .count import Counts, count
from .criteria import CriterionOutput, get_criterion
from .plan import PruningPlan
from .select import bisect_budget, check_ratio, make_plan, select_by_ratio, select_global

__all__ = ["PruneResult", "prune", "apply_plan", "dead_channel_plan"]


@dataclass
class PruneResult:
    """The pruned module, the plan that made it, and the analysis it came from."""

    module: fx.GraphModule
    plan: PruningPlan
    graph: ChannelGraph = field(repr=False)
    example_inputs: Any = field(default=None, repr=False)
    reconstructed: tuple[str, ...] = ()  # parameters a criterion re-fitted after shrink

    def counts(self) -> Counts:
        return count(self.module, self.example_inputs)

    def structural_module(self) -> fx.GraphModule:
        """The rewrite alone, before any reconstruction (ThiNet/LASSO) changed weights."""
        return _shrink(self.graph, self.plan) if self.reconstructed else self.module


def _shrink(cg: ChannelGraph, plan: PruningPlan, weight_updates: Mapping | None = None) -> fx.GraphModule:
    from fxprune.passes.shrink import shrink

    gm = shrink(cg, plan)
    if weight_updates:
        with torch.no_grad():
            for name, value in weight_updates.items():
                gm.get_parameter(name).copy_(value)
    return gm


def _scores(cg, model, criterion, calibration, kw) -> CriterionOutput:
    out = get_criterion(criterion)(cg, model=model, calibration=calibration, **kw)
    return out if isinstance(out, CriterionOutput) else CriterionOutput(scores=out)


def prune(
    model: torch.nn.Module,
    example_inputs: Any,
    ratio: float | Mapping[str, float] = 0.5,
    criterion: str = "l1",
    *,
    ignore: Iterable = (),
    global_ranking: bool = False,
    round_to: int = 1,
    target_macs: float | None = None,
    target_params: float | None = None,
    calibration: Iterable | None = None,
    leaf_modules: Sequence = (),
    concrete_args: dict | None = None,
    target_latency: float | None = None,
    backend: str = "onnxruntime",
    batch_size: int = 1,
    threads: int | None = 1,
    **criterion_kwargs: Any,
) -> PruneResult:
    """Score units with ``criterion``, pick the least important, shrink.

    ``ratio``: fraction of units removed per group (a dict gives per-group
    ratios), or the global fraction with ``global_ranking=True``.
    ``target_macs``/``target_params``: keep at most this fraction of the
    original MACs/params (global ranking, bisection on the ratio, within 2%).
    ``target_latency``: keep at most this fraction of the original's latency measured
    on ``backend`` at ``batch_size`` and ``threads`` (fxprune/latency_select.py).
    """
    if not isinstance(ratio, Mapping):
        check_ratio(ratio)
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    if target_latency is not None:  # latency budget: check before the analysis
        from .latency_select import check_latency_args, latency_budget
        check_latency_args(target_latency, backend, batch_size, threads)
    cg = analyze(model, example_inputs, ignore=ignore, leaf_modules=leaf_modules,
                 concrete_args=concrete_args)
    out = _scores(cg, model, criterion, calibration, criterion_kwargs)
    if out.removed_blocks:  # depth pruning (SSS): delete branches, re-analyse the smaller graph
        cg = _drop_blocks(model, example_inputs, out.removed_blocks, ignore, leaf_modules,
                          concrete_args)
    settings = {"ratio": ratio if not isinstance(ratio, Mapping) else dict(ratio),
                "global_ranking": global_ranking, "round_to": round_to,
                **{k: v for k, v in criterion_kwargs.items() if isinstance(v, (int, float, str, bool))}}
    if out.removed is not None:
        removed = out.removed
    elif target_macs is not None or target_params is not None:
        removed = _budget(cg, out.scores, example_inputs, target_macs, target_params, round_to)
        settings.update(target_macs=target_macs, target_params=target_params)
    elif target_latency is not None:  # measured latency on a backend: latency_select.py
        removed = latency_budget(cg, out.scores, example_inputs, target_latency, backend=backend,
                                 batch_size=batch_size, threads=threads, settings=settings)
    elif global_ranking and not isinstance(ratio, Mapping):
        removed = select_global(cg, out.scores, ratio, round_to)
    else:
        removed = select_by_ratio(cg, out.scores, ratio, round_to)
    plan = make_plan(cg, removed, criterion, settings)
    plan = PruningPlan(**{**plan.__dict__, "removed_blocks": tuple(out.removed_blocks)})
    updates = out.weight_updates(plan) if callable(out.weight_updates) else out.weight_updates
    return PruneResult(_shrink(cg, plan, updates), plan, cg, example_inputs,
                       tuple(sorted(updates or ())))


# --- depth pruning hook (SSS): plan.removed_blocks are deleted before channel analysis ---
def _drop_blocks(model, example_inputs, blocks, ignore, leaf_modules,
                 concrete_args=None) -> ChannelGraph:
    from fxprune.passes.remove_branches import remove_branches

    from .analysis import resolve_ignore
    from .trace import trace

    gm = trace(model, example_inputs, leaf_modules=leaf_modules, concrete_args=concrete_args)
    gm = remove_branches(gm, blocks)
    left = {n for n, _ in gm.named_parameters()}
    ignore = [n for n in resolve_ignore(model, ignore) if n in left]
    return analyze(gm, example_inputs, ignore=ignore, warn=False)
# --- end of depth pruning hook ---


def _budget(cg, scores, example_inputs, target_macs, target_params, round_to) -> dict:
    if target_macs is not None and target_params is not None:
        raise ValueError("give target_macs or target_params, not both")
    target = target_macs if target_macs is not None else target_params
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1], got {target}")
    from .count import macs_of_graph

    full = count(cg.gm, example_inputs)
    base = full.macs if target_macs is not None else full.params

    def measure(r: float) -> float:
        gm = _shrink(cg, make_plan(cg, select_global(cg, scores, r, round_to), "budget", {}))
        value = macs_of_graph(_retrace(gm, example_inputs)) if target_macs is not None else \
            sum(p.numel() for p in gm.parameters())
        return value / base

    r = bisect_budget(measure, target)
    return select_global(cg, scores, r, round_to)


def _retrace(gm: fx.GraphModule, example_inputs: Any) -> fx.GraphModule:
    from .trace import trace

    return trace(gm, example_inputs)


def apply_plan(model: torch.nn.Module, example_inputs: Any, plan: PruningPlan, *,
               ignore: Iterable = (), leaf_modules: Sequence = ()) -> PruneResult:
    """Replay a saved plan on a fresh model of the same architecture."""
    if plan.removed_blocks:  # depth pruning hook
        cg = _drop_blocks(model, example_inputs, plan.removed_blocks, ignore, leaf_modules)
    else:
        cg = analyze(model, example_inputs, ignore=ignore, leaf_modules=leaf_modules, warn=False)
    return PruneResult(_shrink(cg, plan), plan, cg, example_inputs)


def dead_channel_plan(model: torch.nn.Module, example_inputs: Any, fraction: float = 0.5, seed: int = 0,
                      *, ignore: Iterable = (), exact_only: bool = True, leaf_modules: Sequence = (),
                      concrete_args: dict | None = None) -> PruneResult:
    """Prune a random ``fraction`` of units in every group (exact groups only by
    default): pair with verify() for the dead-channel equivalence test."""
    cg = analyze(model, example_inputs, ignore=ignore, leaf_modules=leaf_modules,
                 concrete_args=concrete_args, warn=False)
    rng = np.random.default_rng(seed)
    removed = {}
    for g in cg.groups:
        if exact_only and g.mixing:
            continue
        n = min(g.size - 1, int(round(g.size * fraction)))
        if n > 0:
            removed[g.id] = sorted(rng.choice(g.size, n, replace=False).tolist())
    plan = make_plan(cg, removed, "dead-channel", {"fraction": fraction, "seed": seed})
    return PruneResult(_shrink(cg, plan), plan, cg, example_inputs)
