"""Child process of the latency stage: ``torch.compile`` latency, one job per model.

    python bench/gpu/compile_worker.py SPEC.json OUT.json

Each job rebuilds its model with the same seed as the parent (same weights, same pruned
architectures), compiles the original and the listed variants with the job's backend
(``inductor`` on the GPU; ``eager`` — dynamo capture only — in the dry run), records the
first call's time as the compile time, and times the compiled modules interleaved
(CUDA events on the GPU). ``OUT.json`` is rewritten after every job, so the parent can
kill this process at its time box and keep the jobs that finished. A failing job is a
row with its error; the next job still runs.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

import torch  # noqa: E402

from fxprune.bench import time_runners, with_batch  # noqa: E402
from gpu import zoo  # noqa: E402
from gpu.latency import DTYPES, _err, _row, stats_to_variants  # noqa: E402


def _runner(fn, inputs: tuple, device: torch.device):
    """One timed call of ``fn``: CUDA events on the GPU, perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run() -> float:
            with torch.inference_mode():
                start.record()
                fn(*inputs)
                end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def run() -> float:
            with torch.inference_mode():
                t0 = time.perf_counter()
                fn(*inputs)
                return (time.perf_counter() - t0) * 1e3
    return run


def run_job(job: dict) -> dict:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype_name = job["dtype"] if cuda else "fp32"
    dtype = DTYPES[dtype_name]
    row = _row(job["model"], "torch-compile", "compile", dtype_name, job["batch"],
               compile_backend=job["backend"])
    x = zoo.input_for(job["side"])
    specs = [sp for sp in zoo.variant_specs(job["ratios"], job["round_to"],
                                            job["extra_round_to"]) if sp[0] in job["variants"]]
    variants = [(v, m) for v, m in zoo.prune_variants(zoo.build_model(job["model"]), x, specs)
                if v.name in job["variants"]]
    inputs = tuple(t.to(device, dtype) for t in with_batch((x,), job["batch"]))
    runners, compile_s = [], {}
    for v, m in variants:
        m = copy.deepcopy(m).to(device, dtype).eval()
        cm = torch.compile(m, backend=job["backend"], dynamic=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            cm(*inputs)  # the first call compiles
        if cuda:
            torch.cuda.synchronize()
        compile_s[v.name] = time.perf_counter() - t0
        print(f"compile: {job['model']} {v.name} compiled in {compile_s[v.name]:.1f}s", flush=True)
        runners.append(_runner(cm, inputs, device))
    times = time_runners(runners, job["warmup"], job["repeats"], job["min_seconds"],
                         job["max_repeats"])
    row.update(device=torch.cuda.get_device_name() if cuda else "cpu",
               backend_version=f"torch {torch.__version__} ({job['backend']})",
               compile_s=compile_s,
               variants=stats_to_variants([v.name for v, _ in variants],
                                          {v.name: v.macs for v, _ in variants}, times,
                                          job["batch"]))
    return row


def _write(path: Path, rows: list) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rows": rows}, indent=1))
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    spec, out = Path(argv[0]), Path(argv[1])
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    rows: list = []
    for job in json.loads(spec.read_text())["jobs"]:
        t0 = time.perf_counter()
        try:
            row = run_job(job)
        except Exception as e:  # record the failure, go on with the next model
            row = _row(job["model"], "torch-compile", "compile", job["dtype"], job["batch"],
                       compile_backend=job["backend"], error=_err(e))
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        _write(out, rows)
        print(f"compile: {job['model']}: "
              + (row["error"] or ", ".join(f"{k} {v['median_ms']:.3f} ms"
                                           for k, v in row["variants"].items())), flush=True)
        torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
