"""The ``fxprune`` command line: inspect, prune, bench, demo.

    fxprune inspect resnet18                          # groups, frozen groups, MACs, params
    fxprune prune resnet18 --ratio 0.5 --ignore fc --out out/r18
    fxprune bench out/r18 --backend onnxruntime --batch 1 32
    fxprune demo --quick

MODEL is a torchvision name (``resnet18``), ``timm:NAME``, ``cifar:NAME`` (fxprune.models),
``package.module:factory``, any of them with keyword arguments
(``cifar:resnet20(in_channels=1)``), or a directory written by ``fxprune prune``.
Exit codes: 0 ok, 1 runtime error, 2 usage error. Errors are one line on stderr;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import FxPruneError
from .io import SpecError, resolve_factory

__all__ = ["UsageError", "build_parser", "main"]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class UsageError(FxPruneError):
    """A command-line argument is invalid (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _ratio(s: str) -> float:
    try:
        r = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {s!r}") from None
    if not 0.0 <= r < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return r


def _fraction(s: str) -> float:
    try:
        f = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {s!r}") from None
    if not 0.0 < f <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (fraction of MACs kept), got {s}")
    return f


def _shape(s: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in s.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,3,224,224, got {s!r}") from None
    if len(dims) < 2 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected positive dims like 1,3,224,224, got {s!r}")
    return dims


def _positive(s: str) -> int:
    if not s.isdigit() or int(s) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}")
    return int(s)


# ----------------------------------------------------------------------- models
def _is_saved(spec: str) -> bool:
    from . import io

    io.recover(spec)  # a save killed between the two renames of its swap
    return (Path(spec) / "meta.json").is_file()


def _default_shape(spec: str) -> tuple[int, ...]:
    if spec.startswith("cifar:"):
        chans = 1 if "in_channels=1" in spec.replace(" ", "") else 3
        return (1, chans, 32, 32)
    return (1, 3, 224, 224)


def _load(spec: str, shape: tuple[int, ...] | None,
          trust_factory: bool = False) -> tuple[torch.nn.Module, tuple, Any, str]:
    """(original model, example inputs, PruneResult or None, factory spec).
    A saved directory's factory must be a registry model unless ``trust_factory``."""
    from . import io

    if _is_saved(spec):
        meta = io.read_meta(spec)
        build = io.saved_factory(spec, trust_factory=trust_factory, meta=meta)
        res = io.load(spec, build)
        x = tuple(torch.randn(s) for s in meta["input_shapes"])
        return build().eval(), x, res, meta.get("model_factory") or ""
    if Path(spec).is_dir():
        raise UsageError(f"{spec} is a directory but not an fxprune save (no meta.json)")
    try:
        model = resolve_factory(spec)().eval()
    except SpecError as e:
        raise UsageError(str(e)) from e
    return model, (torch.randn(shape or _default_shape(spec)),), None, spec


def _resolve_ignore(model: torch.nn.Module, names: Sequence[str]) -> list[torch.nn.Module]:
    mods = []
    for name in names:
        try:
            mods.append(model.get_submodule(name))
        except AttributeError:
            known = [n for n, _ in model.named_children()]
            raise UsageError(f"--ignore {name}: the model has no submodule {name!r} "
                             f"(top-level children: {', '.join(known)})") from None
    return mods


def _counts_table(rows: Sequence[tuple[str, Any]], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("model", "MACs", "params", "MACs kept", "params kept"):
        t.add_column(col, justify="left" if col == "model" else "right")
    base = rows[0][1]
    for name, c in rows:
        t.add_row(name, f"{c.macs / 1e6:,.2f}M", f"{c.params / 1e6:,.3f}M",
                  f"{c.macs / base.macs:.1%}", f"{c.params / base.params:.1%}")
    return t


# --------------------------------------------------------------------- commands
def cmd_inspect(args: argparse.Namespace) -> int:
    import fxprune

    model, x, res, spec = _load(args.model, args.input_shape, args.trust_factory)
    target = res.module if res is not None else model
    ignore = _resolve_ignore(target, args.ignore)
    with err.status(f"analysing {escape(spec)}…"):
        cg = fxprune.analyze(target, x, ignore=ignore)
        counts = fxprune.count(target, x)
    t = Table(title=f"{escape(spec)}: {len(cg.groups)} prunable groups", title_justify="left")
    for col in ("id", "size", "members", "params"):
        t.add_column(col, justify="right")
    for g in cg.groups:
        params = sum(1 for m in g.members if m.kind == "param")
        t.add_row(escape(str(g.id)), str(g.size), str(len(g.members)), str(params))
    out.print(t)
    if cg.frozen:
        f = Table(title=f"{len(cg.frozen)} frozen groups (kept whole)", title_justify="left")
        for col in ("id", "members", "reason"):
            f.add_column(col, justify="left" if col == "reason" else "right")
        for g in cg.frozen:
            f.add_row(escape(str(g.id)), str(len(g.members)),
                      escape(g.describe()) or "ignored / uncoupled")
        out.print(f)
    out.print(f"MACs {counts.macs / 1e6:,.2f}M   params {counts.params / 1e6:,.3f}M   "
              f"input {tuple(x[0].shape)}")
    out.print(f"frontend {cg.frontend}: {escape(cg.frontend_reason)}")  # frontend_export.py
    if args.latency:
        _inspect_latency(cg, x, args)
    return 0


def _inspect_latency(cg: Any, x: tuple, args: argparse.Namespace) -> None:
    """``inspect --latency``: the per-layer latency table (fxprune/latency_report.py)."""
    from .latency_report import latency_report

    with err.status(f"timing layers on {args.backend}…"):
        rep = latency_report(cg, x, args.backend, args.batch, args.threads)
    out.print(rep.table(top=args.top))


def _report_check(res: Any) -> None:
    """What prune()'s self-check measured (it raises VerificationError on a wrong rewrite)."""
    mixing = [g.id for g in res.graph.groups if g.mixing and res.plan.removed.get(g.id)]
    note = f" (exact groups only: {len(mixing)} pruned groups mix channels)" if mixing else ""
    if res.oracle_diff is None:
        out.print(f"verified: shapes only{note}")
    else:
        on = " and ".join("x".join(map(str, s)) for s in res.oracle_inputs)
        where = f" on inputs {on}" if on else ""
        out.print(f"verified: max relative difference {res.oracle_diff:.1e} from the "
                  f"dead-unit oracle{where}{note}")


def _check_options(criterion: str, options: Sequence[tuple[str, object]]) -> None:
    """--option KEY=VALUE must name an option of the criterion (one-line usage error)."""
    from .arguments import closest
    from .criteria import criterion_options

    try:
        accepted = criterion_options(criterion)
    except FxPruneError as e:
        raise UsageError(f"--criterion {criterion}: {e}") from None
    for key, _ in options:
        if key not in accepted:
            guess = closest(key, accepted)
            did = f"did you mean {guess}? " if guess else ""
            takes = ", ".join(sorted(accepted)) or "no options"
            raise UsageError(f"--option {key}: criterion {criterion!r} has no option {key!r}; "
                             f"{did}it takes {takes}")


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE for a criterion setting; VALUE is read as int, float, bool or string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


def _calibration(spec: str | None, x):
    """random:N (N batches shaped like the input), cifar10:N or digits:N (N batches of 64)."""
    if not spec:
        return None
    x = x[0] if isinstance(x, (tuple, list)) else x
    kind, _, n = spec.partition(":")
    n = int(n or 8)
    if kind == "random":
        gen = torch.Generator().manual_seed(0)
        return [torch.randn(x.shape, generator=gen) for _ in range(n)]
    from . import data

    if kind not in ("cifar10", "digits"):
        raise UsageError(f"--calibration: unknown data {kind!r}; use random:N, cifar10:N or digits:N")
    ds = data.cifar10(train=False, subset=64 * n, augment=False) if kind == "cifar10" else \
        data.digits(train=True, size=x.shape[-1])
    batches = [ds[i] for i in range(min(len(ds), 64 * n))]
    xs = torch.stack([b[0] for b in batches]).split(64)
    ys = torch.tensor([int(b[1]) for b in batches]).split(64)
    return list(zip(xs, ys))


def cmd_prune(args: argparse.Namespace) -> int:
    import fxprune

    from . import io

    if args.model.startswith("hf:"):  # a local Hugging Face checkpoint in, one out
        from .hf_cli import prune_command

        return prune_command(args, out, err)

    _check_options(args.criterion, args.option)
    model, x, _, spec = _load(args.model, args.input_shape, args.trust_factory)
    kw = dict(criterion=args.criterion, ignore=_resolve_ignore(model, args.ignore),
              global_ranking=args.global_ranking, round_to=args.round_to,
              calibration=_calibration(args.calibration, x), **dict(args.option))
    with err.status(f"pruning and checking {escape(spec)}…"):  # the CLI always checks
        if args.target_latency is not None:  # measured latency on a backend
            res = fxprune.prune(model, x, target_latency=args.target_latency, backend=args.backend,
                                batch_size=args.batch, threads=args.threads, check=True,
                                latency_objective=args.latency_objective, **kw)
        elif args.target_macs is None:  # a criterion preset may set its own ratios
            res = fxprune.prune(model, x, ratio=0.5 if args.ratio is None else args.ratio,
                                check=True, **kw)
        else:  # a budget: global ranking, bisection on the ratio
            res = fxprune.prune(model, x, target_macs=args.target_macs, check=True, **kw)
    _report_check(res)
    with err.status(f"saving to {args.out}…"):
        io.save(args.out, res, onnx=not args.no_onnx, example_inputs=x, factory=spec)
    c0, c1 = fxprune.count(model, x), fxprune.count(res.module, x)
    out.print(_counts_table([("original", c0), ("pruned", c1)], f"{escape(spec)} pruned"))
    files = ", ".join(sorted(p.name for p in Path(args.out).iterdir()))
    out.print(f"wrote {escape(str(args.out))}: {files}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    backends = args.backend or ["torch-cpu", "onnxruntime"]
    for b in backends:
        if b not in bench.BACKENDS:
            raise UsageError(f"--backend {b}: unknown; choose from {', '.join(bench.BACKENDS)}")
    model, x, res, spec = _load(args.model, args.input_shape, args.trust_factory)
    opts = dict(batch_sizes=args.batch, warmup=args.warmup, repeats=args.repeats,
                threads=args.threads)
    with err.status(f"timing {escape(spec)} on {', '.join(backends)}…"):
        if res is not None:
            report = bench.speedup(model, res, x, backends=backends, **opts)
            tables, data = [report.table()], report.to_dict()
        else:
            reps = [bench.latency(model, x, backend=b, **opts) for b in backends]
            tables, data = [r.table() for r in reps], [r.to_dict() for r in reps]
    for t in tables:
        out.print(t)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        out.print(f"wrote {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    demo.main(out=args.out, epochs=args.epochs, quick=args.quick)
    return 0


# ----------------------------------------------------------------------- parser
def _latency_options(s: argparse.ArgumentParser) -> None:
    """--backend/--batch/--threads of --latency and --target-latency."""
    from .bench.backends import BACKENDS

    s.add_argument("--backend", default="onnxruntime", choices=list(BACKENDS),
                   help="latency backend (default onnxruntime)")
    s.add_argument("--batch", type=_positive, default=1, metavar="N",
                   help="batch size the latency is measured at (default 1)")
    s.add_argument("--threads", type=_positive, default=1, metavar="N",
                   help="backend threads for latency (default 1)")


def build_parser() -> argparse.ArgumentParser:
    from .latency_select import OBJECTIVES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("model", metavar="MODEL", help="resnet18, timm:NAME, cifar:NAME, "
                       "package.module:factory, or a saved directory")
    model.add_argument("--input-shape", type=_shape, metavar="N,C,H,W",
                       help="example input shape (default 1,3,224,224; 32x32 for cifar:)")
    model.add_argument("--trust-factory", action="store_true",
                       help="let a saved directory's meta.json name a package.module:factory "
                            "(imports and runs it; only for directories you trust)")
    p = _Parser(prog="fxprune", description="Structured pruning as a torch.fx compiler pass.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("inspect", parents=[common, model], help="pruning groups, MACs, params")
    s.add_argument("--ignore", nargs="+", default=[], metavar="NAME", help="layers kept whole")
    _latency_options(s)
    s.add_argument("--latency", action="store_true",
                   help="time every layer on --backend: the per-layer table, where the time goes")
    s.add_argument("--top", type=_positive, default=None, metavar="N",
                   help="with --latency: show the N slowest layers only")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("prune", parents=[common, model], help="prune and save a model")
    how = s.add_mutually_exclusive_group(required=False)
    how.add_argument("--ratio", type=_ratio, help="fraction of each group's channels removed (default 0.5)")
    how.add_argument("--target-macs", type=_fraction, metavar="F",
                     help="fraction of the original MACs to keep (searches the ratio)")
    how.add_argument("--target-latency", type=_fraction, metavar="F",
                     help="fraction of the original's measured latency on --backend to keep")
    _latency_options(s)
    s.add_argument("--latency-objective", default=OBJECTIVES[0], choices=OBJECTIVES,
                   help="what --target-latency's width search keeps: importance-weighted "
                        "MACs (default) or importance alone (HALP)")
    s.add_argument("--criterion", default="l1", help="importance criterion (default l1): "
                   "l1, l2, random, l1-filter, slimming, sss, thinet, lasso, taylor")
    s.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="criterion setting, e.g. preset=resnet56-a or percent=0.4 (repeatable)")
    s.add_argument("--calibration", metavar="DATA:N",
                   help="calibration batches for data-driven criteria: random:N, cifar10:N, digits:N")
    s.add_argument("--ignore", nargs="+", default=[], metavar="NAME", help="layers kept whole")
    s.add_argument("--global", dest="global_ranking", action="store_true",
                   help="rank channels across groups instead of per group")
    s.add_argument("--round-to", type=_positive, default=1, metavar="N",
                   help="keep channel counts multiples of N (8/16 suit GPUs)")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory")
    s.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("bench", parents=[common, model], help="latency / speed-up table")
    s.add_argument("--backend", action="append", metavar="B",
                   help="torch-cpu, torch-cuda, onnxruntime, onnxruntime-cuda, tensorrt "
                        "(repeatable; default torch-cpu and onnxruntime)")
    s.add_argument("--batch", type=_positive, nargs="+", default=[1, 32], metavar="N")
    s.add_argument("--warmup", type=int, default=10)
    s.add_argument("--repeats", type=_positive, default=50)
    s.add_argument("--threads", type=_positive, default=None)
    s.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("demo", parents=[common], help="train, prune, fine-tune, measure")
    s.add_argument("--out", default="demo_out", metavar="DIR")
    s.add_argument("--epochs", type=_positive, default=None)
    s.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to sys.exit)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as e:
        if args.debug:
            raise
        usage = isinstance(e, (UsageError, SpecError))
        known = isinstance(e, (FxPruneError, OSError, ValueError))
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or \
            type(e).__name__  # one line, however the error is worded
        hint = "" if known else " (an fxprune bug? run with --debug for the traceback)"
        print(f"fxprune {args.command}: {'error' if known else 'internal error'}: {msg}{hint}",
              file=sys.stderr)
        return 2 if usage else 1


if __name__ == "__main__":
    sys.exit(main())
