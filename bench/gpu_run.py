"""The prepared GPU run: CUDA latency of pruned torchvision models and a short ResNet-56
retraining comparison on CIFAR-10, inside one time budget, everything under one folder.

    python bench/gpu_run.py OUTDIR --cifar .cache/cifar10-jpg.tar.gz --budget 450
    python bench/gpu_run.py OUTDIR --dry-run          # CPU, tiny sizes, about a minute
    python bench/gpu_run.py --report OUTDIR           # report.md + speedup.png from the JSON

Stages, in order (each writes ``OUTDIR/results.json`` as it goes):

1. ``latency``: resnet18, resnet50, mobilenet_v2, efficientnet_b0, vit_b_16, pruned on
   the CPU (L1, ratios 0.3/0.5/0.7 at ``round_to`` 8, and 0.5 at ``round_to`` 1), timed on
   ``torch-cuda`` with CUDA graphs and eagerly, fp16 and fp32, batch 64 and 1; ONNX
   Runtime CUDA and TensorRT when present (one line each when not). Until
   ``--latency-share`` of the budget.
2. ``train``: ResNet-56 on CIFAR-10 with the data on the device, pruned with l1-filter
   ``resnet56-b``, then fine-tune vs Scratch-E vs LR rewind, E chosen from the measured
   epoch time so that ``--compile-box`` + ``--reserve`` seconds are left at the end.
3. ``compile``: ``torch.compile`` (inductor) of the original and r0.5, fp16, batch 64, in a
   child process killed when the budget (less ``--reserve``) is spent.
4. the report (``report.md``, ``speedup.png``) and the two target lines on stdout.

A watchdog thread ends the process ``--grace`` seconds past the budget, after marking the
JSON; the JSON always holds every finished unit of work. ``--dry-run`` runs the same
code on the CPU with stand-ins (tiny models and inputs, ``torch-cpu`` for ``torch-cuda``,
CUDA-only modes recorded as skipped with the reason, ``torch.compile(backend="eager")``,
a few hundred CIFAR images or synthetic ones without the tarball, 1 epoch).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "bench")]

import torch  # noqa: E402

from gpu import report as R  # noqa: E402
from gpu import zoo  # noqa: E402
from gpu.budget import Budget, Results, Watchdog  # noqa: E402
from gpu.env import environment  # noqa: E402
from gpu.latency import LatencySettings, run_compile, run_latency  # noqa: E402
from gpu.train import TrainSettings, run_training  # noqa: E402

STAGES = ("latency", "train", "compile")
_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def default_cifar() -> Path | None:
    """``.cache/cifar10-jpg.tar.gz`` in the repository (what travels to the GPU machine),
    else ``fxprune.data.find_cifar10()`` ($FXPRUNE_CIFAR10, or ../shared/data beside the
    repository)."""
    from fxprune.data import find_cifar10

    cached = _ROOT / ".cache" / "cifar10-jpg.tar.gz"
    found = cached if cached.is_file() else find_cifar10()
    return found if found is not None and Path(found).is_file() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default=os.environ.get("OUT"),
                   help="output folder (default $OUT)")
    p.add_argument("--report", metavar="OUTDIR", help="only write the report of OUTDIR")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, about a minute")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run (default 450; dry run 60)")
    p.add_argument("--grace", type=float, default=25.0,
                   help="the watchdog stops the process this long after the budget")
    p.add_argument("--reserve", type=float, default=None,
                   help="seconds kept free at the end for the report (default 12; dry 3)")
    p.add_argument("--cifar", type=Path, default=None,
                   help="cifar10-jpg.tar.gz (default .cache/ or ../shared/data/)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of " + ", ".join(STAGES))
    p.add_argument("--latency-share", type=float, default=0.35,
                   help="fraction of the budget by which the latency stage stops")
    p.add_argument("--compile-box", type=float, default=70.0,
                   help="seconds kept for the torch.compile child at the end (dry run 25); "
                        "it gets more when training ends early")
    p.add_argument("--models", default=None, help="comma list (default the five models)")
    p.add_argument("--dtypes", default=None, help="comma list of fp16,fp32,bf16")
    p.add_argument("--epochs", type=int, default=None, help="fix E instead of planning it")
    a = p.parse_args(argv)
    if a.report is None and a.out is None:
        p.error("give an output folder (or set $OUT), or --report OUTDIR")
    a.budget = a.budget or (60.0 if a.dry_run else 450.0)
    a.reserve = a.reserve if a.reserve is not None else (3.0 if a.dry_run else 12.0)
    if a.dry_run and a.compile_box == p.get_default("compile_box"):
        a.compile_box = 25.0
    return a


def latency_settings(a: argparse.Namespace) -> LatencySettings:
    if a.dry_run:
        s = LatencySettings(backend="torch-cpu", models=[list(m) for m in zoo.DRY_MODELS],
                            batches=[4, 1], warmup=1, repeats=3, min_seconds=0.0, max_repeats=3,
                            min_group_s=0.0, compile_backend="eager", compile_batch=4,
                            compile_models=["resnet18"])
    else:
        s = LatencySettings()
    if a.models:
        want = a.models.split(",")
        s.models = [m for m in s.models if m[0] in want]
    if a.dtypes:
        s.dtypes = a.dtypes.split(",")
    return s


def train_settings(a: argparse.Namespace) -> TrainSettings:
    if a.dry_run:
        return TrainSettings(model_kwargs={"width": 8}, batch_size=64, epochs=a.epochs or 1,
                             eval_batch_size=256, min_epochs=1)
    return TrainSettings(epochs=a.epochs)


def load_splits(a: argparse.Namespace, results: Results, device: torch.device):
    """CIFAR-10 decoded once and moved to ``device``; the dry run keeps 30 train / 20 test
    images per class, or makes synthetic ones when there is no tarball."""
    from gpu.data import DeviceSplit, read_cifar10, synthetic_cifar

    src = a.cifar or default_cifar()
    t0 = time.perf_counter()
    if src is not None and Path(src).is_file():
        d = read_cifar10(Path(src), per_class={"train": 30, "test": 20} if a.dry_run else None)
        source = f"CIFAR-10 from {src}"
    elif a.dry_run:
        d = synthetic_cifar(300, 200)
        source = "synthetic (dry run without the CIFAR-10 tarball)"
    else:
        raise FileNotFoundError(
            f"CIFAR-10 tarball not found ({a.cifar or 'default locations'}): copy "
            "../shared/data/cifar10-jpg.tar.gz to .cache/ in the repository (carry .cache) "
            "or pass --cifar PATH")
    (tr, te) = d["train"], d["test"]
    splits = (DeviceSplit(tr[0], tr[1], device), DeviceSplit(te[0], te[1], device))
    results.doc.setdefault("train", {})["data"] = {
        "source": source, "train": len(splits[0]), "test": len(splits[1]),
        "decode_s": time.perf_counter() - t0}
    results.save()
    log(f"data: {source}: {len(splits[0])} train, {len(splits[1])} test "
        f"({time.perf_counter() - t0:.1f}s, on {device})")
    return splits


def _stage(results: Results, budget: Budget, name: str, fn) -> None:
    t0 = time.perf_counter()
    results.stage(name, status="running", started_s=budget.elapsed())
    try:
        fn()
        status = "done"
    except Exception as e:
        status = f"error: {type(e).__name__}: {e}"
        results.doc.setdefault(name, {})["error"] = status[len("error: "):]
        log(f"{name}: {status}\n{traceback.format_exc()}")
        if torch.cuda.is_available():
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            except Exception:
                pass
    results.stage(name, status=status, wall_s=time.perf_counter() - t0)


def run(a: argparse.Namespace) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(a.budget)
    results = Results(out / "results.json", {"schema": 1, "dry_run": a.dry_run,
                                             "status": "running", "budget_s": a.budget,
                                             "argv": sys.argv[1:]})
    results.set("env", environment())
    log(f"GPU run{' (dry run)' if a.dry_run else ''}: budget {a.budget:.0f}s, "
        f"GPU {results.doc['env']['gpu']}, torch {torch.__version__}")
    dog = Watchdog(budget, a.budget + a.grace, results, log).start()
    stages = [s for s in a.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; choose from {', '.join(STAGES)}")
    ls, end = latency_settings(a), a.budget - a.reserve
    work = Path(tempfile.mkdtemp(prefix="fxprune-gpu-run-"))
    for name in STAGES:
        if name not in stages:
            results.stage(name, status="skipped (not in --stages)")
    if "latency" in stages:
        _stage(results, budget, "latency",
               lambda: run_latency(results, budget, ls, a.budget * a.latency_share, log))
    if "train" in stages:  # before compile: the compile box is kept free at the end
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        train_end = end - (a.compile_box if "compile" in stages else 0.0)
        _stage(results, budget, "train",
               lambda: run_training(results, budget, train_settings(a),
                                    load_splits(a, results, device), train_end, log))
    if "compile" in stages:
        _stage(results, budget, "compile",
               lambda: run_compile(results, budget, ls, end - budget.elapsed(), work, log))
    dog.cancel()
    errors = [k for k, v in results.doc["stages"].items()
              if str(v.get("status")).startswith("error")]
    results.doc["status"] = "done" + (f" (errors in {', '.join(errors)})" if errors else "")
    results.doc["wall_s"] = budget.elapsed()
    results.save()
    write_report(out)
    return 0


def write_report(out: Path) -> int:
    import json

    path = Path(out) / "results.json"
    if not path.is_file():
        print(f"no results.json in {out}: run the GPU run first", file=sys.stderr)
        return 2
    doc = json.loads(path.read_text())
    md = R.markdown(doc)
    tmp = Path(out) / ".report.md.tmp"
    tmp.write_text(md, encoding="utf-8")
    tmp.replace(Path(out) / "report.md")
    plotted = R.plot(doc, Path(out) / "speedup.png")
    st, order = R.speed_target(doc), R.training_ordering(doc)
    log(f"target (ResNets fp16 CUDA graphs batch 64, >= 0.8x MACs speed-up): {st['verdict']}")
    log(f"target (training ordering): measured {order.get('ordering', 'not measured')}; "
        f"papers: {order['papers']}")
    log(f"wrote {Path(out) / 'report.md'}" + (f", {Path(out) / 'speedup.png'}" if plotted
                                               else " (no measured rows to plot)"))
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.report:
        return write_report(Path(a.report))
    return run(a)


if __name__ == "__main__":
    raise SystemExit(main())
