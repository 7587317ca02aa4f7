"""Measure fxprune (and Torch-Pruning) on one suite entry; run as a subprocess by
``bench/realworld.py``.

    python bench/realworld_worker.py timm/resnet18d --out /tmp/r.json [--skip-tp] [--frontend auto]

Stages: build, prune (ratio 0.5, head ignored; on failure the analysis alone,
for the groups and barrier reasons), count, run (output structure kept),
dead-channel equivalence (``dead_channel_plan`` + ``verify`` on the exact
groups), Torch-Pruning 1.6 (MetaPruner, MagnitudeImportance, same ratio and
head; stopped after ``--tp-timeout`` seconds, since it loops on some models). A failing stage records its error and later stages run where they can;
the record is rewritten atomically after every stage, so a worker killed by
the timeout still leaves what it measured. A detector whose whole model does
not prune is retried on its backbone+FPN, and the record says which was pruned.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import re
import resource
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's fxprune
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fxprune  # noqa: E402
from realworld_models import Built, entry  # noqa: E402

__all__ = ["measure", "frontend_kwargs", "output_structure", "count_both", "graph_summary", "main"]

RATIO = 0.5


def frontend_kwargs(frontend: str | None) -> dict[str, str]:
    """``{"frontend": ...}`` when the installed fxprune takes it, else nothing (fx only)."""
    if frontend and "frontend" in inspect.signature(fxprune.prune).parameters:
        return {"frontend": frontend}
    return {}


def frontend_used(cg: Any, asked: dict[str, str]) -> str:
    """The frontend the analysis ran on, as the ChannelGraph/Traced says, else what was asked."""
    for obj in (cg, getattr(cg, "traced", None)):
        for attr in ("frontend", "frontend_used"):
            value = getattr(obj, attr, None)
            if isinstance(value, str):
                return value
    return asked.get("frontend", "fx")


def frontend_reason(cg: Any) -> str:
    """Why ``auto`` picked that frontend, where the analysis says."""
    return str(getattr(cg, "frontend_reason", "") or "")[:300]


def error_record(e: BaseException) -> dict[str, str]:
    """Exception class + first line of its message, and the traceback's tail."""
    message = "".join(traceback.format_exception_only(type(e), e)).strip()
    return {"error": message.splitlines()[0][:300] if message else type(e).__name__,
            "type": type(e).__name__, "message": message[:3000],
            "traceback": "".join(traceback.format_exception(e))[-3000:]}


def output_structure(y: Any) -> list[tuple[str, ...]]:
    """Shapes and dtypes of the output's tensor leaves, in order."""
    leaves, _ = tree_flatten(y)
    return [(str(tuple(t.shape)), str(t.dtype)) for t in leaves if isinstance(t, torch.Tensor)]


def model_kind(model: nn.Module) -> str:
    """'transformer' when a channel-mixing norm or attention sits in the model, else 'cnn'."""
    for m in model.modules():
        name = type(m).__name__
        if isinstance(m, (nn.LayerNorm, nn.MultiheadAttention)) or "Attention" in name \
                or name.endswith(("LayerNorm", "RMSNorm")):
            return "transformer"
    return "cnn"


def _reinit_zero_weights(model: nn.Module) -> None:
    """Zero-initialised heads (ViT) make every output 0 and the oracle proves nothing."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and p.is_floating_point() and not p.any():
                p.normal_(0, 0.02)


class Recorder:
    """The result record, rewritten atomically to ``path`` after every stage."""

    def __init__(self, path: Path, rec: dict[str, Any]):
        self.path, self.rec = path, rec
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.part")
        tmp.write_text(json.dumps(self.rec, indent=1, default=str))
        os.replace(tmp, self.path)

    def stage(self, name: str, fn: Callable[[], dict[str, Any]]) -> bool:
        self.rec["stage"] = name
        self.save()
        try:
            self.rec.update(fn())
            ok = True
        except Exception as e:  # a benchmark records every failure and moves on
            self.rec.setdefault("errors", {})[name] = error_record(e)
            ok = False
        self.save()
        return ok


_NUM = re.compile(r"\d+")


def graph_summary(cg: Any) -> dict[str, Any]:
    """Groups, frozen groups, and the most common reasons barriers froze them."""
    reasons = Counter()
    for f in cg.frozen:
        for why in {_NUM.sub("N", r.reason) for r in f.reasons if r.kind == "barrier"}:
            reasons[why] += 1
    return {"nodes": len(cg.gm.graph.nodes), "groups": len(cg.groups),
            "mixing_groups": sum(bool(g.mixing) for g in cg.groups),
            "units": sum(g.size for g in cg.groups), "frozen": len(cg.frozen),
            "barrier_frozen": sum(f.barrier for f in cg.frozen),
            "barrier_reasons": reasons.most_common(5)}


def _macs(module: nn.Module, inputs: tuple) -> tuple[int, str]:
    """MACs by fxprune.count; where it cannot trace the module, torch's FLOP counter / 2."""
    try:
        return int(fxprune.count(module, inputs).macs), "fxprune.count"
    except Exception:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(*inputs)
        return int(counter.get_total_flops() // 2), "flop_counter"


def count_both(model: nn.Module, pruned: nn.Module, inputs: tuple) -> dict[str, Any]:
    """MACs and params before/after, counted the same way for both."""
    macs_b, how_b = _macs(model, inputs)
    macs_a, how_a = _macs(pruned, inputs)
    if how_a != how_b:  # one method for both, so that the ratio means something
        from torch.utils.flop_counter import FlopCounterMode

        def flops(m: nn.Module) -> int:
            c = FlopCounterMode(display=False)
            with torch.no_grad(), c:
                m(*inputs)
            return int(c.get_total_flops() // 2)
        macs_b, macs_a, how_b = flops(model), flops(pruned), "flop_counter"
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"macs_before": macs_b, "macs_after": macs_a, "macs_method": how_b,
            "params_before": params(model), "params_after": params(pruned),
            "macs_removed": 1 - macs_a / macs_b if macs_b else 0.0}


def _runs(model: nn.Module, pruned: nn.Module, inputs: tuple) -> dict[str, Any]:
    with torch.no_grad():
        want, got = output_structure(model(*inputs)), output_structure(pruned(*inputs))
    if want != got:
        raise AssertionError(f"pruned output {got[:4]} != original {want[:4]}")
    return {"runs": True, "outputs": len(want)}


def _equiv(model: nn.Module, b: Built, kw: dict) -> dict[str, Any]:
    res = fxprune.dead_channel_plan(model, b.inputs, fraction=0.5, seed=0, ignore=b.head, **kw)
    exact = sum(1 for units in res.plan.removed.values() if units)
    diff = float(fxprune.verify(model, res, b.inputs))
    return {"equiv_diff": diff, "equiv_groups": exact, "equiv_pass": bool(exact) and diff < 1e-5}


class TorchPruningTimeout(Exception):
    """Torch-Pruning's own stage ran past ``--tp-timeout`` (it loops on some models)."""


def _tp_limited(model: nn.Module, b: Built, seconds: float) -> dict[str, Any]:
    """``_tp`` under a SIGALRM time limit, so a model on which Torch-Pruning does not finish
    costs ``seconds``, not the whole worker's timeout; fxprune's stages are done by then."""
    def expire(*_: Any) -> None:
        raise TorchPruningTimeout(f"Torch-Pruning did not finish within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return _tp(model, b)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _tp(model: nn.Module, b: Built) -> dict[str, Any]:
    import torch_pruning as tp

    m = copy.deepcopy(model)
    ignored = [m.get_submodule(n) for n in b.head]
    inputs = b.inputs if len(b.inputs) > 1 or not isinstance(b.inputs[0], torch.Tensor) \
        else b.inputs[0]
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(m, inputs, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=RATIO, ignored_layers=ignored)
    pruner.step()
    out = {"tp_s": time.perf_counter() - t0,
           "tp_params_ratio": sum(p.numel() for p in m.parameters())
           / sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        out["tp_runs"] = output_structure(m(*b.inputs)) == output_structure(model(*b.inputs))
    return out


def _prune_stages(r: Recorder, b: Built, kw: dict, state: dict) -> bool:
    def prune() -> dict:
        t0 = time.perf_counter()
        res = fxprune.prune(b.model, b.inputs, ratio=RATIO, criterion="l1", ignore=b.head, **kw)
        state["res"] = res
        return {"prune_s": time.perf_counter() - t0, "frontend_used": frontend_used(res.graph, kw),
                "frontend_reason": frontend_reason(res.graph), **graph_summary(res.graph)}

    def analyze() -> dict:  # the prune failed: what the analysis alone sees
        cg = fxprune.analyze(b.model, b.inputs, ignore=b.head, warn=False, **kw)
        return {"frontend_used": frontend_used(cg, kw), "frontend_reason": frontend_reason(cg),
                **graph_summary(cg)}

    if r.stage("prune", prune):
        return True
    r.stage("analyze", analyze)
    return False


def measure(name: str, out: Path, skip_tp: bool = False, frontend: str | None = "auto",
            tp_timeout: float = 60.0, tp_only: bool = False) -> dict:
    """Run every stage on suite entry ``name``; the record is also kept in ``out``."""
    e = entry(name)
    kw = frontend_kwargs(frontend)
    r = Recorder(out, {"model": name, "family": e.family, "frontend_asked": kw.get("frontend"),
                       "threads": torch.get_num_threads()})
    state: dict[str, Any] = {}

    def setup(builder: Callable[[], Built]) -> Callable[[], dict]:
        def run() -> dict:
            b = builder()
            _reinit_zero_weights(b.model)
            state["b"] = b
            return {"scope": b.scope, "head": b.head, "kind": model_kind(b.model),
                    "input": [list(t.shape) for t in tree_flatten(b.inputs)[0]]}
        return run

    r.rec["tp_only"] = tp_only
    if not r.stage("build", setup(e.build)):
        return _done(r)
    if tp_only:  # Torch-Pruning's columns alone (realworld.py --tp-only merges them)
        r.stage("tp", lambda: _tp_limited(state["b"].model, state["b"], tp_timeout))
        return _done(r)
    pruned = _prune_stages(r, state["b"], kw, state)
    if not pruned and e.fallback is not None:  # detectors: the backbone+FPN instead
        r.rec["whole_model_errors"] = r.rec.pop("errors")
        if r.stage("build", setup(e.fallback)):
            pruned = _prune_stages(r, state["b"], kw, state)
    b = state.get("b")
    if pruned:
        pm = state["res"].module
        r.stage("count", lambda: count_both(b.model, pm, b.inputs))
        r.rec["ok"] = r.stage("run", lambda: _runs(b.model, pm, b.inputs))
        state.pop("res")
        r.stage("equiv", lambda: _equiv(b.model, b, kw))
    else:
        r.rec["ok"] = False
    if not skip_tp and b is not None:
        r.stage("tp", lambda: _tp_limited(b.model, b, tp_timeout))
    return _done(r)


def _done(r: Recorder) -> dict:
    r.rec["stage"] = "done"
    r.save()
    return r.rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--out", type=Path, required=True, help="JSON record to write")
    p.add_argument("--frontend", default="auto", help="fx | export | auto (when fxprune has it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    p.add_argument("--max-mem-gb", type=float, default=0, help="address-space limit (0: none)")
    p.add_argument("--skip-tp", action="store_true")
    p.add_argument("--tp-timeout", type=float, default=60.0, help="seconds for Torch-Pruning")
    p.add_argument("--tp-only", action="store_true", help="build, then Torch-Pruning only")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.max_mem_gb:
        lim = int(a.max_mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    torch.manual_seed(0)
    measure(a.model, a.out, a.skip_tp, a.frontend, a.tp_timeout, a.tp_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
