"""The latency harness: warm up, time repeated runs, report median and IQR.

    rep = fxprune.bench.latency(module, (x,), backend="onnxruntime", batch_sizes=(1, 32))
    rep[32].median_ms, rep[32].iqr_ms         # per batch size, milliseconds
    print(rep.to_json())                       # backend version, device, threads too

The example input's batch dimension (dim 0) is replaced by each batch size, by
repeating the example rows, so the data stays realistic. The module is run in eval
mode and its training flag is restored afterwards. Where the backend cannot run here
(no GPU, TensorRT missing), the report is a skip carrying the reason, unless
``skip_unavailable=False``, in which case ``BackendUnavailable`` propagates.
"""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .backends import Backend, BackendUnavailable, Runner, get_backend

__all__ = ["BatchStats", "LatencyReport", "latency", "time_runners", "with_batch", "eval_mode"]


@dataclass(frozen=True)
class BatchStats:
    """Timing statistics of one batch size, in milliseconds."""

    batch_size: int
    median_ms: float
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    min_ms: float
    mean_ms: float
    repeats: int
    throughput: float  # samples per second at the median latency

    @classmethod
    def from_times(cls, batch_size: int, times_ms: Sequence[float]) -> BatchStats:
        t = np.asarray(times_ms, dtype=np.float64)
        q1, med, q3 = (float(v) for v in np.percentile(t, [25, 50, 75]))
        return cls(batch_size, med, q1, q3, q3 - q1, float(t.min()), float(t.mean()),
                   len(t), batch_size * 1e3 / med if med > 0 else float("inf"))


@dataclass
class LatencyReport:
    """Latency of one module on one backend, per batch size (``report[bs]``)."""

    backend: str
    backend_version: str = ""
    device: str = ""
    threads: int = 0
    warmup: int = 0
    repeats: int = 0
    stats: dict[int, BatchStats] = field(default_factory=dict)
    skipped: str | None = None  # why the backend did not run, if it did not

    def __getitem__(self, batch_size: int) -> BatchStats:
        return self.stats[batch_size]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stats"] = {str(k): v for k, v in d["stats"].items()}
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyReport:
        stats = {int(k): BatchStats(**v) for k, v in d.get("stats", {}).items()}
        return cls(**{**d, "stats": stats})

    def table(self, title: str | None = None) -> Any:
        """A ``rich.table.Table`` of the statistics."""
        from rich.markup import escape
        from rich.table import Table

        if self.skipped:
            title = title or f"{self.backend}: skipped ({escape(self.skipped)})"
        t = Table(title=title or f"{self.backend} {self.backend_version} on {self.device}, "
                                 f"{self.threads} threads", title_justify="left")
        for col in ("batch", "median ms", "IQR ms", "min ms", "samples/s", "runs"):
            t.add_column(col, justify="right")
        for bs, s in sorted(self.stats.items()):
            t.add_row(str(bs), f"{s.median_ms:.3f}", f"{s.iqr_ms:.3f}", f"{s.min_ms:.3f}",
                      f"{s.throughput:,.1f}", str(s.repeats))
        return t


def with_batch(inputs: Sequence[torch.Tensor], batch_size: int) -> tuple[torch.Tensor, ...]:
    """``inputs`` with dim 0 replaced by ``batch_size``, repeating the example rows."""
    out = []
    for t in inputs:
        if t.dim() == 0:
            raise ValueError("example inputs need a batch dimension (dim 0)")
        out.append(t[torch.arange(batch_size) % t.shape[0]].contiguous())
    return tuple(out)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode, restoring each one's training flags afterwards."""
    flags = [[m.training for m in mod.modules()] for mod in modules]
    for mod in modules:
        mod.eval()
    try:
        yield
    finally:
        for mod, fl in zip(modules, flags):
            for m, f in zip(mod.modules(), fl):
                m.training = f


def time_runners(runners: Sequence[Runner], warmup: int, repeats: int,
                 min_seconds: float = 0.0, max_repeats: int | None = None) -> list[list[float]]:
    """Warm every runner up, then time them *interleaved* (a, b, a, b…) so slow drift of
    the machine (thermal, other load) hits all of them alike: at least ``repeats`` rounds,
    and more until ``min_seconds`` have passed (fast models get more samples; at most
    ``max_repeats`` rounds, default 20 × ``repeats``)."""
    for _ in range(warmup):
        for run in runners:
            run()
    times: list[list[float]] = [[] for _ in runners]
    cap = max(max_repeats or 20 * repeats, repeats)
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or (rounds < cap and time.perf_counter() - start < min_seconds):
        for run, acc in zip(runners, times):
            acc.append(run())
        rounds += 1
    return times


def _resolve(backend: str | Backend, threads: int | None, options: dict) -> Backend:
    return backend if isinstance(backend, Backend) else get_backend(backend, threads, **options)


def latency(module: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
            backend: str | Backend = "torch-cpu", batch_sizes: Sequence[int] = (1, 32),
            warmup: int = 10, repeats: int = 50, threads: int | None = None,
            skip_unavailable: bool = True, progress: Callable[[str], None] | None = None,
            min_seconds: float = 0.0, **backend_options: Any) -> LatencyReport:
    """Time ``module`` on ``backend`` at each batch size; see the module docstring.

    ``backend`` is a name (``fxprune.bench.backends.BACKENDS``) or a ``Backend``;
    ``threads`` defaults to torch's intra-op thread count; ``backend_options`` go to
    the backend (``cuda_graphs``, ``fp16``, ``timing_cache`` …). ``progress`` is
    called with a short description before each batch size. ``min_seconds`` keeps
    timing past ``repeats`` until that much time has passed (see ``time_runners``).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    inputs = ((example_inputs,) if isinstance(example_inputs, torch.Tensor)
              else tuple(example_inputs))
    name = backend if isinstance(backend, str) else backend.name
    try:
        be = _resolve(backend, threads, backend_options)
    except BackendUnavailable as e:
        if not skip_unavailable:
            raise
        return LatencyReport(name, skipped=str(e), warmup=warmup, repeats=repeats)
    report = LatencyReport(name, be.version(), be.device(), be.threads, warmup, repeats)
    try:
        with eval_mode(module):
            for bs in batch_sizes:
                if progress:
                    progress(f"{name} batch {bs}")
                run = be.prepare(module, with_batch(inputs, bs))
                (times,) = time_runners([run], warmup, repeats, min_seconds)
                report.stats[bs] = BatchStats.from_times(bs, times)
    except BackendUnavailable as e:
        if not skip_unavailable:
            raise
        report.skipped = str(e)
    finally:
        if isinstance(backend, str):
            be.close()
    return report
