"""Prune every torchvision classification and video model and check the product targets.

    python bench/zoo.py                                  # all 80 + 9 video models, one at a time
    python bench/zoo.py --models resnet18,vit_b_16 --skip-tp
    python bench/zoo.py --resume                         # skip models already done
    python bench/zoo.py --report-only                    # re-print the table from the JSON

Each model runs in its own subprocess (``bench/zoo_worker.py``) with a timeout,
at ratio 0.5 with its classifier ignored. Results are merged into ``--out``
(default ``bench/results/zoo.json``, rewritten atomically after every model, so
an interrupted run resumes with ``--resume``); a markdown table and the target
summary go to stdout and beside it as ``zoo.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

HERE = Path(__file__).resolve().parent
WORKER = HERE / "zoo_worker.py"
STAGES = ("build", "analyze", "prune", "count", "run", "equiv", "tp", "timing", "prune_vs_tp")
SCALING = ("resnet18", "resnet50", "resnet152")
SPEEDUP_TARGET = 5.0
PRUNE_TARGET = 3.0  # prune end to end vs TP's build + step (issue 13)
console = Console()
_LIVE: set[subprocess.Popen] = set()  # running workers, killed on Ctrl-C


def all_models() -> list[str]:
    import torchvision

    return (torchvision.models.list_models(module=torchvision.models)
            + torchvision.models.list_models(module=torchvision.models.video))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, then ``os.replace`` it in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def first_error(rec: dict[str, Any]) -> str:
    """'stage: last line of the error' for the earliest failing stage, or ''."""
    errors = rec.get("errors", {})
    for stage in (*STAGES, "worker"):
        if stage in errors:
            return f"{stage}: {errors[stage]['error']}"
    return ""


def run_one(name: str, args: argparse.Namespace, tmpdir: Path) -> dict[str, Any]:
    """Run the worker on one model; turn timeouts and crashes into error records."""
    out = tmpdir / f"{name}.json"
    cmd = [sys.executable, str(WORKER), name, "--out", str(out), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--max-mem-gb", str(args.max_mem_gb)]
    cmd += ["--skip-tp"] if args.skip_tp else []
    cmd += ["--skip-prune-timing"] if args.skip_prune_timing else []
    cmd += ["--only-prune-timing"] if args.only_prune_timing else []
    cmd += ["--size", str(args.size)] if args.size else []
    t0 = time.perf_counter()
    # Own session so a timeout kills the worker and anything it spawned, nothing else.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    _LIVE.add(proc)
    try:
        log, _ = proc.communicate(timeout=args.timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        timed_out = True
    finally:
        _LIVE.discard(proc)
    rec = json.loads(out.read_text()) if out.exists() else {"model": name}
    rec["wall_s"] = time.perf_counter() - t0
    rec["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if timed_out or rec.get("stage") != "done":
        stage = rec.get("stage", "start")
        why = (f"timeout after {args.timeout}s" if timed_out else
               f"worker exited rc={proc.returncode}: "
               + next((ln for ln in reversed(log.splitlines()) if ln.strip()), "no output"))
        rec.setdefault("errors", {})["worker"] = {"error": f"{why} (in stage {stage})"}
        rec["ok"] = False
        rec["log_tail"] = log[-3000:]
    return rec


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"models": {}}


def save(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=False))
    write_atomic(path.with_suffix(".md"), report(data["models"]))


def _describe(rec: dict[str, Any]) -> str:
    ratio = rec["tp_s"] / rec["analyze_s"] if "tp_s" in rec and "analyze_s" in rec else None
    bits = [f"groups={rec['groups']}" if "groups" in rec else "",
            f"analyze={rec['analyze_s']:.2f}s" if "analyze_s" in rec else "",
            f"TP/fx={ratio:.1f}x" if ratio else "",
            f"equiv={rec['equiv_diff']:.1e}" if "equiv_diff" in rec else ""]
    mark = "[green]ok[/]" if rec.get("ok") else "[red]FAIL[/]"
    err = first_error(rec)
    tail = f"  [red]{err}[/]" if err else ""
    return f"{mark} {rec['model']} {' '.join(b for b in bits if b)}{tail}"


def run_all(names: list[str], args: argparse.Namespace, data: dict[str, Any]) -> None:
    """Run the models (``--jobs`` at a time), saving after each one."""
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn())
    with tempfile.TemporaryDirectory(prefix="fxprune-zoo-") as td, \
            Progress(*cols, console=console) as progress:
        task = progress.add_task("zoo", total=len(names))
        pool = ThreadPoolExecutor(max_workers=args.jobs)
        try:
            futures = [pool.submit(run_one, n, args, Path(td)) for n in names]
            for fut in as_completed(futures):
                rec = fut.result()
                data["models"][rec["model"]] = rec
                save(args.out, data)
                progress.console.print(_describe(rec), highlight=False)
                progress.advance(task)
        except BaseException:  # Ctrl-C: workers run in their own sessions, so end them here
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(_LIVE):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        pool.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated names (default: all 80 classification + 9 video)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per model")
    p.add_argument("--jobs", type=int, default=1, help="models in parallel")
    p.add_argument("--out", type=Path, default=HERE / "results" / "zoo.json")
    p.add_argument("--skip-tp", action="store_true", help="skip the Torch-Pruning comparison")
    p.add_argument("--skip-prune-timing", action="store_true",
                   help="skip timing prune end to end against TP's build + step")
    p.add_argument("--only-prune-timing", action="store_true",
                   help="per model: build it and time prune against TP's build + step only")
    p.add_argument("--repeats", type=int, default=3, help="timed analyses per model (median)")
    # One thread by default: on a loaded machine a multi-threaded forward (TP's graph
    # build runs one) slows down 10-60x from oversubscription, which skews the ratio.
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker (default 1; 0: torch's default)")
    p.add_argument("--max-mem-gb", type=float, default=16, help="per-worker limit (0: none)")
    p.add_argument("--size", type=int, default=None, help="input side for every model")
    p.add_argument("--resume", action="store_true", help="skip models already finished in --out")
    p.add_argument("--report-only", action="store_true", help="print the report from --out")
    args = p.parse_args(argv)
    data = load(args.out)
    if not args.report_only:
        known = all_models()
        names = [n.strip() for n in args.models.split(",") if n.strip()] or known
        if unknown := sorted(set(names) - set(known)):
            p.error(f"--models: not a torchvision classification or video model: {', '.join(unknown)}")
        if args.resume:
            names = [n for n in names if data["models"].get(n, {}).get("stage") != "done"]
        data["meta"] = {"argv": sys.argv[1:], "python": sys.version.split()[0]}
        try:
            run_all(names, args, data)
        except KeyboardInterrupt:
            console.print(f"interrupted; finished models are in {args.out} (--resume goes on)")
            return 130
        save(args.out, data)
    print(report(data["models"]))
    return 0


# --- report -----------------------------------------------------------------

def _num(v: Any, fmt: str, scale: float = 1.0) -> str:
    return format(v / scale, fmt) if isinstance(v, (int, float)) else "–"


def _arrow(rec: dict[str, Any], key: str, scale: float) -> str:
    a, b = rec.get(f"{key}_before"), rec.get(f"{key}_after")
    if a is None:
        return "–"
    return f"{a / scale:.2f}→{b / scale:.2f}" if b is not None else f"{a / scale:.2f}→?"


def _prune_ratio(rec: dict[str, Any], fx_key: str) -> float | None:
    """TP's build + step time over fxprune's prune time (``fx_key``: with or without the
    self-check), for one model."""
    if "tp_prune_s" in rec and fx_key in rec:
        return rec["tp_prune_s"] / rec[fx_key]
    return None


def _prune_speedup(recs: list[dict[str, Any]]) -> list[str]:
    """Median over models of TP's build + step time over fxprune.prune's, per thread count."""
    out = []
    for fx_key, what in (("fx_prune_unchecked_s", "check=False, the same work as TP"),
                         ("fx_prune_s", "with the self-check, the default")):
        ratios = [(r.get("threads"), _prune_ratio(r, fx_key)) for r in recs]
        out += _median_lines([(t, x) for t, x in ratios if x is not None],
                             f"prune end to end vs Torch-Pruning build + step ({what})",
                             PRUNE_TARGET)
    return out


def _row(rec: dict[str, Any]) -> str:
    ratio = rec["tp_s"] / rec["analyze_s"] if "tp_s" in rec and "analyze_s" in rec else None
    eq = "–" if "equiv_pass" not in rec else ("pass" if rec["equiv_pass"] else "FAIL")
    side = rec.get("input", [0, 0, 0, "?"])[-1]
    cells = [rec["model"], str(side), "ok" if rec.get("ok") else "FAIL",
             f"{rec.get('groups', '–')} ({rec.get('mixing_groups', '–')})",
             f"{rec.get('frozen', '–')} ({rec.get('barrier_frozen', '–')})",
             str(rec.get("nodes", "–")), _num(rec.get("analyze_s"), ".3f"),
             _num(rec.get("prune_s"), ".2f"), _num(rec.get("tp_s"), ".3f"),
             _num(ratio, ".1f"), _num(rec.get("fx_prune_s"), ".3f"),
             _num(rec.get("fx_prune_unchecked_s"), ".3f"), _num(rec.get("tp_prune_s"), ".3f"),
             _num(_prune_ratio(rec, "fx_prune_unchecked_s"), ".1f"),
             _arrow(rec, "params", 1e6), _arrow(rec, "macs", 1e9),
             f"{_num(rec.get('equiv_diff'), '.1e')} {eq}",
             first_error(rec).replace("|", "\\|")[:160]]
    return "| " + " | ".join(cells) + " |"


def table(recs: list[dict[str, Any]]) -> str:
    head = ["model", "input", "status", "groups (mixing)", "frozen (barrier)", "nodes",
            "analyze s", "prune s", "TP s", "TP/fx", "prune median s", "check=False s",
            "TP prune s", "TP/fx prune", "params M", "GMACs", "equiv", "error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + [_row(r) for r in recs])


def _scaling(models: dict[str, dict[str, Any]]) -> list[str]:
    rows = [models[n] for n in SCALING if "analyze_s" in models.get(n, {})]
    out = [f"- {r['model']}: {r['nodes']} nodes, {r['analyze_s'] * 1e3:.0f} ms, "
           f"{r['analyze_s'] / r['nodes'] * 1e6:.0f} µs/node" for r in rows]
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        per = (b["analyze_s"] / b["nodes"]) / (a["analyze_s"] / a["nodes"])
        out.append(f"- time/node {b['model']} ÷ {a['model']} = {per:.2f} (1.00 is linear)")
    return out or ["- (resnet18/50/152 not measured)"]


def _equiv_failure(rec: dict[str, Any]) -> str:
    if "equiv_diff" in rec:
        return f"max diff {rec['equiv_diff']:.2e} ({rec.get('equiv_method', '?')})"
    err = rec.get("errors", {}).get("equiv")
    return f"equiv: {err['error']}" if err else first_error(rec) or "not measured"


def _median_lines(ratios: list[tuple[Any, float]], what: str, target: float) -> list[str]:
    """One line per torch thread count: the median of the per-model ratios (thread count,
    ratio), against ``target``."""
    by_threads: dict[Any, list[float]] = {}
    for threads, ratio in ratios:
        by_threads.setdefault(threads, []).append(ratio)
    out = []
    for threads, values in sorted(by_threads.items(), key=lambda kv: str(kv[0])):
        values.sort()
        med = statistics.median(values)
        verdict = "meets" if med >= target else "MISSES"
        out.append(f"- **{what}: median {med:.1f}× faster** ({verdict} the {target:.0f}× "
                   f"target; range {values[0]:.1f}–{values[-1]:.1f}× over {len(values)} "
                   f"models, {threads} torch thread(s))")
    return out


def _speedup(recs: list[dict[str, Any]]) -> list[str]:
    """Median TP/fxprune time ratio, one line per torch thread count measured."""
    return _median_lines([(r.get("threads"), r["tp_s"] / r["analyze_s"]) for r in recs
                          if "tp_s" in r and "analyze_s" in r],
                         "analysis vs Torch-Pruning graph build", SPEEDUP_TARGET)


def summary(models: dict[str, dict[str, Any]]) -> str:
    recs = list(models.values())
    ok = [r for r in recs if r.get("ok")]
    lines = [f"- **{len(ok)}/{len(recs)} models prune and run**"]
    lines += [f"  - {r['model']}: {first_error(r)}" for r in recs if not r.get("ok")]
    for kind, label in (("cnn", "CNNs"), ("transformer", "transformers (exact groups only)")):
        group = [r for r in recs if r.get("kind") == kind
                 and ("equiv_pass" in r or "equiv" in r.get("errors", {}))]
        if not group:
            continue  # not measured in this run (--only-prune-timing)
        bad = [r for r in group if not r.get("equiv_pass")]
        lines.append(f"- **{len(group) - len(bad)}/{len(group)} {label} pass dead-channel "
                     f"equivalence (< 1e-5)**" + (" — all pass" if group and not bad else ""))
        lines += [f"  - {r['model']}: {_equiv_failure(r)}" for r in bad]
    lines += _speedup(recs)
    lines += _prune_speedup(recs)
    tp_fail = [r for r in recs if "tp" in r.get("errors", {})]
    lines += [f"  - TP's prune failed on {r['model']}: {r['tp_prune_error']}" for r in recs
              if "tp_prune_error" in r]
    lines += [f"  - TP failed on {r['model']}: {r['errors']['tp']['error']}" for r in tp_fail]
    lines.append("- **analysis time vs graph size**")
    lines += ["  " + s for s in _scaling(models)]
    return "\n".join(lines)


def report(models: dict[str, dict[str, Any]]) -> str:
    recs = sorted(models.values(), key=lambda r: r["model"])
    return f"# fxprune model zoo (ratio 0.5)\n\n{table(recs)}\n\n## Summary\n\n{summary(models)}\n"


if __name__ == "__main__":
    sys.exit(main())
