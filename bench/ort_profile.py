"""Where ONNX Runtime CPU spends a model's time, per op type, before and after uniform
pruning (not run in CI): what part of the latency channel pruning cannot reach.

    python bench/ort_profile.py mobilenet_v2 --batch 1 --ratios 0.5 0.9

The torchvision model (random weights, 224x224) and its L1-pruned copies at each ratio
are exported to ONNX and run with ORT's profiler (1 thread, all graph optimisations);
prints the session's time per run, the kernels' total and the time per op type, with the
fraction of the original's MACs and latency each pruned copy keeps.
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import warnings
from pathlib import Path

import onnxruntime as ort
import torch
import torchvision

import fxprune
from fxprune.export import to_onnx


def profile(module: torch.nn.Module, x: torch.Tensor, runs: int) -> tuple[float, dict[str, float]]:
    """(ms per run, {op type: kernel ms per run}) under ORT's profiler."""
    with tempfile.TemporaryDirectory() as d:
        path = to_onnx(module, (x,), Path(d) / "m.onnx", dynamic_batch=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        warm = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {warm.get_inputs()[0].name: x.numpy()}
        for _ in range(3):
            warm.run(None, feed)
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(d) / "p")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = collections.Counter()
    total = 0.0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / runs / 1e3
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            total += e["dur"] / runs / 1e3
    return total, dict(by_op)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.9])
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    macs0 = fxprune.count(model, x[:1]).macs
    base, ops = profile(model, x, args.runs)
    print(f"{args.model} batch {args.batch}, original: {base:.2f} ms a run, kernels "
          f"{sum(ops.values()):.2f} ms")
    for op, ms in sorted(ops.items(), key=lambda kv: -kv[1]):
        print(f"    {op:22s} {ms:8.2f} ms")
    for r in args.ratios:
        pruned = fxprune.prune(model, x[:1], ratio=r, criterion="l1", check=False).module
        ms, ops = profile(pruned, x, args.runs)
        macs = fxprune.count(pruned, x[:1]).macs / macs0
        print(f"ratio {r}: {macs:.1%} of the MACs, {ms:.2f} ms a run = {ms / base:.1%} of the "
              f"latency; kernels {sum(ops.values()):.2f} ms")
        for op, t in sorted(ops.items(), key=lambda kv: -kv[1]):
            print(f"    {op:22s} {t:8.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
