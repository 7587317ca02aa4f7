"""The public entry points: prune, apply_plan, dead_channel_plan."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx

from .analysis import analyze
from .arguments import as_items, check_bool, check_positive_int, parameter_names, reject_unknown
from .channel_graph import ChannelGraph
from .count import Counts, count
from .criteria import (COMMON_OPTIONS, CriterionOutput, criterion_call_options, criterion_options,
                       get_criterion)
from .errors import FxPruneError
from .plan import PruningPlan
from .select import bisect_budget, check_ratio, make_plan, select_by_ratio, select_global
from .trace import as_tuple

__all__ = ["PruneResult", "prune", "apply_plan", "dead_channel_plan"]


@dataclass
class PruneResult:
    """The pruned module, the plan that made it, and the analysis it came from."""

    module: fx.GraphModule
    plan: PruningPlan
    graph: ChannelGraph = field(repr=False)
    example_inputs: Any = field(default=None, repr=False)
    reconstructed: tuple[str, ...] = ()  # parameters a criterion re-fitted after shrink
    oracle_diff: float | None = None  # prune()'s self-check: relative difference (None: unchecked)
    oracle_inputs: tuple = ()  # the input shapes the self-check compared on (oracle_inputs.py)

    def counts(self) -> Counts:
        return count(self.module, self.example_inputs)

    def structural_module(self) -> fx.GraphModule:
        """The rewrite alone, before any reconstruction (ThiNet/LASSO) changed weights."""
        return _shrink(self.graph, self.plan) if self.reconstructed else self.module


def _shrink(cg: ChannelGraph, plan: PruningPlan, weight_updates: Mapping | None = None) -> fx.GraphModule:
    from fxprune.passes.shrink import shrink

    gm = shrink(cg, plan)
    if weight_updates:
        _apply_updates(gm, weight_updates)
    return gm


def _apply_updates(gm: fx.GraphModule, weight_updates: Mapping) -> None:
    with torch.no_grad():
        for name, value in weight_updates.items():
            gm.get_parameter(name).copy_(value)


def _expected_io(cg: ChannelGraph, example_inputs: Any) -> tuple[list, int | None]:
    """Shapes of the example inputs, and the class count of a (N, C) output if there is one."""
    shapes = [tuple(t.shape) for t in as_tuple(example_inputs) if isinstance(t, torch.Tensor)]
    out = next((n for n in reversed(cg.gm.graph.nodes) if n.op == "output"), None)
    meta = getattr(out.args[0], "meta", {}).get("tensor_meta") if out is not None else None
    shape = getattr(meta, "shape", None)
    return shapes, (int(shape[1]) if shape is not None and len(shape) == 2 else None)


def _scores(cg, model, criterion, calibration, kw, example_inputs=None) -> CriterionOutput:
    from fxprune.passes.calibration import batch_cursor, calibration_error

    with batch_cursor() as cursor:
        try:
            out = get_criterion(criterion)(cg, model=model, calibration=calibration,
                                           **criterion_call_options(criterion, kw))
        except FxPruneError:
            raise
        except Exception as e:  # a batch of the wrong shape, labels out of range, ...
            named = calibration_error(cursor, e, *_expected_io(cg, example_inputs))
            if named is None:
                raise
            raise named from e
    return out if isinstance(out, CriterionOutput) else CriterionOutput(scores=out)


def _check_arguments(criterion: str, criterion_kwargs: Mapping, ratio: Any, round_to: Any,
                     flags: Mapping[str, Any]) -> None:
    """Named errors for wrong types and unknown keywords, before any work starts."""
    if not isinstance(ratio, Mapping):
        check_ratio(ratio)
    check_positive_int(round_to, "round_to")
    for name, value in flags.items():
        check_bool(value, name)
    own = parameter_names(prune)
    options = criterion_options(criterion)
    own_options = options - COMMON_OPTIONS
    takes = f"takes {', '.join(sorted(own_options))}" if own_options else \
        "takes no options of its own"
    reject_unknown("fxprune.prune", criterion_kwargs, options, also_known=own,
                   describe=f"(criterion {criterion!r} {takes}; "
                            f"prune() takes {', '.join(own[2:])})")


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
    check: bool = True,
    frontend: str = "auto",
    target_latency: float | None = None,
    backend: str = "onnxruntime",
    batch_size: int = 1,
    threads: int | None = 1,
    latency_objective: str = "macs",
    **criterion_kwargs: Any,
) -> PruneResult:
    """Score units with ``criterion``, pick the least important, shrink, check.

    ``ratio``: fraction of units removed per group (a dict gives per-group
    ratios), or the global fraction with ``global_ranking=True``.
    ``target_macs``/``target_params``: keep at most this fraction of the
    original MACs/params (global ranking, bisection on the ratio, within 2%).
    ``ignore`` / ``leaf_modules``: lists; a single name, module or type is one item.
    ``criterion_kwargs``: the criterion's own options (``criterion_options(name)``);
    any other keyword raises UnknownArgumentError naming the closest accepted name.

    ``check`` (default True): run the dead-unit oracle (two forward passes in eval
    mode, on one sample cropped to at most 32x32 first and on ``example_inputs`` when
    that proves nothing: fxprune/oracle_inputs.py) and raise VerificationError
    naming the groups whose rewrite is not exact, at the dtype's tolerance
    (``fxprune.verify.tolerance``). Groups marked ``mixing`` (LayerNorm ...) are
    not exact by design: a plan touching them is checked on the sub-plan of its
    exact groups (one extra shrink). Criteria that re-fit weights (ThiNet, LASSO)
    are checked on the rewrite before the re-fit. ``check=False`` skips it (for
    pruning large models in a loop); ``result.oracle_diff`` holds what was measured and
    ``result.oracle_inputs`` the input shapes it was measured on.
    ``frontend``: "fx", "export" or "auto" (recorded in the plan; see frontend_export.py).
    ``target_latency``: keep at most this fraction of the original's latency measured
    on ``backend`` at ``batch_size`` and ``threads`` (fxprune/latency_select.py);
    ``latency_objective``: what the width search keeps, "macs" (importance-weighted
    MACs, default) or "importance" (HALP's: every unit alike, whatever its compute).
    """
    _check_arguments(criterion, criterion_kwargs, ratio, round_to,
                     {"global_ranking": global_ranking, "check": check})
    ignore, leaf_modules = as_items(ignore, "ignore"), as_items(leaf_modules, "leaf_modules")
    if target_latency is not None:  # latency budget: check before the analysis
        from .latency_select import check_latency_args, latency_budget
        check_latency_args(target_latency, backend, batch_size, threads, latency_objective)
    cg = analyze(model, example_inputs, ignore=ignore, leaf_modules=leaf_modules,
                 concrete_args=concrete_args, frontend=frontend)
    out = _scores(cg, model, criterion, calibration, criterion_kwargs, example_inputs)
    blocks = as_items(out.removed_blocks, "removed_blocks")
    if blocks:  # depth pruning (SSS): delete branches, re-analyse the smaller graph
        cg = _drop_blocks(model, example_inputs, blocks, ignore, leaf_modules, concrete_args)
    settings = {"ratio": ratio if not isinstance(ratio, Mapping) else dict(ratio),
                "global_ranking": global_ranking, "round_to": round_to,
                "frontend": cg.frontend,  # replay uses the same frontend
                **{k: v for k, v in criterion_kwargs.items() if isinstance(v, (int, float, str, bool))}}
    if out.removed is not None:
        removed = out.removed
    elif target_macs is not None or target_params is not None:
        removed = _budget(cg, out.scores, example_inputs, target_macs, target_params, round_to)
        settings.update(target_macs=target_macs, target_params=target_params)
    elif target_latency is not None:  # measured latency on a backend: latency_select.py
        removed = latency_budget(cg, out.scores, example_inputs, target_latency, backend=backend,
                                 batch_size=batch_size, threads=threads, settings=settings,
                                 objective=latency_objective)
    elif global_ranking and not isinstance(ratio, Mapping):
        removed = select_global(cg, out.scores, ratio, round_to)
    else:
        removed = select_by_ratio(cg, out.scores, ratio, round_to)
    plan = make_plan(cg, removed, criterion, settings)
    plan = PruningPlan(**{**plan.__dict__, "removed_blocks": blocks})
    gm = _shrink(cg, plan)
    checked = _self_check(model, cg, plan, gm, example_inputs) if check else None
    updates = out.weight_updates(plan) if callable(out.weight_updates) else out.weight_updates
    if updates:  # after the check: the oracle proves the rewrite, not the re-fit
        _apply_updates(gm, updates)
    return PruneResult(gm, plan, cg, example_inputs, tuple(sorted(updates or ())),
                       *(checked or (None, ())))


def _self_check(model, cg: ChannelGraph, plan: PruningPlan, gm: fx.GraphModule,
                example_inputs: Any):
    """verify.check_rewrite against the user's model, or against the block-free graph
    when depth pruning deleted branches (their removal is the criterion's choice)."""
    from .verify import check_rewrite

    oracle = cg.gm if plan.removed_blocks else model
    return check_rewrite(oracle, cg, plan, gm, example_inputs, shrink=_shrink)


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
    """Replay a saved plan on a fresh model of the same architecture (with the frontend
    the plan records; plans without a record were made by the fx frontend)."""
    ignore, leaf_modules = as_items(ignore, "ignore"), as_items(leaf_modules, "leaf_modules")
    blocks = as_items(plan.removed_blocks, "plan.removed_blocks")
    if blocks:  # depth pruning hook
        cg = _drop_blocks(model, example_inputs, blocks, ignore, leaf_modules)
    else:
        cg = analyze(model, example_inputs, ignore=ignore, leaf_modules=leaf_modules, warn=False,
                     frontend=plan.settings.get("frontend", "fx"))
    return PruneResult(_shrink(cg, plan), plan, cg, example_inputs)


def dead_channel_plan(model: torch.nn.Module, example_inputs: Any, fraction: float = 0.5, seed: int = 0,
                      *, ignore: Iterable = (), exact_only: bool = True, leaf_modules: Sequence = (),
                      concrete_args: dict | None = None, frontend: str = "auto") -> PruneResult:
    """Prune a random ``fraction`` of units in every group (exact groups only by
    default): pair with verify() for the dead-channel equivalence test."""
    ignore, leaf_modules = as_items(ignore, "ignore"), as_items(leaf_modules, "leaf_modules")
    cg = analyze(model, example_inputs, ignore=ignore, leaf_modules=leaf_modules,
                 concrete_args=concrete_args, warn=False, frontend=frontend)
    rng = np.random.default_rng(seed)
    removed = {}
    for g in cg.groups:
        if exact_only and g.mixing:
            continue
        n = min(g.size - 1, int(round(g.size * fraction)))
        if n > 0:
            removed[g.id] = sorted(rng.choice(g.size, n, replace=False).tolist())
    plan = make_plan(cg, removed, "dead-channel", {"fraction": fraction, "seed": seed,
                                                       "frontend": cg.frontend})
    return PruneResult(_shrink(cg, plan), plan, cg, example_inputs)
