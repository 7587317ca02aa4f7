"""Shared plumbing for the paper-reproduction experiments in `bench/experiments/`.

`rethinking.py` (Liu et al. 2019) and `rewinding.py` (Renda et al. 2020) both need:
seeded CIFAR-10 subsets fed to the training loop in whole batches, the groups
that live inside residual blocks (never the residual stream), a Network Slimming
selection, weight rewinding through a structured plan (`rewind_from_plan`) or
through unstructured masks (`rewind_masked`), cached evaluations so an
interrupted run resumes where it stopped, and atomic JSON / markdown / PNG output.
"""
from __future__ import annotations

import argparse
import json
import operator
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

import fxprune
from fxprune.data import ImageTensorDataset, cifar10
from fxprune.errors import FxPruneError
from fxprune.passes.slimming_sparsity import slimming_threshold
from fxprune.plan import PruningPlan
from fxprune.select import make_plan
from fxprune.train import EpochCallback, RewindFn, TrainResult, evaluate
from fxprune.train.checkpoint import atomic_write_text

__all__ = [
    "add_common_args", "block_conv_groups", "build_model", "cifar_data",
    "criterion_available",
    "epoch_printer", "evaluate_cached", "example_input", "internal_groups", "log", "md_table",
    "measure", "rewind_from_plan", "rewind_masked", "setup_torch", "slimming_prune",
    "total_wall_time", "write_outputs",
]

_T0 = time.perf_counter()


def setup_torch(threads: int) -> None:
    """Fix the CPU thread count (never more than the 2 cores the CPU machines have)."""
    torch.set_num_threads(max(1, threads))


def log(msg: str) -> None:
    """One timestamped line on stdout, flushed (the cpu runs are polled from a log file)."""
    print(f"[{time.perf_counter() - _T0:7.0f}s] {msg}", flush=True)


def add_common_args(p: argparse.ArgumentParser, presets: Sequence[str], out: str) -> None:
    """`--preset`, `--out`, `--work`, `--threads`, `--device`, `--report-only`."""
    p.add_argument("--preset", choices=presets, default="cpu")
    p.add_argument("--out", default=out, help="JSON path; the .md and .png go beside it")
    p.add_argument("--work", default=None,
                   help="run directory (checkpoints; default runs/experiments/<name>-<preset>)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on the shared 2-core machine, 2 threads "
                        "ran these small convs 4-5x slower than 1 while other jobs ran)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda:0 ...")
    p.add_argument("--report-only", action="store_true",
                   help="re-write the markdown and plot from the existing JSON; train nothing")


# --------------------------------------------------------------------------- data

def cifar_data(train_size: int | None, test_size: int | None,
               seed: int = 0) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """Seeded, class-balanced CIFAR-10 subsets (None = the whole split); train augmented.
    ``DataLoader`` reads them a whole batch at a time (``ImageTensorDataset.__getitems__``)."""
    train = cifar10(train=True, subset=train_size, seed=seed, augment=True)
    test = cifar10(train=False, subset=test_size, seed=seed, augment=False)
    return train, test


def example_input() -> torch.Tensor:
    return torch.zeros(1, 3, 32, 32)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """`fxprune.models.get_model(name)`, plus any CIFAR ResNet depth 6n+2 ("resnet8")."""
    from fxprune.models import CifarResNet, get_model, list_models

    if name in list_models() or not name.startswith("resnet"):
        return get_model(name, **kwargs)
    depth = int(name[len("resnet"):])
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {name!r}")
    return CifarResNet((depth - 2) // 6, **kwargs)


# --------------------------------------------------------------------------- groups

def _is_add(node: torch.fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in (operator.add, operator.iadd, torch.add)
    return node.op == "call_method" and node.target in ("add", "add_")


def internal_groups(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """{group id: size} of the prunable groups that no residual addition touches: the
    channels inside residual blocks (in a plain VGG, every group). Never the stream."""
    cg = fxprune.analyze(model, x, warn=False)
    nodes = {n.name: n for n in cg.gm.graph.nodes}
    out = {}
    for g in cg.groups:
        names = {m.key[2:] for m in g.members if m.key.startswith("n:")}
        if not any(_is_add(nodes[n]) for n in names if n in nodes):
            out[g.id] = g.size
    return out


def block_conv_groups(model: nn.Module, x: torch.Tensor, convs: Sequence[str]) -> dict[str, str]:
    """For each conv module name, the id of the group holding its output channels."""
    cg = fxprune.analyze(model, x, warn=False)
    want = {f"p:{c}.weight": c for c in convs}
    found = {want[m.key]: g.id for g in cg.groups for m in g.params()
             if m.key in want and m.dim == 0}
    missing = sorted(set(convs) - set(found))
    if missing:
        raise FxPruneError(f"no prunable output-channel group for convs {missing}")
    return found


def criterion_available(name: str) -> bool:
    """Whether `fxprune.prune(..., criterion=name)` exists in this checkout."""
    from fxprune.criteria import get_criterion
    try:
        get_criterion(name)
    except FxPruneError:
        return False
    return True


# --------------------------------------------------------------------------- slimming

def _local_slimming_plan(model: nn.Module, x: torch.Tensor, percent: float) -> fxprune.PruneResult:
    """Network Slimming selection: one global threshold on |gamma| of every BatchNorm
    that sits in a prunable group; channels strictly below it go (each group keeps
    its largest-|gamma| channel at least)."""
    cg = fxprune.analyze(model, x, warn=False)
    bns = {f"p:{n}.weight": m for n, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None}
    per_group: dict[str, torch.Tensor] = {}
    for g in cg.groups:
        for m in g.params():
            if m.key in bns and m.dim == 0:
                gamma = bns[m.key].weight.detach().abs().cpu()
                scores = per_group.setdefault(g.id, torch.full((g.size,), float("inf")))
                idx, unit = torch.tensor(m.index.tolist()), torch.tensor(m.unit.tolist())
                scores[unit] = torch.minimum(scores[unit], gamma[idx])
    t = slimming_threshold(list(per_group.values()), percent)
    removed = {}
    for gid, s in per_group.items():
        drop = (s < t).nonzero().flatten().tolist()
        if len(drop) == len(s):
            drop.remove(int(s.argmax()))
        if drop:
            removed[gid] = drop
    plan = make_plan(cg, removed, "slimming", {"percent": percent, "threshold": t,
                                               "selection": "bench local fallback"})
    return fxprune.apply_plan(model, x, plan)


def slimming_prune(model: nn.Module, x: torch.Tensor,
                   percent: float) -> tuple[fxprune.PruneResult, str]:
    """Prune `percent` of all BN channels by one global |gamma| threshold. Uses the
    `slimming` criterion pass when it exists, else the local selection above.
    Returns the result and which selection made it."""
    if criterion_available("slimming"):
        return fxprune.prune(model, x, criterion="slimming", percent=percent), "criterion slimming"
    return _local_slimming_plan(model, x, percent), "local global-|gamma| threshold"


# --------------------------------------------------------------------------- rewinding

def rewind_from_plan(original_model_factory: Callable[[], nn.Module], example_inputs: Any,
                     plan: PruningPlan | Sequence[PruningPlan]) -> RewindFn:
    """A `rewind_weights(pruned_model, saved_state_dict)` hook for `weight_rewind`.

    Builds a fresh full model, loads the saved full-size state dict into it, and
    replays `plan` (or several plans in order, for iterative pruning) with
    `fxprune.apply_plan`: the rewound weights come out index-selected to the
    pruned shapes. Returns that module's state dict, which `weight_rewind` loads
    into the pruned model (`load_matching` checks every name and shape).
    """
    plans = [plan] if isinstance(plan, PruningPlan) else list(plan)

    def rewind_weights(pruned_model: nn.Module,
                       saved: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        module: nn.Module = original_model_factory()
        module.load_state_dict(saved)
        for p in plans:
            module = fxprune.apply_plan(module, example_inputs, p).module
        return module.state_dict()

    return rewind_weights


def rewind_masked(pruned_model: nn.Module,
                  saved: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rewind hook for unstructured masks: each masked tensor's raw value
    (`<m>.parametrizations.weight.original`) takes the saved `<m>.weight` times its
    mask; masks and every unmasked entry are copied through by name."""
    out = {}
    for k, v in pruned_model.state_dict().items():
        if ".parametrizations." not in k:
            out[k] = saved[k]
            continue
        mod, _, rest = k.partition(".parametrizations.")
        tname, _, leaf = rest.partition(".")
        if leaf == "original":
            mask = pruned_model.get_submodule(mod).parametrizations[tname][0].mask
            out[k] = saved[f"{mod}.{tname}"] * mask.to(saved[f"{mod}.{tname}"].dtype)
        else:
            out[k] = v  # the masks themselves
    return out


# --------------------------------------------------------------------------- measuring

def measure(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Params and MACs (`fxprune.count`), plus nonzero conv+linear weights and their
    density as the forward pass sees them (masked entries count as zeros).

    Works on masked models as they are: `fold(model, copy=True)` is avoided because
    the copy shares its parametrized classes with `model`, and removing the
    parametrization from the copy deletes the `weight` property from `model` too.
    """
    from fxprune.passes.unstructured import sparsity_report

    c = fxprune.count(model, x)
    total = sparsity_report(model)[-1]
    return {"params": c.params, "macs": c.macs, "nonzero_params": c.params - total.zeros,
            "density": 1 - total.sparsity}


def evaluate_cached(res: TrainResult, test: Dataset, device: str) -> float:
    """Test accuracy of a finished run, kept in `<out_dir>/eval.json` for resumes."""
    path = Path(res.out_dir) / "eval.json" if res.out_dir is not None else None
    if path is not None and path.exists():
        doc = json.loads(path.read_text())
        if doc.get("epochs") == len(res.history):
            return float(doc["acc"])
    acc = evaluate(res.model, test, device=device)["acc"]
    if path is not None:
        atomic_write_text(path, json.dumps({"acc": acc, "epochs": len(res.history)}))
    return acc


def total_wall_time(work: Path, seconds: float) -> float:
    """Add this invocation's wall time to `<work>/wall_time.json`; return the total over
    every invocation on that run directory (a resumed run reports the whole cost)."""
    path = Path(work) / "wall_time.json"
    total = seconds + (json.loads(path.read_text())["wall_s"] if path.exists() else 0.0)
    Path(work).mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"wall_s": total}))
    return total


def epoch_printer(name: str, total: int) -> EpochCallback | None:
    """Per-epoch log lines when stderr is not a terminal (the loop's rich bars are off)."""
    if sys.stderr.isatty():
        return None

    def on_epoch_end(epoch: int, rec: dict[str, float]) -> None:
        log(f"  {name} epoch {epoch + 1}/{total} lr {rec['lr']:.4g} "
            f"loss {rec['train_loss']:.3f} train acc {rec['train_acc']:.3f} "
            f"({rec['time']:.0f}s)")

    return on_epoch_end


# --------------------------------------------------------------------------- output

def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_outputs(out_json: str | Path, payload: dict, markdown: str,
                  plot: Callable[[Path], None]) -> tuple[Path, Path, Path]:
    """Write `<out>.json`, `<out>.md` and `<out>.png` atomically (temp file + replace)."""
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    md, png = out.with_suffix(".md"), out.with_suffix(".png")
    atomic_write_text(out, json.dumps(payload, indent=1) + "\n")
    atomic_write_text(md, markdown)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{png.name}", suffix=".tmp.png")
    os.close(fd)
    try:
        plot(Path(tmp))
        os.replace(tmp, png)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out, md, png


def save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """Save a matplotlib figure atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)


def experiment_main(argv: list[str] | None, doc: str, name: str, presets: Sequence[str],
                    run: Callable[[str, Path, str], dict], markdown: Callable[[dict], str],
                    plot: Callable[[dict, Path], None]) -> int:
    """The command line of an experiment: run a preset (or re-read it with
    ``--report-only``), then write ``bench/results/<name>.{json,md,png}`` and print the table."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    add_common_args(ap, list(presets), f"bench/results/{name}.json")
    args = ap.parse_args(argv)
    setup_torch(args.threads)
    work = Path(args.work or f"runs/experiments/{name}-{args.preset}")
    if args.report_only:
        payload = json.loads(Path(args.out).read_text())
    else:
        payload = run(args.preset, work, args.device)
    md = markdown(payload)
    paths = write_outputs(args.out, payload, md, lambda path: plot(payload, path))
    print(md)
    log(f"wrote {', '.join(map(str, paths))}")
    return 0


def cached_main(argv: list[str] | None, doc: str, presets: Sequence[str],
                run: Callable[[str, Path, str, Path | None], dict], cache_help: str) -> dict:
    """The command line of the search experiments (jackpot, tas): a preset, the results
    folder, the device and where to keep checkpoints."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(presets), default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", type=Path, default=None,
                    help=f"checkpoints of {cache_help} (default $FXPRUNE_CACHE/bench)")
    a = ap.parse_args(argv)
    return run(a.preset, a.out, a.device, a.cache)
