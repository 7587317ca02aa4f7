"""Latency stage: original vs pruned variants, per timing mode, dtype and batch size.

One *group* is (model, mode, dtype, batch): the original and every pruned variant are
prepared on the backend and timed interleaved (``fxprune.bench.time_runners``: a, b, c,
a, b, c ...), so drift of the machine cancels out of the speed-ups. Modes:

- ``graphs``: ``torch-cuda`` with ``cuda_graphs=True`` (capture after a side-stream
  warm-up, each timed run a replay, CUDA events);
- ``eager``: ``torch-cuda`` with ``cuda_graphs=False`` (CUDA events around the forward);
- ``compile``: ``torch.compile``, measured in a time-boxed child (``compile_worker``).

Groups run in priority order (fp16 before fp32, graphs before eager, batch 64 before 1),
so the rows the target is stated for come first if the budget runs out. On a machine
without CUDA (the dry run) ``torch-cpu`` stands in: fp32 eager only, every CUDA-only
combination becomes a row with the reason it was skipped. ONNX Runtime's CUDA provider
and TensorRT are measured when present, and otherwise say so in one line.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxprune.bench import BatchStats, get_backend, time_runners, with_batch

from . import zoo
from .budget import CHILD_GROUPS
from .env import ort_cuda_line, tensorrt_line

__all__ = ["LatencySettings", "DTYPES", "run_latency", "run_compile", "measure_group"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_HERE = Path(__file__).resolve().parent


@dataclass
class LatencySettings:
    backend: str = "torch-cuda"
    models: list = field(default_factory=lambda: [list(m) for m in zoo.FULL_MODELS])
    ratios: list = field(default_factory=lambda: [0.3, 0.5, 0.7])
    round_to: int = 8
    extra_round_to: list = field(default_factory=lambda: [1])
    modes: list = field(default_factory=lambda: ["graphs", "eager"])
    dtypes: list = field(default_factory=lambda: ["fp16", "fp32"])
    batches: list = field(default_factory=lambda: [64, 1])
    warmup: int = 5
    repeats: int = 20
    min_seconds: float = 1.0
    max_repeats: int = 200
    min_group_s: float = 6.0     # do not start a group with less than this left
    compile_backend: str = "inductor"
    compile_dtype: str = "fp16"
    compile_batch: int = 64
    compile_variants: list = field(default_factory=lambda: ["original", "r0.5"])
    compile_models: list | None = None  # None: every model that pruned

    def to_dict(self) -> dict:
        return asdict(self)


def _skip_reason(backend: str, mode: str, dtype: str) -> str | None:
    """Why (backend, mode, dtype) cannot run, or None."""
    if backend == "torch-cuda" and not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if backend == "torch-cpu" and mode == "graphs":
        return "CUDA graphs need CUDA (torch-cpu stands in for torch-cuda in the dry run)"
    if backend == "torch-cpu" and dtype != "fp32":
        return f"{dtype} is timed on CUDA only (torch-cpu runs fp32)"
    return None


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _row(model: str, backend: str, mode: str, dtype: str, batch: int, **kw: Any) -> dict:
    return {"model": model, "backend": backend, "mode": mode, "dtype": dtype, "batch": batch,
            "variants": {}, "skipped": None, "error": None, **kw}


def stats_to_variants(names: list[str], macs: dict[str, int],
                      times: list[list[float]], batch: int) -> dict[str, dict]:
    """Per-variant median/IQR and speed-up over the original (first) entry."""
    stats = [BatchStats.from_times(batch, t) for t in times]
    base = stats[0].median_ms
    out = {}
    for name, s in zip(names, stats):
        sp = base / s.median_ms if s.median_ms > 0 else float("nan")
        msp = macs["original"] / max(macs[name], 1)
        out[name] = {"median_ms": s.median_ms, "iqr_ms": s.iqr_ms, "min_ms": s.min_ms,
                     "repeats": s.repeats, "speedup": sp, "macs_speedup": msp,
                     "efficiency": sp / msp}
    return out


def measure_group(backend: str, mode: str, dtype: str, batch: int,
                  variants: list[tuple[zoo.Variant, nn.Module]], x: torch.Tensor,
                  s: LatencySettings) -> dict:
    """Time every variant of one model in one (mode, dtype, batch); returns the row body."""
    opts: dict[str, Any] = {}
    if backend == "torch-cuda":
        opts = {"dtype": DTYPES[dtype], "cuda_graphs": mode == "graphs"}
    be = get_backend(backend, **opts)
    runners = []
    try:
        inputs = with_batch((x,), batch)
        runners = [be.prepare(m, inputs) for _, m in variants]
        times = time_runners(runners, s.warmup, s.repeats, s.min_seconds, s.max_repeats)
        names = [v.name for v, _ in variants]
        return {"device": be.device(), "backend_version": be.version(),
                "variants": stats_to_variants(names, {v.name: v.macs for v, _ in variants},
                                              times, batch)}
    finally:
        del runners
        be.close()
        _release_after_error()


def _groups(s: LatencySettings) -> list[tuple[str, str, int, str, int]]:
    """(dtype, mode, batch, model, side) in priority order: the target's rows first."""
    return [(d, m, b, name, side) for d in s.dtypes for m in s.modes for b in s.batches
            for name, side in s.models]


def run_latency(results, budget, s: LatencySettings, stop_at_s: float, log=print) -> dict:
    """Prune every model, then time the groups until ``stop_at_s`` (seconds from the
    budget's start); results go to ``results.doc["latency"]`` after every group."""
    doc = results.doc.setdefault("latency", {"settings": s.to_dict(), "models": [], "rows": []})
    pruned: dict[str, tuple[torch.Tensor, list]] = {}
    specs = zoo.variant_specs(s.ratios, s.round_to, s.extra_round_to)
    for name, side in s.models:
        if budget.until(stop_at_s) <= s.min_group_s:
            doc["models"].append({"model": name, "skipped": "time budget spent before pruning"})
            continue
        log(f"latency: pruning {name} at {side}x{side} on the CPU")
        try:
            x = zoo.input_for(side)
            pruned[name] = (x, zoo.prune_variants(zoo.build_model(name), x, specs, log))
            doc["models"].append({"model": name, "input": [1, 3, side, side],
                                  "variants": [v.to_dict() for v, _ in pruned[name][1]]})
        except Exception as e:  # record and go on: one model must not end the run
            doc["models"].append({"model": name, "error": _err(e)})
            log(f"latency: {name} failed to prune: {_err(e)}")
        results.save()
    for dtype, mode, batch, name, _side in _groups(s):
        if name not in pruned:
            continue
        row = _row(name, s.backend, mode, dtype, batch)
        why = _skip_reason(s.backend, mode, dtype)
        if why is None and budget.until(stop_at_s) <= s.min_group_s:
            why = "time budget of the latency stage spent"
        if why:
            row["skipped"] = why
        else:
            t0 = time.perf_counter()
            try:
                x, variants = pruned[name]
                row.update(measure_group(s.backend, mode, dtype, batch, variants, x, s))
            except Exception as e:
                row["error"] = _err(e)
                _release_after_error()
            row["wall_s"] = time.perf_counter() - t0
            log(f"latency: {name} {mode} {dtype} batch {batch}: {_brief(row)}")
        doc["rows"].append(row)
        results.save()
    _optional_backends(results, budget, s, pruned, stop_at_s, log)
    return doc


def _optional_backends(results, budget, s: LatencySettings, pruned: dict, stop_at_s: float,
                       log) -> None:
    """ONNX Runtime CUDA (fp32) and TensorRT (fp16 allowed), original and r0.5, when present.
    In the dry run (``torch-cpu``) ONNX Runtime's CPU provider stands in for the CUDA one
    on the first model at the smallest batch, so this path runs too."""
    doc = results.doc["latency"]
    lines = {"onnxruntime-cuda": ort_cuda_line(), "tensorrt": tensorrt_line()}
    doc["optional_backends"] = lines
    jobs: list[tuple[str, str, list, list]] = []  # (backend, dtype, models, batches)
    if "with CUDAExecutionProvider" in lines["onnxruntime-cuda"]:
        jobs.append(("onnxruntime-cuda", "fp32", list(pruned), s.batches))
    if lines["tensorrt"].startswith("TensorRT ") and "not measured" not in lines["tensorrt"]:
        jobs.append(("tensorrt", "fp16", list(pruned), s.batches))
    if s.backend == "torch-cpu" and pruned:
        lines["onnxruntime"] = "dry run: the CPU provider stands in for onnxruntime-cuda"
        jobs.append(("onnxruntime", "fp32", list(pruned)[:1], [min(s.batches)]))
    for backend, line in lines.items():
        log(f"latency: {backend}: {line}")
    for backend, dtype, models, batches in jobs:
        for name in models:
            x, variants = pruned[name]
            keep = [(v, m) for v, m in variants if v.name in ("original", "r0.5")]
            for batch in batches:
                row = _row(name, backend, "runtime", dtype, batch)
                if budget.until(stop_at_s) <= 3 * s.min_group_s:
                    row["skipped"] = "time budget of the latency stage spent"
                else:
                    try:
                        row.update(_measure_runtime(backend, keep, x, batch, s))
                    except Exception as e:
                        row["error"] = _err(e)
                        _release_after_error()
                log(f"latency: {name} {backend} batch {batch}: "
                    + (row["skipped"] or _brief(row)))
                doc["rows"].append(row)
                results.save()


def _measure_runtime(backend: str, variants: list, x: torch.Tensor, batch: int,
                     s: LatencySettings) -> dict:
    be = get_backend(backend)
    try:
        runners = [be.prepare(m, with_batch((x,), batch)) for _, m in variants]
        times = time_runners(runners, s.warmup, s.repeats, s.min_seconds, s.max_repeats)
        return {"device": be.device(), "backend_version": be.version(),
                "variants": stats_to_variants([v.name for v, _ in variants],
                                              {v.name: v.macs for v, _ in variants},
                                              times, batch)}
    finally:
        be.close()
        _release_after_error()


def _release_after_error() -> None:
    """``_release`` that never raises (after a sticky CUDA error the synchronize fails
    too, and must not hide the error being recorded)."""
    try:
        _release()
    except Exception:
        pass


def _err(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:500]


def _brief(row: dict) -> str:
    if row.get("error"):
        return "error " + row["error"]
    parts = [f"orig {row['variants']['original']['median_ms']:.3f} ms"]
    parts += [f"{k} {v['speedup']:.2f}x/{v['macs_speedup']:.2f}x"
              for k, v in row["variants"].items() if k != "original"]
    return ", ".join(parts)


# --------------------------------------------------------------------------- torch.compile

def run_compile(results, budget, s: LatencySettings, box_s: float, work: Path,
                log=print) -> None:
    """Time ``torch.compile`` (``s.compile_backend``) of the original and the listed
    variants of every model in a child process killed after ``box_s`` seconds; rows of
    jobs that did not finish say so."""
    doc = results.doc.setdefault("latency", {"settings": s.to_dict(), "models": [], "rows": []})
    models = [m for m in s.models if any(d.get("model") == m[0] and "variants" in d
                                         for d in doc["models"])
              and (s.compile_models is None or m[0] in s.compile_models)]
    models.sort(key=lambda m: m[0] not in zoo.RESNETS)  # the target's models first
    jobs = [{"model": name, "side": side, "variants": s.compile_variants,
             "ratios": s.ratios, "round_to": s.round_to, "extra_round_to": s.extra_round_to,
             "dtype": s.compile_dtype, "batch": s.compile_batch, "backend": s.compile_backend,
             "warmup": s.warmup, "repeats": s.repeats, "min_seconds": s.min_seconds,
             "max_repeats": s.max_repeats} for name, side in models]
    work.mkdir(parents=True, exist_ok=True)
    spec, out = work / "compile_spec.json", work / "compile_rows.json"
    spec.write_text(json.dumps({"jobs": jobs}))
    out.unlink(missing_ok=True)
    box = min(box_s, budget.left())
    log(f"compile: {len(jobs)} jobs ({s.compile_backend}, {s.compile_dtype}, batch "
        f"{s.compile_batch}) in a child process, time box {box:.0f}s")
    status = _run_child([sys.executable, str(_HERE / "compile_worker.py"), str(spec), str(out)],
                        box)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {r["model"] for r in rows}
    for job in jobs:
        if job["model"] not in done:
            rows.append(_row(job["model"], "torch-compile", "compile", job["dtype"], job["batch"],
                             skipped=f"compile child {status} before this job finished"))
    doc["rows"] += rows
    doc["compile_status"] = status
    results.save()
    log(f"compile: {status}")


def _run_child(cmd: list[str], timeout_s: float) -> str:
    """Run ``cmd`` in its own process group; kill the whole group after ``timeout_s``
    (inductor's compile workers included). Returns what happened, in words."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if timeout_s < 1:
        return "not started (no time left)"
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    CHILD_GROUPS.add(proc.pid)
    try:
        rc = proc.wait(timeout=timeout_s)
        return "finished" if rc == 0 else f"exited with code {rc}"
    except subprocess.TimeoutExpired:
        return f"stopped by its time box ({timeout_s:.0f}s)"
    finally:
        try:  # the whole group: inductor's compile workers too
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
        CHILD_GROUPS.discard(proc.pid)
