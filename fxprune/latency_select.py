"""Choose widths under a measured-latency budget (``prune(..., target_latency=0.5)``).

    removed = latency_budget(cg, scores, (x,), 0.5, backend="onnxruntime", batch_size=1)

1. **Tables.** Every conv/linear/attention layer (``latency_sites``) is timed standalone
   on the backend (``latency_table``, cached on disk) along each prunable width, the
   other widths full. A layer's cost at widths (w_1, w_2, ...) is modelled as
   ``full * prod_a T_a(w_a) / full``: exact for the bilinear in x out cost of a conv,
   and each factor keeps the backend's steps along its axis.
2. **Alignment.** Per layer kind and axis, the two heaviest layers are timed at widths
   1..48 and ``detect_alignment`` reads the alignment off their tables, the larger of
   the two (ORT CPU's depthwise convs are ~3x slower off multiples of 8, its dense convs
   ~1.8x one channel past a multiple of 16). A group may then only stop at widths where
   every layer it sets is aligned (or full): no ``round_to`` needed.
3. **Selection: greedy, not knapsack.** The cost of a layer depends on two groups at
   once (its input and its output), so the cost is not separable per group and an exact
   multiple-choice knapsack (HALP fixes the neighbour's width per iteration to make it
   separable) does not apply as is. Greedy removes, at each step, the group step (to its
   next allowed width) that loses the least per millisecond saved, with the saving
   recomputed exactly for the neighbours' current widths; the last step stops at the
   first count that meets the budget. What a step loses (``objective``):

   - ``"macs"`` (default): the MACs the removed units carry (at the neighbours' current
     widths), times their mean importance. The criterion still decides *which* units of
     a group go; across groups, the units that carry compute stay and time is taken
     where it buys the least compute (memory-bound narrow layers, depthwise convs,
     per-node overhead). ``bench/latency_objective.py`` compares the two at equal
     modelled budgets (``bench/results/latency_objective/``).
   - ``"importance"`` (HALP's): the removed units' importance alone, each unit of every
     group worth the same on average, whatever compute it carries.

   Importance is the criterion's scores divided by their group's mean (as
   ``select_global``) and is concave in the kept count (best units kept first), which is
   where greedy is close to optimal.
4. **Correction.** The layer model misses what it does not time (pooling, adds, fusion,
   per-node overhead), so the pruned model is built and measured against the original
   (interleaved runs) and the modelled budget is corrected (secant steps inside a
   bisection bracket) until the measured fraction is within ``tol`` of the target.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .bench.backends import BACKENDS, BackendUnavailable
from .bench.latency import time_runners, with_batch
from .channel_graph import ChannelGraph
from .errors import FxPruneError
from .latency_sites import Site, axis_widths, layer_sites
from .latency_table import LatencyTable, detect_alignment
from .select import make_plan

__all__ = ["LatencyTargetError", "LatencyModel", "build_model", "check_latency_args",
           "latency_budget", "removed_for"]

PROBE_WIDTHS = 48  # widths 1..48 of the probed layers: three periods of 16
MAX_STEPS = 64     # allowed widths kept per group (evenly subsampled beyond that)
LOOKAHEAD = 8      # allowed counts a greedy move may skip ahead
OBJECTIVES = ("macs", "importance")  # what a greedy move's loss counts (module doc, 3.)
REPEATS, MIN_SECONDS = 10, 1.0  # whole-model timing of each candidate (rounds, seconds)


class LatencyTargetError(FxPruneError):
    """A latency target that cannot be used: bad argument, or a backend that cannot run."""


def check_latency_args(target: float, backend: str, batch_size: int, threads: int | None,
                       objective: str = "macs") -> None:
    """Raise ``LatencyTargetError`` naming the bad argument and the fix."""
    if objective not in OBJECTIVES:
        raise LatencyTargetError(f"latency_objective must be one of {', '.join(OBJECTIVES)} "
                                 f"(what the width search keeps), got {objective!r}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise LatencyTargetError(f"target_latency must be in (0, 1] (the fraction of the "
                                 f"original's measured latency to keep), got {target!r}")
    if backend not in BACKENDS:
        raise LatencyTargetError(f"backend {backend!r} is unknown; choose from "
                                 f"{', '.join(BACKENDS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise LatencyTargetError(f"batch_size must be a positive integer, got {batch_size!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise LatencyTargetError(f"threads must be a positive integer or None, got {threads!r}")
    try:
        BACKENDS[backend].check()
    except BackendUnavailable as e:
        raise LatencyTargetError(f"backend {backend!r} cannot run here: {e}") from e


@dataclass
class _GroupState:
    size: int
    steps: list[int]                 # allowed kept counts, largest first
    kept_importance: np.ndarray      # [k] -> normalised importance of the k best units
    axes: list[tuple[int, str, np.ndarray]] = field(default_factory=list)  # site, axis, w[k]


@dataclass
class LatencyModel:
    """The layer-latency model of one model on one backend (ms at full widths etc.)."""

    sites: list[Site]
    full_ms: np.ndarray
    profiles: list[dict[str, tuple[np.ndarray, np.ndarray]]]
    alignment: dict[str, int]
    groups: dict[str, _GroupState]
    objective: str = "macs"  # or "importance" (HALP's): what a move's loss counts

    @property
    def total_full_ms(self) -> float:
        return float(self.full_ms.sum())

    def _site_ms(self, i: int, widths: Mapping[str, int]) -> float:
        ms = self.full_ms[i]
        for axis, (w, t) in self.profiles[i].items():
            if axis in widths:
                ms *= float(np.interp(widths[axis], w, t)) / self.full_ms[i]
        return ms

    def _site_macs(self, i: int, widths: Mapping[str, int]) -> float:
        """MACs of site i at ``widths`` (axes not named stay full)."""
        spec = self.sites[i].spec
        w = {a: widths.get(a, full) for a, full in spec.axes}
        if spec.kind == "mha":  # in-projection, attention, out-projection
            hd, tokens = spec.attr("head_dim"), spec.attr("tokens")
            def cost(v: Mapping[str, int]) -> float:
                return v["heads"] * hd * (3 * v["in"] + 2 * tokens + v["out"])
            return self.sites[i].macs * cost(w) / max(cost(dict(spec.axes)), 1)
        frac = 1.0
        for a, full in spec.axes:
            frac *= w[a] / full
        return self.sites[i].macs * frac

    def site_widths(self, keep: Mapping[str, int]) -> list[dict[str, int]]:
        out: list[dict[str, int]] = [{} for _ in self.sites]
        for gid, k in keep.items():
            for i, axis, w in self.groups[gid].axes:
                out[i][axis] = int(w[k])
        return out

    def ms(self, keep: Mapping[str, int]) -> float:
        """Modelled milliseconds of the timed layers when group g keeps keep[g] units."""
        return sum(self._site_ms(i, w) for i, w in enumerate(self.site_widths(keep)))

    def widths(self, budget_ms: float) -> dict[str, int]:
        """Greedy: the kept count per group that fits ``budget_ms`` (see module doc)."""
        keep = {g: s.size for g, s in self.groups.items()}
        pos = dict.fromkeys(keep, 0)
        cur = self.site_widths(keep)
        cost = np.array([self._site_ms(i, w) for i, w in enumerate(cur)])
        neighbours = self._neighbours()

        def moves(g: str, last: int) -> list[tuple[float, dict[int, dict[str, int]],
                                                   dict[int, float], int, float]]:
            """g's moves to its allowed counts pos[g]+1 .. last: (loss per ms saved, new
            site widths, new site ms, step index, ms saved)."""
            st, out = self.groups[g], []
            if self.objective == "macs":  # the group's sites' MACs now, once for every j
                macs_now = {i: self._site_macs(i, cur[i]) for i, _, _ in st.axes}
            for j in range(pos[g] + 1, min(last + 1, len(st.steps))):
                k2 = st.steps[j]
                new_w: dict[int, dict[str, int]] = {}
                for i, axis, w in st.axes:
                    new_w.setdefault(i, dict(cur[i]))[axis] = int(w[k2])
                new = {i: self._site_ms(i, wi) for i, wi in new_w.items()}
                saved = sum(cost[i] - v for i, v in new.items())
                loss = st.kept_importance[keep[g]] - st.kept_importance[k2]
                if self.objective == "macs":  # MACs lost, weighted by their importance
                    loss *= sum(macs_now[i] - self._site_macs(i, wi)
                                for i, wi in new_w.items()) / (keep[g] - k2)
                if saved > 1e-9:
                    out.append((loss / saved, new_w, new, j, saved))
            return out

        def step(g: str) -> tuple[float, dict[int, dict[str, int]], dict[int, float], int, float]:
            """g's best move among its next LOOKAHEAD allowed counts. Looking past the
            next count steps over plateaus and noise where one step alone saves nothing."""
            return min(moves(g, pos[g] + LOOKAHEAD), key=lambda m: m[0],
                       default=(np.inf, {}, {}, pos[g], 0.0))

        ratio = {g: step(g)[0] for g in self.groups}
        total = float(cost.sum())
        while total > budget_ms:
            g = min(ratio, key=ratio.__getitem__, default=None)
            if g is None or not np.isfinite(ratio[g]):
                break  # nothing left that saves time
            _, new_w, new, j, saved = step(g)
            if total - saved <= budget_ms:  # the last move: go no further than the budget needs
                _, new_w, new, j, saved = next(m for m in moves(g, j) if total - m[4] <= budget_ms)
            pos[g] = j
            keep[g] = self.groups[g].steps[pos[g]]
            for i, v in new.items():
                cur[i], cost[i] = new_w[i], v
            total = float(cost.sum())
            for h in neighbours[g] | {g}:
                ratio[h] = step(h)[0]
        return keep

    def _neighbours(self) -> dict[str, set[str]]:
        by_site: dict[int, set[str]] = {}
        for g, s in self.groups.items():
            for i, _, _ in s.axes:
                by_site.setdefault(i, set()).add(g)
        return {g: set().union(*(by_site[i] for i, _, _ in s.axes)) if s.axes else set()
                for g, s in self.groups.items()}


def _steps(size: int, axes: list[tuple[int, str, np.ndarray]], sites: list[Site],
           align: dict[str, int]) -> list[int]:
    """Kept counts where every layer the group sets is aligned or full, largest first."""
    ks = np.arange(1, size + 1)
    ok = np.ones(size, dtype=bool)
    for i, axis, w in axes:
        a = align.get(f"{sites[i].spec.kind}.{axis}", 1)
        full = sites[i].spec.width(axis)
        wk = w[1:]
        ok &= (wk > 0) & ((wk % a == 0) | (wk == full))
    steps = ks[ok].tolist()
    if len(steps) <= 1:  # nothing aligned below full: allow every count
        steps = ks.tolist()
    if len(steps) > MAX_STEPS:
        idx = np.unique(np.linspace(0, len(steps) - 1, MAX_STEPS).round().astype(int))
        steps = [steps[j] for j in idx]
    if steps[-1] != size:
        steps.append(size)
    return sorted(set(steps), reverse=True)


def _efficient_steps(st: _GroupState, profiles: list[dict[str, tuple[np.ndarray, np.ndarray]]],
                     slack: float = 0.01) -> list[int]:
    """``st.steps`` without the counts some wider step beats: where the group's layers
    together (each along its profile, its other widths full) cost more than at a wider
    count (by ``slack``, for table noise), a narrower width runs a slow path (an
    unaligned kernel) and is no place to stop. Equal costs stay: a plateau (layers too
    small to time, below the backend's per-call overhead) is a free step on the way to
    the next saving. The sum is over the group's layers: one noisy layer among dozens
    (a residual group's) must not forbid a count the others gain from."""
    out, best = [], np.inf
    for k in st.steps:  # widest first
        cost = sum(float(np.interp(w[k], *profiles[i][axis])) for i, axis, w in st.axes)
        if k == st.size or cost <= best * (1 + slack):
            out.append(k)
        best = min(best, cost)
    return out


PROBE_SITES = 2  # layers probed per kind and axis: one noisy table must not hide the steps


def _probe_alignments(sites: list[Site], table: LatencyTable) -> dict[str, int]:
    """Per layer kind and axis: the largest alignment the tables of the ``PROBE_SITES``
    heaviest such layers (by MACs) show. One probe was not enough: resnet18's stem conv
    at batch 32 showed ORT's 16-channel steps in one run (21 ms at 16 outputs, 40 ms at
    20) and none in another (a second benchmark beside it), and the widths chosen
    between the steps realised 64% of the MACs speed-up at 0.3 (101% with two probes)."""
    by_key: dict[str, list[Site]] = {}
    for s in sites:
        for a in s.axes:
            by_key.setdefault(f"{s.spec.kind}.{a.name}", []).append(s)
    out = {}
    for key, group in sorted(by_key.items()):
        axis = key.split(".", 1)[1]
        found = [1]
        for s in sorted(group, key=lambda s: -s.macs)[:PROBE_SITES]:
            top = min(PROBE_WIDTHS, s.spec.width(axis))
            if top >= 4:
                found.append(detect_alignment({w: table.ms(s.spec.at(**{axis: w}))
                                               for w in range(1, top + 1)}))
        out[key] = max(found)
    return out


def build_model(cg: ChannelGraph, scores: Mapping[str, np.ndarray], table: LatencyTable,
                points: int = 6, progress: Callable[[str], None] | None = None) -> LatencyModel:
    """Time the layers (``points`` widths per prunable axis) and set up the greedy."""
    sites = layer_sites(cg)
    scored = {g.id: g for g in cg.groups if g.id in scores}
    for s in sites:
        s.axes = [a for a in s.axes if a.group in scored]
    if progress:
        progress(f"probing channel alignment on {table.backend.name}")
    align = _probe_alignments(sites, table)
    groups: dict[str, _GroupState] = {}
    for gid, g in scored.items():
        sc = np.asarray(scores[gid], dtype=np.float64)
        sc = sc / (sc.mean() + 1e-12)
        order = np.argsort(-sc, kind="stable")
        rank = np.empty(g.size, dtype=np.int64)
        rank[order] = np.arange(g.size)
        axes = [(i, a.name, axis_widths(a, rank)) for i, s in enumerate(sites)
                for a in s.axes if a.group == gid]
        groups[gid] = _GroupState(g.size, [], np.concatenate([[0.0], np.cumsum(sc[order])]), axes)
        groups[gid].steps = _steps(g.size, axes, sites, align)
    if progress:
        progress(f"timing {len(sites)} layers")
    full = np.array([table.ms(s.spec) for s in sites])
    profiles: list[dict[str, tuple[np.ndarray, np.ndarray]]] = [{} for _ in sites]
    for st in groups.values():
        for i, axis, w in st.axes:
            ws = np.unique(w[st.steps])
            pick = np.unique(np.linspace(0, ws.size - 1, min(points, ws.size)).round().astype(int))
            ws = np.unique(np.concatenate([ws[pick], [sites[i].spec.width(axis)]]))
            ws = ws[ws > 0]
            t = np.array([table.ms(sites[i].spec.at(**{axis: int(v)})) for v in ws])
            profiles[i][axis] = (ws.astype(np.float64), t)
    for st in groups.values():  # never stop at a count some wider one beats
        st.steps = _efficient_steps(st, profiles)
    table.save()
    return LatencyModel(sites, full, profiles, align, groups)


def removed_for(cg: ChannelGraph, scores: Mapping[str, np.ndarray],
                keep: Mapping[str, int]) -> dict[str, list[int]]:
    """The lowest-scored ``size - keep[g]`` units of each group."""
    out = {}
    for g in cg.groups:
        if g.id in keep and keep[g.id] < g.size:
            order = np.argsort(np.asarray(scores[g.id]), kind="stable")
            out[g.id] = sorted(int(u) for u in order[:g.size - keep[g.id]])
    return out


def _as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def _next_budget(points: list[tuple[float, float]], target: float, floor: float) -> float:
    """The next modelled budget to try. With measurements on both sides of the target:
    interpolate between the two nearest (kept inside the bracket's middle 80%, so a
    flat stretch of the step function cannot stall it). With one side only: the secant
    through the two points nearest the target, or with one point the line through it
    and the fixed part of the latency the tables do not model (``floor``, as a fraction
    of the original); clipped to the side not yet ruled out."""
    below = [p for p in points if p[1] < target]
    above = [p for p in points if p[1] > target]
    lo = max(below) if below else None  # the widest budget still under the target
    hi = min(above) if above else None  # the narrowest budget still over it
    if lo is not None and hi is not None:
        t = (target - lo[1]) / max(hi[1] - lo[1], 1e-9)
        return lo[0] + float(np.clip(t, 0.1, 0.9)) * (hi[0] - lo[0])
    near = sorted(points, key=lambda p: abs(p[1] - target))
    second = next((p for p in near[1:] if abs(p[0] - near[0][0]) > 1e-9
                   and p[1] != near[0][1]), None)
    (b, f) = near[0]
    slope = (f - second[1]) / (b - second[0]) if second is not None else 0.0
    if slope <= 0:  # one point (or noise): the line through it and the fixed part
        slope = max(f - floor, 1e-6) / max(b, 1e-6)
    nb = b + (target - f) / slope
    if hi is not None:  # everything measured is over: go lower, at least by a tenth
        return float(np.clip(nb, 0.005, 0.9 * hi[0]))
    return float(np.clip(nb, 1.1 * lo[0], 1.0))


def search_budget(measure: Callable[[float], float], target: float, start: float,
                  floor: float = 0.0, tol: float = 0.03, max_iters: int = 8,
                  progress: Callable[[str], None] | None = None) -> list[tuple[float, float]]:
    """(modelled budget, measured fraction) for each budget tried, from ``start`` until a
    measurement is within ``tol`` of ``target``, the bracket closes, or ``max_iters``.
    ``measure`` is monotone up to noise and a step function of the budget."""
    points: list[tuple[float, float]] = []
    b = start
    for _ in range(max_iters):
        f = measure(b)
        points.append((b, f))
        if progress:
            progress(f"modelled budget {b:.3f}: measured {f:.3f} of the original")
        if abs(f / target - 1) <= tol:
            break
        nb = _next_budget(points, target, floor)
        if any(abs(nb - p[0]) < 1e-4 for p in points):
            break  # the bracket has closed on one step of the width function
        b = nb
    return points


def pick_budget(points: list[tuple[float, float]], target: float,
                tol: float) -> tuple[float, float]:
    """The measured point to keep: the slowest at most ``tol`` over the target (the target
    is a ceiling), else the fastest measured."""
    under = [p for p in points if p[1] <= target * (1 + tol)]
    return max(under, key=lambda p: p[1]) if under else min(points, key=lambda p: p[1])


def latency_budget(cg: ChannelGraph, scores: Mapping[str, np.ndarray], example_inputs: Any,
                   target: float, backend: str = "onnxruntime", batch_size: int = 1,
                   threads: int | None = 1, settings: dict | None = None, tol: float = 0.03,
                   max_iters: int = 8, repeats: int | None = None,
                   min_seconds: float | None = None,
                   progress: Callable[[str], None] | None = None,
                   objective: str = "macs") -> dict[str, list[int]]:
    """Units to remove so the pruned model's measured latency on ``backend`` is about
    ``target`` x the original's (see the module docstring); ``settings`` (the plan's)
    gains the target, the achieved fraction and the alignments found."""
    from fxprune.passes.shrink import shrink

    check_latency_args(target, backend, batch_size, threads, objective)
    repeats = REPEATS if repeats is None else repeats
    min_seconds = MIN_SECONDS if min_seconds is None else min_seconds
    table = LatencyTable(backend, threads, batch_size)
    try:
        model = build_model(cg, scores, table, progress=progress)
        model.objective = objective
        be = table.backend
        x = with_batch(_as_inputs(example_inputs), batch_size)
        orig = be.prepare(cg.gm.eval(), x)
        m0 = model.total_full_ms
        tried: dict[tuple, tuple[float, float, dict]] = {}

        def measure(keep: dict[str, int]) -> float:
            sig = tuple(sorted(keep.items()))
            if sig not in tried:
                gm = shrink(cg, make_plan(cg, removed_for(cg, scores, keep), "latency", {}))
                a, b = time_runners([orig, be.prepare(gm.eval(), x)], 2, repeats, min_seconds)
                tried[sig] = (float(np.median(b)) / float(np.median(a)), 0.0, keep)
            return tried[sig][0]

        full_keep = {g: s.size for g, s in model.groups.items()}
        (t0,) = time_runners([orig], 2, repeats, min_seconds)
        base = float(np.median(t0))
        rest = max(base - m0, 0.0)
        b = float(np.clip((target * base - rest) / m0, 0.01, 1.0)) if m0 > 0 else target
        floor = rest / base if base > 0 else 0.0

        def widths_at(budget: float) -> dict[str, int]:
            return model.widths(budget * m0) if budget < 1 else full_keep

        history = search_budget(lambda budget: measure(widths_at(budget)), target, b, floor,
                                tol=tol, max_iters=max_iters, progress=progress)
        b, f = pick_budget(history, target, tol)
        keep = widths_at(b)
        if f > target * (1 + tol):
            warnings.warn(f"target_latency={target}: the closest pruned model measured "
                          f"{f:.3f} of the original's latency on {backend} (the layer tables "
                          "say no further width saves time here: per-call overhead or "
                          "kernel choice dominate); try a smaller target or batch", stacklevel=3)
        if settings is not None:
            settings.update(target_latency=target, backend=backend, batch_size=batch_size,
                            threads=threads, latency_objective=objective,
                            achieved_latency=round(f, 4),
                            alignment=dict(model.alignment))
        return removed_for(cg, scores, keep)
    finally:
        table.close()
