"""Measure what pruning buys: latency per backend and batch size, and the speed-up
of a pruned model against the MACs reduction (the ideal).

    fxprune.bench.latency(module, (x,), backend="onnxruntime", batch_sizes=(1, 32))
    fxprune.bench.speedup(model, res, (x,), backends=("torch-cpu", "onnxruntime")).print()
    fxprune.bench.available_backends()   # e.g. ['torch-cpu', 'onnxruntime']
"""
from __future__ import annotations

from .backends import BACKENDS, Backend, BackendUnavailable, available_backends, get_backend
from .latency import BatchStats, LatencyReport, latency, time_runners, with_batch
from .report import SpeedupReport, SpeedupRow, speedup

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "BatchStats",
    "LatencyReport",
    "SpeedupReport",
    "SpeedupRow",
    "available_backends",
    "get_backend",
    "latency",
    "speedup",
    "time_runners",
    "with_batch",
]
