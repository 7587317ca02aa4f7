"""Speed-up report: the MACs ratio (the ideal) against measured latency ratios.

    rep = fxprune.bench.speedup(model, res, (x,), backends=("torch-cpu", "onnxruntime"))
    rep.print()                      # rich table: ideal vs measured, per backend and batch
    rep.rows[0].efficiency           # measured speed-up / MACs speed-up (1.0 = ideal)

Speed-ups are ``original / pruned``: a MACs speed-up of 2.0 means the pruned model
does half the multiply-accumulates. For each backend and batch size the original
and pruned modules are timed interleaved (see ``time_runners``) so machine drift
cancels out of the ratio.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .backends import BackendUnavailable, get_backend
from .latency import BatchStats, eval_mode, time_runners, with_batch

__all__ = ["SpeedupReport", "SpeedupRow", "speedup"]


@dataclass(frozen=True)
class SpeedupRow:
    """One backend at one batch size."""

    backend: str
    batch_size: int
    original_ms: float = float("nan")
    pruned_ms: float = float("nan")
    original_iqr_ms: float = float("nan")
    pruned_iqr_ms: float = float("nan")
    speedup: float = float("nan")  # original_ms / pruned_ms
    efficiency: float = float("nan")  # speedup / macs_speedup
    backend_version: str = ""
    device: str = ""
    threads: int = 0
    skipped: str | None = None


@dataclass
class SpeedupReport:
    """MACs/params of both models and the measured rows."""

    macs_original: int
    macs_pruned: int
    params_original: int
    params_pruned: int
    rows: list[SpeedupRow] = field(default_factory=list)

    @property
    def macs_speedup(self) -> float:
        """The ideal speed-up: original MACs / pruned MACs."""
        return self.macs_original / max(self.macs_pruned, 1)

    def row(self, backend: str, batch_size: int) -> SpeedupRow:
        return next(r for r in self.rows if (r.backend, r.batch_size) == (backend, batch_size))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "macs_speedup": self.macs_speedup}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpeedupReport:
        d = {k: v for k, v in d.items() if k != "macs_speedup"}
        return cls(**{**d, "rows": [SpeedupRow(**r) for r in d.get("rows", [])]})

    def table(self, title: str | None = None) -> Any:
        """A ``rich.table.Table``: per backend/batch, latencies, measured vs ideal."""
        from rich.markup import escape
        from rich.table import Table

        t = Table(title=title or (f"MACs {_human(self.macs_original)} -> "
                                  f"{_human(self.macs_pruned)} (ideal speed-up "
                                  f"{self.macs_speedup:.2f}x), params "
                                  f"{_human(self.params_original)} -> "
                                  f"{_human(self.params_pruned)}"), title_justify="left")
        skips = {r.backend: r.skipped for r in self.rows if r.skipped}
        if skips:
            t.caption = "\n".join(f"{b} skipped: {escape(why)}" for b, why in skips.items())
            t.caption_justify = "left"
        for col in ("backend", "batch", "original ms", "pruned ms", "speed-up", "ideal",
                    "of ideal"):
            t.add_column(col, justify="left" if col == "backend" else "right", no_wrap=True)
        for r in self.rows:
            if r.skipped:
                t.add_row(r.backend, str(r.batch_size), "[dim]skipped[/dim]", "", "", "", "")
                continue
            colour = "green" if r.efficiency >= 0.8 else "yellow" if r.efficiency >= 0.5 else "red"
            t.add_row(r.backend, str(r.batch_size),
                      f"{r.original_ms:.3f}±{r.original_iqr_ms / 2:.3f}",
                      f"{r.pruned_ms:.3f}±{r.pruned_iqr_ms / 2:.3f}",
                      f"{r.speedup:.2f}x", f"{self.macs_speedup:.2f}x",
                      f"[{colour}]{r.efficiency:.0%}[/{colour}]")
        return t

    def print(self, console: Any = None) -> None:
        from rich.console import Console

        (console or Console()).print(self.table())


def _human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def _measure(backend: str, original: nn.Module, pruned: nn.Module,
             inputs: tuple[torch.Tensor, ...], batch_sizes: Sequence[int], macs_speedup: float,
             warmup: int, repeats: int, threads: int | None, min_seconds: float,
             **options: Any) -> list[SpeedupRow]:
    try:
        be = get_backend(backend, threads, **options)
    except BackendUnavailable as e:
        return [SpeedupRow(backend, bs, skipped=str(e)) for bs in batch_sizes]
    rows = []
    try:
        for bs in batch_sizes:
            x = with_batch(inputs, bs)
            try:
                runs = [be.prepare(original, x), be.prepare(pruned, x)]
            except BackendUnavailable as e:
                rows.append(SpeedupRow(backend, bs, skipped=str(e)))
                continue
            a, b = (BatchStats.from_times(bs, t) for t in time_runners(runs, warmup, repeats,
                                                                        min_seconds))
            sp = a.median_ms / b.median_ms
            rows.append(SpeedupRow(backend, bs, a.median_ms, b.median_ms, a.iqr_ms, b.iqr_ms,
                                   sp, sp / macs_speedup, be.version(), be.device(), be.threads))
    finally:
        be.close()
    return rows


def speedup(original: nn.Module, pruned: Any, example_inputs: torch.Tensor | Sequence[torch.Tensor],
            backends: Sequence[str] = ("torch-cpu", "onnxruntime"),
            batch_sizes: Sequence[int] = (1, 32), warmup: int = 10, repeats: int = 50,
            threads: int | None = None, min_seconds: float = 0.0,
            **backend_options: Any) -> SpeedupReport:
    """Compare ``original`` with ``pruned`` (a module or a ``PruneResult``): MACs and
    params with ``fxprune.count`` and latency on every backend and batch size
    (``min_seconds``: see ``time_runners``). Backends that cannot run here become rows
    with ``skipped`` set."""
    import fxprune

    pruned_mod: nn.Module = getattr(pruned, "module", pruned)
    inputs = ((example_inputs,) if isinstance(example_inputs, torch.Tensor)
              else tuple(example_inputs))
    c0, c1 = fxprune.count(original, inputs), fxprune.count(pruned_mod, inputs)
    report = SpeedupReport(int(c0.macs), int(c1.macs), int(c0.params), int(c1.params))
    with eval_mode(original, pruned_mod):
        for name in backends:
            report.rows += _measure(name, original, pruned_mod, inputs, batch_sizes,
                                    report.macs_speedup, warmup, repeats, threads,
                                    min_seconds, **backend_options)
    return report
