"""Where a model's time goes on a backend, layer by layer (``fxprune inspect --latency``).

    rep = latency_report(cg, (x,), backend="onnxruntime", batch_size=1, threads=1)
    rep.table()          # rich table: layer, kind, widths, ms, share, group of each width
    rep.alignment        # {"conv.out": 16, "depthwise.ch": 4, ...} read off the tables

The per-layer figures come from the same cached tables ``target_latency`` uses; the
whole model is measured too, and what the timed layers do not explain (pooling,
additions, per-node overhead, fusion gains) is shown as the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bench.latency import time_runners, with_batch
from .channel_graph import ChannelGraph
from .latency_select import _as_inputs, _probe_alignments, check_latency_args
from .latency_sites import Site, layer_sites
from .latency_table import LatencyTable

__all__ = ["LatencyBreakdown", "latency_report"]


@dataclass
class LatencyBreakdown:
    backend: str
    batch_size: int
    threads: int
    model_ms: float
    sites: list[Site] = field(default_factory=list)
    site_ms: list[float] = field(default_factory=list)
    alignment: dict[str, int] = field(default_factory=dict)
    measured: int = 0  # table entries measured now (0: all from the cache)

    def table(self, top: int | None = None) -> Any:
        from rich.markup import escape
        from rich.table import Table

        timed = sum(self.site_ms)
        t = Table(title=f"{self.backend}, batch {self.batch_size}, {self.threads} thread(s): "
                        f"model {self.model_ms:.3f} ms, timed layers {timed:.3f} ms "
                        f"({self.measured} new measurements)", title_justify="left")
        for col in ("layer", "kind", "widths", "ms", "share", "prunable"):
            t.add_column(col, justify="right" if col in ("ms", "share") else "left")
        order = np.argsort(self.site_ms)[::-1][:top]
        for i in order:
            s = self.sites[i]
            widths = " ".join(f"{a}={w}" for a, w in s.spec.axes)
            groups = ",".join(a.name for a in s.axes) or "frozen"
            t.add_row(escape(s.name), s.spec.kind, widths, f"{self.site_ms[i]:.3f}",
                      f"{self.site_ms[i] / self.model_ms:.1%}", escape(groups))
        t.add_row("(rest of the model)", "", "", f"{self.model_ms - timed:.3f}",
                  f"{(self.model_ms - timed) / self.model_ms:.1%}", "")
        kinds: dict[str, float] = {}
        for s, ms in zip(self.sites, self.site_ms):
            kinds[s.spec.kind] = kinds.get(s.spec.kind, 0.0) + ms
        t.caption = ("by kind: " + ", ".join(f"{k} {v / self.model_ms:.0%}" for k, v in
                                            sorted(kinds.items(), key=lambda kv: -kv[1]))
                     + "\nalignment read off the tables: " + ", ".join(
                         f"{k} {v}" for k, v in sorted(self.alignment.items())))
        t.caption_justify = "left"
        return t


def latency_report(cg: ChannelGraph, example_inputs: Any, backend: str = "onnxruntime",
                   batch_size: int = 1,
                   threads: int | None = 1, repeats: int = 10) -> LatencyBreakdown:
    """Time every layer standalone (cached) and the whole model on ``backend``."""
    check_latency_args(1.0, backend, batch_size, threads)
    table = LatencyTable(backend, threads, batch_size)
    try:
        sites = layer_sites(cg)
        align = _probe_alignments(sites, table)
        ms = [table.ms(s.spec) for s in sites]
        x = with_batch(_as_inputs(example_inputs), batch_size)
        (t,) = time_runners([table.backend.prepare(cg.gm.eval(), x)], 2, repeats, 0.5)
        return LatencyBreakdown(table.backend.name, batch_size, table.backend.threads,
                                float(np.median(t)), sites, ms, align, table.measured)
    finally:
        table.close()
