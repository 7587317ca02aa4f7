"""Latency-aware pruning: the layer tables and their cache, alignment detection, the
greedy width selection under a synthetic cost model, target_latency end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune import latency_select
from fxprune.errors import FxPruneError
from fxprune.latency_select import LatencyTargetError, build_model, removed_for, pick_budget, search_budget
from fxprune.latency_table import LatencyTable, LayerSpec, detect_alignment
from fxprune.select import keep_count


class ThreeConvs(nn.Module):
    """conv-bn-relu x3 then pool and fc: two prunable groups of 64 and 96 channels, each
    setting the output of one conv and the input of the next (bilinear costs)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.c2, self.b2 = nn.Conv2d(64, 96, 3, padding=1), nn.BatchNorm2d(96)
        self.c3, self.b3 = nn.Conv2d(96, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = torch.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


CONV = LayerSpec("conv", (("in", 16), ("out", 32)),
                 (("kernel", (3, 3)), ("stride", (1, 1)), ("padding", (1, 1)),
                  ("dilation", (1, 1)), ("bias", False), ("spatial", (8, 8))))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FXPRUNE_CACHE", str(tmp_path))
    return tmp_path


# --------------------------------------------------------------- table and cache
@pytest.mark.parametrize("backend", ["onnxruntime", "torch-cpu"])
def test_second_table_measures_nothing(cache, backend):
    first = LatencyTable(backend, threads=1, batch_size=1, repeats=2)
    a = [first.ms(CONV), first.ms(CONV.at(out=24))]
    first.close()
    assert first.measured == 3  # two layers and the empty model (per-call overhead)
    second = LatencyTable(backend, threads=1, batch_size=1, repeats=2)
    assert [second.ms(CONV), second.ms(CONV.at(out=24))] == a
    assert second.measured == 0
    second.close()


def test_cache_key_changes_with_threads_and_batch(cache):
    t1 = LatencyTable("onnxruntime", threads=1, batch_size=1, repeats=2)
    t1.ms(CONV)
    t1.close()
    t2 = LatencyTable("onnxruntime", threads=2, batch_size=1, repeats=2)
    assert t2.path != t1.path
    t2.ms(CONV)
    assert t2.measured > 0
    t2.close()
    b2 = LatencyTable("onnxruntime", threads=1, batch_size=2, repeats=2)
    assert b2.path == t1.path and b2.entry_key(CONV) != t1.entry_key(CONV)
    b2.ms(CONV)
    assert b2.measured > 0
    b2.close()


# --------------------------------------------------------------- alignment
def test_alignment_of_a_staircase_every_16():
    assert detect_alignment({w: 1.0 + math.ceil(w / 16) for w in range(1, 49)}) == 16


def test_alignment_of_a_noisy_staircase_and_of_a_cliff():
    rng = np.random.default_rng(0)
    noisy = {w: (1.0 + math.ceil(w / 16)) * (1 + 0.01 * rng.standard_normal())
             for w in range(1, 49)}
    assert detect_alignment(noisy) == 16
    cliff = {w: w * (1.0 if w % 8 == 0 else 3.0) for w in range(1, 49)}  # slow path off 8k
    assert detect_alignment(cliff) == 8


def test_no_alignment_on_a_smooth_table():
    assert detect_alignment({w: 0.1 + w for w in range(1, 49)}) == 1


def test_alignment_of_ramps_that_jump_past_every_16():
    """ORT CPU's convs along their input channels: the cost ramps within a block of 16 and
    jumps one channel past it, so every width is efficient and only the jumps show 16."""
    ramp = {w: 30.0 * (math.ceil(w / 16) - 1) + 1.2 * ((w - 1) % 16 + 1) + 5 for w in range(1, 49)}
    assert detect_alignment(ramp) == 16
    spiky = {**ramp, 27: ramp[27] * 1.6}  # one noisy reading is not a jump pattern
    assert detect_alignment(spiky) == 16


def test_alignment_is_the_largest_either_probed_layer_shows():
    """The heaviest layer's table was too noisy to show steps; the next one's does."""
    from fxprune.latency_select import _probe_alignments
    from fxprune.latency_sites import Axis, Site
    from fxprune.latency_table import LayerSpec

    def site(name: str, macs: int) -> Site:
        spec = LayerSpec("conv", (("in", 64), ("out", 64)), (("name", name),))
        return Site(name, spec, [Axis("out", "g", ("p", 0), 1, 64)], macs)

    class Table:
        def ms(self, spec: LayerSpec) -> float:
            w = spec.width("out")
            return 1.0 + w * 1e-3 if spec.attr("name") == "flat" else float(math.ceil(w / 16))

    sites = [site("flat", 200), site("stepped", 100), site("small", 1)]
    assert _probe_alignments(sites, Table()) == {"conv.out": 16}
    assert _probe_alignments(sites[:1], Table()) == {"conv.out": 1}


# --------------------------------------------------------------- selection
class StepTable:
    """A synthetic backend: conv cost ceil(in/16) * ceil(out/16) (steps every 16)."""

    class backend:  # noqa: N801 - stands in for a Backend instance
        name = "synthetic"

    def ms(self, s: LayerSpec) -> float:
        widths = dict(s.axes)
        if s.kind == "conv":
            return 0.01 + math.ceil(widths["in"] / 16) * math.ceil(widths["out"] / 16)
        return 0.01 + 1e-3 * widths.get("in", 1) * widths.get("out", 1)

    def save(self) -> None:
        pass


def _setup():
    torch.manual_seed(0)
    model, x = ThreeConvs().eval(), torch.randn(1, 3, 16, 16)
    cg = fxprune.analyze(model, x, warn=False)
    rng = np.random.default_rng(0)
    # group importance very uneven: a few units carry most of it
    scores = {g.id: rng.pareto(1.0, g.size) + 1e-3 for g in cg.groups}
    return cg, scores, build_model(cg, scores, StepTable())


def _importance(scores, keep):
    total = 0.0
    for gid, k in keep.items():
        s = np.sort(scores[gid] / scores[gid].mean())[::-1]
        total += s[:k].sum()
    return total


def test_selection_hits_the_budget_on_aligned_widths():
    cg, scores, model = _setup()
    assert {k: v for k, v in model.alignment.items() if k.startswith("conv")} == \
        {"conv.in": 16, "conv.out": 16}  # the linear layer's synthetic cost is smooth: 1
    budget = 0.5 * model.total_full_ms
    keep = model.widths(budget)
    assert model.ms(keep) <= budget
    assert model.ms(keep) >= 0.35 * model.total_full_ms  # not far below: one step is small
    for gid, k in keep.items():
        assert k % 16 == 0 or k == cg.group(gid).size, (gid, k)


def _true_ms(model, keep):
    """The synthetic backend's own cost (not the model's interpolation) of ``keep``."""
    return sum(StepTable().ms(s.spec.at(**w)) for s, w in zip(model.sites, model.site_widths(keep)))


def test_the_last_greedy_move_stops_where_the_budget_is_met():
    """A staircase table (a step every 8 widths, a slight slope between) makes the best
    move look 8 counts ahead; a budget a hair under full needs only one count."""
    widths = np.arange(1, 65, dtype=np.float64)
    t = np.ceil(widths / 8) / 8 + 1e-3 * widths / 64
    spec = LayerSpec("conv", (("in", 8), ("out", 64)), ())
    group = latency_select._GroupState(64, list(range(64, 0, -1)),
                                       np.linspace(0, 64, 65), [(0, "out", np.arange(65))])
    model = latency_select.LatencyModel([latency_select.Site("c", spec)], np.array([t[-1]]),
                                        [{"out": (widths, t)}], {}, {"g": group})
    assert model.widths(t[-1] - 1e-5)["g"] == 63  # one count saves enough
    assert model.widths(t[-1] - 0.1)["g"] == 56   # past the first step of the stairs
    assert model.widths(t[-1])["g"] == 64


class MemoryTable(StepTable):
    """Conv cost: compute (in x out) plus a memory term in the output width, so the
    first conv (3 input channels) buys little compute per millisecond."""

    def ms(self, s: LayerSpec) -> float:
        w = dict(s.axes)
        if s.kind == "conv":
            return 1e-3 * w["in"] * w["out"] + 0.05 * w["out"]
        return 1e-4 * w.get("in", 1) * w.get("out", 1)


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_macs_objective_keeps_compute_and_importance_objective_keeps_importance(fraction):
    torch.manual_seed(0)
    cg = fxprune.analyze(ThreeConvs().eval(), torch.randn(1, 3, 16, 16), warn=False)
    rng = np.random.default_rng(0)
    scores = {g.id: rng.uniform(0.5, 1.5, g.size) for g in cg.groups}
    model = build_model(cg, scores, MemoryTable())
    budget, full_macs = fraction * model.total_full_ms, sum(s.macs for s in model.sites)
    kept = {}
    for objective in latency_select.OBJECTIVES:
        model.objective = objective
        keep = model.widths(budget)
        assert model.ms(keep) <= budget
        macs = sum(model._site_macs(i, w) for i, w in enumerate(model.site_widths(keep)))
        kept[objective] = (macs / full_macs, _importance(scores, keep))
    assert kept["macs"][0] > 1.05 * kept["importance"][0]
    assert kept["importance"][1] > kept["macs"][1]


def test_layers_too_small_to_time_do_not_freeze_their_group():
    """A squeeze-excite conv costs less than the backend's per-call overhead: its table
    is flat. The group it shares with a real conv still gets every count the real conv
    gains from; a count that costs more than a wider one (a slow path) is dropped."""
    widths = np.array([4.0, 8, 12, 16])
    flat = (widths, np.full(4, 1e-6))
    falling = (widths, np.array([0.1, 0.2, 0.3, 0.4]))
    slow_at_12 = (widths, np.array([0.1, 0.2, 0.5, 0.4]))
    ident = np.arange(17)
    group = latency_select._GroupState(16, [16, 12, 8, 4], np.linspace(0, 16, 17),
                                       [(0, "out", ident), (1, "in", ident)])
    assert latency_select._efficient_steps(group, [{"out": flat}, {"in": falling}]) == \
        [16, 12, 8, 4]
    assert latency_select._efficient_steps(group, [{"out": flat}, {"in": slow_at_12}]) == \
        [16, 8, 4]


def test_site_macs_follow_the_widths():
    conv = LayerSpec("conv", (("in", 16), ("out", 32)), ())
    mha = LayerSpec("mha", (("in", 64), ("heads", 8), ("out", 64)),
                    (("head_dim", 8), ("tokens", 10)))
    sites = [latency_select.Site("c", conv, macs=1000), latency_select.Site("a", mha, macs=900)]
    model = latency_select.LatencyModel(sites, np.ones(2), [{}, {}], {}, {})
    assert model._site_macs(0, {}) == 1000
    assert model._site_macs(0, {"in": 8, "out": 16}) == 250  # bilinear
    assert model._site_macs(1, {"heads": 4}) == 450          # linear in heads
    # in-projection (3 x in), attention (2 x tokens), out-projection (out), per head
    assert model._site_macs(1, {"in": 32}) == pytest.approx(900 * (96 + 20 + 64) / (192 + 20 + 64))


def test_selection_keeps_more_importance_than_uniform_ratio():
    cg, scores, model = _setup()
    budget = 0.5 * model.total_full_ms
    keep = model.widths(budget)
    assert _true_ms(model, keep) <= budget
    uniform = None
    for r in np.linspace(0.0, 0.99, 100):  # the smallest uniform ratio that fits the budget
        k = {gid: keep_count(cg.group(gid).size, r) for gid in model.groups}
        if _true_ms(model, k) <= budget:
            uniform = k
            break
    assert uniform is not None
    assert _importance(scores, keep) > _importance(scores, uniform)
    removed = removed_for(cg, scores, keep)
    for gid, units in removed.items():  # the lowest-scored units go
        assert max(scores[gid][units]) <= min(np.delete(scores[gid], units))


def test_second_model_build_measures_nothing(cache):
    torch.manual_seed(0)
    model, x = ThreeConvs().eval(), torch.randn(1, 3, 16, 16)
    cg = fxprune.analyze(model, x, warn=False)
    scores = {g.id: np.ones(g.size) for g in cg.groups}
    tables = []
    for _ in range(2):  # the second table loads what the first saved
        tables.append(LatencyTable("onnxruntime", 1, 1, repeats=2))
        build_model(cg, scores, tables[-1], points=3)
        tables[-1].close()
    assert tables[0].measured > 0 and tables[1].measured == 0


# --------------------------------------------------------------- end to end
def test_target_latency_end_to_end_on_onnxruntime(cache, monkeypatch):
    monkeypatch.setattr(latency_select, "MIN_SECONDS", 0.3)
    torch.manual_seed(0)
    model, x = ThreeConvs().eval(), torch.randn(1, 3, 32, 32)
    res = fxprune.prune(model, x, target_latency=0.5, backend="onnxruntime", threads=1)
    s = res.plan.settings
    assert s["target_latency"] == 0.5 and s["backend"] == "onnxruntime"
    assert 0.2 <= s["achieved_latency"] <= 0.8  # loose: a unit test on a busy machine
    assert fxprune.count(res.module, x).macs < fxprune.count(model, x).macs
    assert res.module(x).shape == model(x).shape
    assert fxprune.PruningPlan.from_json(res.plan.to_json()) == res.plan


@pytest.mark.parametrize("kw, needle", [
    (dict(target_latency=0.0), "target_latency"), (dict(target_latency=1.5), "target_latency"),
    (dict(target_latency=-1), "target_latency"),
    (dict(target_latency=0.5, backend="nope"), "backend 'nope'"),
    (dict(target_latency=0.5, batch_size=0), "batch_size"),
    (dict(target_latency=0.5, latency_objective="flops"), "latency_objective"),
])
def test_bad_latency_arguments_are_named(kw, needle):
    with pytest.raises(LatencyTargetError, match=needle) as e:
        fxprune.prune(ThreeConvs().eval(), torch.randn(1, 3, 8, 8), **kw)
    assert isinstance(e.value, FxPruneError)


def test_cli_inspect_latency(cache, capsys):
    from fxprune import cli

    assert cli.main(["inspect", "cifar:resnet20", "--latency", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "rest of the model" in text and "alignment" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is absent")
@pytest.mark.parametrize("backend", ["torch-cuda", "tensorrt"])
def test_absent_gpu_backends_say_why(backend):
    with pytest.raises(LatencyTargetError, match="cannot run here"):
        fxprune.prune(ThreeConvs().eval(), torch.randn(1, 3, 8, 8), target_latency=0.5,
                      backend=backend)


def _staircase(floor: float, step: float):
    """A measured fraction: a fixed part plus the modelled part, in steps of ``step``."""
    return lambda b: floor + (1 - floor) * np.floor(b / step) * step


@pytest.mark.parametrize("floor", [0.0, 0.15, 0.3])
@pytest.mark.parametrize("target", [0.7, 0.5, 0.35])
def test_budget_search_lands_within_tolerance_on_a_step_function(floor, target):
    measure = _staircase(floor, 0.01)
    start = 0.9 * target  # the tables' guess, off by the fixed part they miss
    points = search_budget(measure, target, start, floor=0.0, tol=0.03, max_iters=8)
    b, f = pick_budget(points, target, 0.03)
    assert abs(f / target - 1) <= 0.03 and f == measure(b)
    assert len(points) <= 8


def test_budget_search_stops_when_the_bracket_is_one_step():
    measure = _staircase(0.0, 0.2)  # only 0, .2, .4, ...: 0.5 lies between two steps
    points = search_budget(measure, 0.5, 0.45, tol=0.01, max_iters=20)
    assert len(points) < 20  # it notices the bracket cannot close further
    b, f = pick_budget(points, 0.5, 0.01)
    assert f == pytest.approx(0.4)  # the target is a ceiling: the step under it


def test_budget_search_reports_the_floor_when_the_target_is_out_of_reach():
    measure = lambda b: 0.4 + 0.6 * b  # noqa: E731  nothing gets under 0.4
    points = search_budget(measure, 0.3, 0.5, tol=0.03, max_iters=8)
    b, f = pick_budget(points, 0.3, 0.03)
    assert f == min(p[1] for p in points) and f < 0.45


def test_export_frontend_graph_has_the_same_timed_layers_as_fx():
    """The exported graph calls aten.conv2d/aten.linear on parameters, not modules: its
    timed layers (specs, prunable axes and their groups' sizes) are fx's."""
    from fxprune.latency_sites import layer_sites

    model, x = ThreeConvs().eval(), torch.randn(1, 3, 16, 16)

    def sites(frontend):
        cg = fxprune.analyze(model, x, frontend=frontend, warn=False)
        size = {g.id: g.size for g in cg.groups}
        return [(s.name, s.spec, s.macs, [(a.name, size[a.group]) for a in s.axes])
                for s in layer_sites(cg)]

    exported = sites("export")
    assert len(exported) == 4 and exported == sites("fx")
