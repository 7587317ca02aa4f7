"""Prune real-world models (timm, Hugging Face, Ultralytics, torchvision beyond
classification) at ratio 0.5 and check the issue-11 targets.

    python bench/realworld.py --skip-tp                   # the whole suite, one model at a time
    python bench/realworld.py --family hf,yolo --timeout 180
    python bench/realworld.py --models timm/resnet10t,hf/llama_gqa --frontend export
    python bench/realworld.py --family timm --every 4     # every 4th timm family: a sample
    python bench/realworld.py --tp-only --resume          # Torch-Pruning's columns, added
    python bench/realworld.py --report-only               # re-print from the JSON
    python bench/realworld.py --report-only --tp-from OTHER.json   # TP columns of another run

The list lives in ``bench/realworld_models.py``; each model runs in its own
subprocess (``bench/realworld_worker.py``) with a timeout. Records are merged
into ``bench/results/realworld.json`` (rewritten after every model) and the
table, targets and failure classes into ``realworld.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "realworld_worker.py"
OUT = HERE / "results" / "realworld.json"
STAGES = ("build", "prune", "analyze", "count", "run", "equiv")
MACS_TARGET, SHARE_TARGET = 0.30, 0.95
EXPORT_TOO = "torch.export failed too:"  # frontend="auto": fx failed, then export (api.py)
_LIVE: set[subprocess.Popen] = set()


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def run_one(name: str, args: argparse.Namespace, tmpdir: Path) -> dict[str, Any]:
    """One worker subprocess in its own session; a timeout kills it and its children."""
    out = tmpdir / (name.replace("/", "__") + ".json")
    cmd = [sys.executable, str(WORKER), name, "--out", str(out), "--frontend", args.frontend,
           "--max-mem-gb", str(args.max_mem_gb), "--tp-timeout", str(args.tp_timeout)] \
        + (["--skip-tp"] if args.skip_tp else []) + (["--tp-only"] if args.tp_only else [])
    t0 = time.perf_counter()
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
    if timed_out or rec.get("stage") != "done":
        stage = rec.get("stage", "start")
        why = (f"Timeout: no result after {args.timeout:.0f}s" if timed_out else
               f"WorkerCrash: rc={proc.returncode}: "
               + next((ln for ln in reversed(log.splitlines()) if ln.strip()), "no output"))
        rec.setdefault("errors", {})[stage] = {"error": why, "type": why.split(":")[0]}
        if stage != "tp":  # Torch-Pruning's own stage runs last: fxprune's verdict stands
            rec["ok"] = False
        rec["log_tail"] = log[-2000:]
    return rec


# --- verdicts ------------------------------------------------------------------

def first_error(rec: dict[str, Any]) -> tuple[str, str]:
    """(stage, 'Class: first line') of the earliest failing fxprune stage, or ('', '')."""
    errors = rec.get("errors", {})
    for stage in STAGES:
        if stage in errors:
            err = errors[stage]
            also = next((ln.strip() for ln in err.get("message", "").splitlines()
                         if ln.strip().startswith(EXPORT_TOO)), "")
            return stage, err["error"] + (f" [{also}]" if also else "")
    return "", ""


def verdict(rec: dict[str, Any]) -> str:
    """'pass' when the model meets every target, else what it misses."""
    stage, err = first_error(rec)
    if not rec.get("ok"):
        return f"{stage}: {err}" if err else "failed"
    if rec.get("macs_removed", 0) < MACS_TARGET:
        why = "; ".join(f"{n}× {r}" for r, n in rec.get("barrier_reasons", [])[:2])
        return f"low: {rec.get('macs_removed', 0):.0%} MACs removed" + (f" ({why})" if why else "")
    if not equiv_ok(rec):
        if "equiv" in rec.get("errors", {}):
            return f"equiv: {rec['errors']['equiv']['error']}"
        return f"equiv: max diff {rec.get('equiv_diff', float('nan')):.1e}"
    return "pass"


def equiv_ok(rec: dict[str, Any]) -> bool:
    """Dead-channel equivalence holds on the exact groups; a model whose groups all mix
    channels (LayerNorm everywhere: ConvNeXt) has none, and passes with nothing to check."""
    return bool(rec.get("equiv_pass")) or ("equiv_diff" in rec and not rec.get("equiv_groups"))


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|\b\d+\b|0x[0-9a-f]+")
_SHAPEPROP = re.compile(r"ShapeProp error for: node=%\w+ : .*?target=([\w.]+).*")
_MODEL = re.compile(r"(could not trace|the exported graph of|torch.export could not capture) \w+")


def _normalise(message: str) -> str:
    """First sentence, names and numbers blanked."""
    message = _MODEL.sub(r"\1 <model>", message).split(". ")[0]
    message = _SHAPEPROP.sub(r"shape propagation fails at \1", message)
    return _QUOTED.sub("…", message)[:200]


def failure_class(rec: dict[str, Any]) -> str:
    """The verdict with names and numbers blanked, so that alike failures group together;
    where fx and export both failed (frontend="auto") the export error names the class."""
    v = verdict(rec)
    if v.startswith("low:"):
        reasons = rec.get("barrier_reasons") or []
        return "low MACs: " + (reasons[0][0] if reasons else "groups frozen without a barrier")
    if v.startswith("equiv: max diff"):
        return "equiv: differs from the dead-unit oracle"
    stage, _, err = v.partition(": ")
    if f"[{EXPORT_TOO}" in err:
        return f"{stage}: fx and export fail; export: " + _normalise(
            err.split(f"[{EXPORT_TOO}", 1)[1].rstrip("]").strip())
    where = _where(rec.get("errors", {}).get(stage, {}).get("traceback", ""))
    return f"{stage}{f' in {where}' if where else ''}: " + _normalise(err)


_FRAME = re.compile(r'File "[^"]*/(fxprune|passes)/([\w/]+)\.py", line \d+, in (\w+)')


def _where(traceback_text: str) -> str:
    """The innermost fxprune frame ('shrink_constants.run_node'): which pass broke."""
    frames = [f for f in _FRAME.findall(traceback_text) if f[1] != "shapes"]  # the interpreter
    return f"{frames[-1][1]}.{frames[-1][2]}" if frames else ""


# --- report --------------------------------------------------------------------

def _m(v: Any, scale: float) -> str:
    return f"{v / scale:.2f}" if isinstance(v, (int, float)) else "–"


def tp_cell(r: dict[str, Any]) -> str:
    """Torch-Pruning's params ratio, output check and time, or its error."""
    tp = r.get("errors", {}).get("tp")
    return (f"{r['tp_params_ratio']:.2f} {'ok' if r.get('tp_runs') else 'bad output'} "
            f"{r['tp_s']:.1f}s" if "tp_params_ratio" in r else
            ("FAIL " + tp["error"][:60] if tp else "–"))


def _row(r: dict[str, Any]) -> str:
    eq = (f"{r['equiv_diff']:.0e} ({r.get('equiv_groups', 0)}g)" if "equiv_diff" in r else "–")
    cells = [r["model"], r.get("frontend_used", "–"), r.get("scope", "–"),
             "ok" if r.get("ok") else "FAIL",
             f"{r.get('groups', '–')}/{r.get('frozen', '–')} ({r.get('barrier_frozen', '–')})",
             f"{_m(r.get('params_before'), 1e6)}→{_m(r.get('params_after'), 1e6)}",
             f"{_m(r.get('macs_before'), 1e9)}→{_m(r.get('macs_after'), 1e9)}",
             f"{r['macs_removed']:.0%}" if "macs_removed" in r else "–", eq,
             _m(r.get("prune_s"), 1), tp_cell(r), verdict(r)[:140]]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def table(recs: list[dict[str, Any]]) -> str:
    head = ["model", "frontend", "pruned", "status", "groups/frozen (barrier)", "params M",
            "GMACs", "MACs −", "equiv", "prune s", "TP params ratio", "verdict"]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + [_row(r) for r in recs])


def targets(recs: list[dict[str, Any]]) -> list[str]:
    n = len(recs) or 1
    count = lambda f: sum(1 for r in recs if f(r))  # noqa: E731
    prunes = count(lambda r: r.get("ok") and r.get("macs_removed", 0) >= MACS_TARGET)
    runs = count(lambda r: r.get("runs"))
    equiv = count(equiv_ok)
    vacuous = count(lambda r: equiv_ok(r) and not r.get("equiv_groups"))
    full = count(lambda r: verdict(r) == "pass")
    tp_ok = count(lambda r: r.get("tp_runs"))
    tp_done = count(lambda r: "tp_params_ratio" in r or "tp" in r.get("errors", {}))
    mark = "meets" if full / n >= SHARE_TARGET else "MISSES"
    return [f"- **{full}/{len(recs)} ({full / n:.1%}) meet every target** ({mark} the "
            f"{SHARE_TARGET:.0%} target): prune, ≥{MACS_TARGET:.0%} MACs removed at ratio 0.5, "
            "run, keep their output structure, pass dead-channel equivalence on exact groups",
            f"- prune with ≥{MACS_TARGET:.0%} MACs removed: {prunes}/{len(recs)} "
            f"({prunes / n:.1%})",
            f"- run and keep their output structure: {runs}/{len(recs)} ({runs / n:.1%})",
            f"- pass dead-channel equivalence: {equiv}/{len(recs)} ({equiv / n:.1%}; {vacuous} "
            "of them have no exact group, every group mixing channels: nothing to check)",
            f"- Torch-Pruning 1.6 prunes and keeps the output structure: {tp_ok}/{tp_done} run"]


def failure_classes(recs: list[dict[str, Any]]) -> list[str]:
    by: dict[str, list[str]] = {}
    for r in recs:
        if verdict(r) != "pass":
            by.setdefault(failure_class(r), []).append(r["model"])
    lines = []
    for cls, models in sorted(by.items(), key=lambda kv: -len(kv[1])):
        more = f" (+{len(models) - 3} more)" if len(models) > 3 else ""
        lines.append(f"- {len(models)}× `{cls}` — e.g. {', '.join(models[:3])}{more}")
    return lines


def by_family(recs: list[dict[str, Any]]) -> list[str]:
    fams: dict[str, list[dict]] = {}
    for r in recs:
        fams.setdefault(r.get("family", "?").split(":")[0], []).append(r)
    return [f"- {f}: {sum(verdict(r) == 'pass' for r in rs)}/{len(rs)} pass, "
            f"{sum(bool(r.get('ok')) for r in rs)}/{len(rs)} prune and run"
            for f, rs in sorted(fams.items())]


def report(data: dict[str, Any]) -> str:
    recs = sorted(data["models"].values(), key=lambda r: r["model"])
    meta = data.get("meta", {})
    fails = [f"- {r['model']}: {verdict(r)}" for r in recs if verdict(r) != "pass"]
    return "\n".join([
        "# fxprune real-world suite (ratio 0.5, heads ignored)", "",
        f"Command: `python bench/realworld.py {' '.join(meta.get('argv', []))}` "
        f"(fxprune frontend argument: {meta.get('frontend_arg', '?')})"
        + (f"; Torch-Pruning columns from `{meta['tp_from']}` (a `--tp-only` run)"
           if meta.get("tp_from") else ""), "",
        "## Targets", "", *targets(recs), "", "## By family", "", *by_family(recs), "",
        "## Failure classes", "", *(failure_classes(recs) or ["- none"]), "",
        "## Failures", "", *(fails or ["- none"]), "", "## Table", "", table(recs), ""])


# --- command line -------------------------------------------------------------------

def select(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    from realworld_models import entries

    names = [e.name for e in entries()]
    if args.models:
        wanted = [n.strip() for n in args.models.split(",") if n.strip()]
        if unknown := [n for n in wanted if n not in names and not n.startswith("timm/")]:
            parser.error(f"--models: not in the suite: {', '.join(unknown)}")
        names = wanted
    if args.family:
        fams = tuple(f.strip() for f in args.family.split(","))
        names = [n for n in names if n.split("/")[0] in fams or
                 any(n.startswith(f"{f}/") for f in fams)]
    return names[::args.every]


def run_all(names: list[str], args: argparse.Namespace, data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="fxprune-realworld-") as td:
        pool = ThreadPoolExecutor(max_workers=args.jobs)
        try:
            futures = [pool.submit(run_one, n, args, Path(td)) for n in names]
            for i, fut in enumerate(as_completed(futures), 1):
                rec = fut.result()
                old = data["models"].get(rec["model"], {"model": rec["model"]})
                if args.tp_only:  # add Torch-Pruning's columns to fxprune's record
                    rec = merge_tp(old, rec)
                elif args.skip_tp:  # keep the columns an earlier --tp-only run added
                    rec = merge_tp(rec, old)
                data["models"][rec["model"]] = rec
                save(args.out, data)
                print(f"[{i}/{len(names)}] {rec['model']} ({rec['wall_s']:.0f}s): {verdict(rec)}"
                      + (f"; TP: {tp_cell(rec)}" if args.tp_only else ""), flush=True)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(_LIVE):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        pool.shutdown()


TP_KEYS = ("tp_s", "tp_params_ratio", "tp_runs")


def merge_tp(rec: dict[str, Any], tp_rec: dict[str, Any]) -> dict[str, Any]:
    """fxprune's record with the Torch-Pruning fields (or TP's error) of a ``--tp-only`` run."""
    rec = {k: v for k, v in rec.items() if k not in TP_KEYS}
    rec.update({k: tp_rec[k] for k in TP_KEYS if k in tp_rec})
    errors = {k: v for k, v in rec.get("errors", {}).items() if k != "tp"}
    tp_errors = tp_rec.get("errors", {})
    tp_err = tp_errors.get("tp") or (tp_errors.get("build") if tp_rec.get("tp_only") else None)
    if tp_err and "tp_params_ratio" not in tp_rec:
        errors["tp"] = tp_err
    rec["errors"] = errors
    return rec


def save(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1))
    write_atomic(path.with_suffix(".md"), report(data))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="", help="comma-separated: timm, hf, yolo, tv")
    p.add_argument("--models", default="", help="comma-separated suite names (timm/NAME, hf/...)")
    p.add_argument("--every", type=int, default=1,
                   help="keep every Nth model of the selection (a sample on a busy machine)")
    p.add_argument("--timeout", type=float, default=180, help="seconds per model")
    p.add_argument("--jobs", type=int, default=1, help="models in parallel")
    p.add_argument("--skip-tp", action="store_true", help="skip the Torch-Pruning comparison")
    p.add_argument("--tp-only", action="store_true",
                   help="run only Torch-Pruning and add its columns to the records in --out")
    p.add_argument("--tp-timeout", type=float, default=60.0,
                   help="seconds Torch-Pruning gets per model (it loops on some)")
    p.add_argument("--frontend", default="auto", help="fx | export | auto (if fxprune takes it)")
    p.add_argument("--max-mem-gb", type=float, default=12, help="per-worker limit (0: none)")
    p.add_argument("--resume", action="store_true", help="skip models already in --out")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report-only", action="store_true", help="print the report from --out")
    p.add_argument("--tp-from", type=Path, default=None,
                   help="add the Torch-Pruning columns of another run's JSON (--tp-only)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    data = json.loads(args.out.read_text()) if args.out.exists() else {"models": {}}
    if args.tp_from:  # Torch-Pruning measured in a run of its own
        tp_models = json.loads(args.tp_from.read_text())["models"]
        data["models"] = {n: merge_tp(r, tp_models[n]) if n in tp_models else r
                          for n, r in data["models"].items()}
        data.setdefault("meta", {})["tp_from"] = str(args.tp_from)
    if not args.report_only:
        names = select(args, p)
        if args.resume:
            done = (lambda r: any(k in r for k in TP_KEYS) or "tp" in r.get("errors", {})) \
                if args.tp_only else (lambda r: True)
            names = [n for n in names if not (n in data["models"] and done(data["models"][n]))]
        from realworld_worker import frontend_kwargs

        data["meta"] = {"argv": sys.argv[1:] if argv is None else argv,
                        "frontend_arg": frontend_kwargs(args.frontend).get("frontend",
                                                                         "not supported (fx)"),
                        "python": sys.version.split()[0]}
        try:
            run_all(names, args, data)
        except KeyboardInterrupt:
            print(f"interrupted; finished models are in {args.out} (--resume goes on)")
            return 130
        save(args.out, data)
    elif args.out.exists():  # the markdown is derived: refresh it beside the JSON
        write_atomic(args.out.with_suffix(".md"), report(data))
    print(report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
