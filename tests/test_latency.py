"""The latency harness and the speed-up report: sane statistics, skips, JSON."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fxprune.bench import (BackendUnavailable, BatchStats, LatencyReport, available_backends,
                           latency, with_batch)
from fxprune.bench.backends import BACKENDS

has_cuda = torch.cuda.is_available()
try:
    import tensorrt  # noqa: F401
    has_trt = has_cuda
except ImportError:
    has_trt = False


def _net() -> nn.Module:
    """A small conv net: fast enough to time 5 times per batch size on a shared CPU."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).train()


def _run_and_check(backend: str, batch_sizes=(1, 4)) -> LatencyReport:
    model = _net()
    rep = latency(model, torch.randn(2, 3, 16, 16), backend=backend, batch_sizes=batch_sizes,
                  warmup=1, repeats=5)
    assert rep.skipped is None, rep.skipped
    assert sorted(rep.stats) == sorted(batch_sizes)
    for bs, s in rep.stats.items():
        assert s.batch_size == bs and s.repeats == 5
        assert 0 < s.min_ms <= s.q1_ms <= s.median_ms <= s.q3_ms
        assert s.iqr_ms == pytest.approx(s.q3_ms - s.q1_ms)
        assert s.throughput == pytest.approx(bs * 1e3 / s.median_ms)
    assert rep.backend == backend and rep.backend_version and rep.device and rep.threads >= 1
    assert model.training, "the harness must restore the module's training flag"
    back = LatencyReport.from_dict(json.loads(rep.to_json()))
    assert back == rep
    return rep


def test_torch_cpu_statistics():
    _run_and_check("torch-cpu")


def test_onnxruntime_statistics():
    pytest.importorskip("onnxruntime")
    _run_and_check("onnxruntime", batch_sizes=(3,))


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda, reason="needs a CUDA device")
@pytest.mark.parametrize("graphs", [True, False])
def test_torch_cuda_statistics(graphs):
    rep = latency(_net(), torch.randn(1, 3, 16, 16), backend="torch-cuda", batch_sizes=(1, 8),
                  warmup=2, repeats=5, cuda_graphs=graphs)
    assert rep.skipped is None and rep[8].median_ms > 0


@pytest.mark.tensorrt
@pytest.mark.skipif(not has_trt, reason="needs TensorRT and a CUDA device")
def test_tensorrt_statistics(tmp_path):
    rep = latency(_net(), torch.randn(1, 3, 16, 16), backend="tensorrt", batch_sizes=(1, 8),
                  warmup=2, repeats=5, timing_cache=tmp_path / "cache")
    assert rep.skipped is None and rep[8].median_ms > 0
    assert (tmp_path / "cache").stat().st_size > 0


@pytest.mark.skipif(has_trt, reason="TensorRT is installed here")
def test_unavailable_backend_is_a_skip_with_a_reason():
    rep = latency(_net(), torch.randn(1, 3, 8, 8), backend="tensorrt", repeats=1)
    assert rep.stats == {} and "tensorrt" in rep.skipped
    assert "tensorrt" not in available_backends()
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        latency(_net(), torch.randn(1, 3, 8, 8), backend="tensorrt", skip_unavailable=False)


def test_registry_and_bad_arguments():
    assert {"torch-cpu", "torch-cuda", "onnxruntime", "onnxruntime-cuda",
            "tensorrt"} <= set(BACKENDS)
    assert "torch-cpu" in available_backends()
    with pytest.raises(ValueError, match="unknown backend"):
        latency(_net(), torch.randn(1, 3, 8, 8), backend="tpu")
    with pytest.raises(ValueError, match="repeats"):
        latency(_net(), torch.randn(1, 3, 8, 8), repeats=0)


def test_with_batch_repeats_example_rows():
    x = torch.arange(2 * 3).float().view(2, 3)
    (y,) = with_batch((x,), 5)
    assert y.shape == (5, 3)
    assert torch.equal(y[2], x[0]) and torch.equal(y[3], x[1])


def test_batch_stats_quartiles():
    s = BatchStats.from_times(4, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.q1_ms, s.median_ms, s.q3_ms, s.iqr_ms) == (2.0, 3.0, 4.0, 2.0)
    assert s.throughput == pytest.approx(4000 / 3)


def test_speedup_report_against_macs():
    import fxprune
    from fxprune.bench import SpeedupReport, speedup

    model = _net()
    x = torch.randn(1, 3, 16, 16)
    res = fxprune.prune(model, (x,), ratio=0.5)
    rep = speedup(model, res, (x,), backends=("torch-cpu", "tensorrt"), batch_sizes=(1, 2),
                  warmup=1, repeats=3)
    c0, c1 = fxprune.count(model, (x,)), fxprune.count(res.module, (x,))
    assert rep.macs_speedup == pytest.approx(c0.macs / c1.macs) and rep.macs_speedup > 1.5
    assert rep.params_pruned == c1.params < rep.params_original == c0.params
    cpu = [rep.row("torch-cpu", bs) for bs in (1, 2)]
    for r in cpu:
        assert r.skipped is None and r.original_ms > 0 and r.pruned_ms > 0
        assert r.speedup == pytest.approx(r.original_ms / r.pruned_ms)
        assert r.efficiency == pytest.approx(r.speedup / rep.macs_speedup)
    if not has_trt:
        assert rep.row("tensorrt", 1).skipped
    assert model.training, "speedup must restore the training flag"
    back = SpeedupReport.from_dict(json.loads(rep.to_json()))
    assert back.rows[:2] == rep.rows[:2] and back.macs_speedup == rep.macs_speedup
    from rich.console import Console

    console = Console(record=True, width=150)
    console.print(rep.table())
    text = console.export_text()
    assert "torch-cpu" in text and "2.00x" in text and (has_trt or "tensorrt skipped" in text)


def test_time_runners_keeps_sampling_fast_runs_until_min_seconds():
    from fxprune.bench import time_runners

    calls = [0, 0]

    def runner(k):
        def run():
            calls[k] += 1
            return 0.1
        return run

    times = time_runners([runner(0), runner(1)], warmup=2, repeats=3, min_seconds=0.05,
                         max_repeats=10_000)
    assert len(times[0]) == len(times[1]) > 3  # interleaved, and more than the minimum
    assert calls == [len(times[0]) + 2] * 2   # warm-up runs are not recorded
    capped = time_runners([runner(0)], warmup=0, repeats=3, min_seconds=60, max_repeats=7)
    assert len(capped[0]) == 7
    assert len(time_runners([runner(0)], warmup=0, repeats=4)[0]) == 4
