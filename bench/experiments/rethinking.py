"""Liu et al. 2019, *Rethinking the Value of Network Pruning*, at small scale.

For each arm: train the original (E epochs; Network Slimming arms with the BN
L1 penalty s=1e-4), prune it, then retrain the pruned architecture three ways:

- **fine-tune**: the inherited weights, constant LR 1e-3 for E/4 epochs (40 of 160);
- **Scratch-E**: re-initialised, the original's E-epoch schedule;
- **Scratch-B**: re-initialised, E x MACs_full / MACs_pruned epochs (capped at 2x,
  as in the paper), LR / 10 at 50% and 75%.

Arms: L1-filter pruning (Li et al. 2017) of a CIFAR ResNet in the style of
ResNet-56-A/B (first conv of each block, per-stage ratios), VGG-16-A (paper
preset), and Network Slimming on a VGG-19 (global |gamma| threshold).

    python bench/experiments/rethinking.py --preset cpu      # ~11 min, shared 2-core CPU
    python bench/experiments/rethinking.py --preset paper    # the paper's schedule, GPU

Every run checkpoints each epoch under `--work`; rerunning the same command
resumes. Results: `bench/results/rethinking.{json,md,png}`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fxprune
from fxprune.models import init_weights
from fxprune.passes.slimming_sparsity import bn_sparsity_hook
from fxprune.train import (TrainConfig, evaluate, fine_tune, scratch_b, scratch_b_epochs, scratch_e,
                           train_original)
from fxprune.train.checkpoint import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

__all__ = ["Arm", "Original", "Preset", "PRESETS", "run", "main"]


@dataclass(frozen=True)
class Original:
    """An unpruned model to train: `common.build_model(model, **kwargs)`, optional slimming
    penalty `sparsity_s` (Network Slimming's s; VGG: 1e-4)."""

    model: str
    kwargs: dict = field(default_factory=dict)
    sparsity_s: float | None = None


@dataclass(frozen=True)
class Arm:
    """One pruning of one original: `l1-filter` (a `preset`, or per-stage ratios of the
    first conv of every residual block) or `slimming` (`percent` of all BN channels)."""

    name: str
    original: str
    method: str
    setting: dict


@dataclass(frozen=True)
class Preset:
    train_size: int | None
    test_size: int | None
    epochs: int
    ft_epochs: int
    batch_size: int
    originals: dict
    arms: tuple
    max_factor: float = 2.0


_TINY_VGG = (8, "M", 8, "M", 16, "M", 16, "M", 16)
_VGG11_Q = (16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128)  # VGG-11 at 1/4 width
_B = {"stage_ratios": [0.6, 0.3, 0.1]}  # ResNet-56-B's per-stage ratios
PRESETS: dict[str, Preset] = {
    "smoke": Preset(128, 64, 2, 1, 64,
                    {"resnet": Original("resnet8", {"width": 4}),
                     "vgg-slim": Original("vgg19", {"cfg": _TINY_VGG}, 1e-4)},
                    (Arm("resnet8w4-B", "resnet", "l1-filter", _B),
                     Arm("vgg-tiny-slim-50%", "vgg-slim", "slimming", {"percent": 0.5}))),
    "cpu": Preset(2000, 2000, 10, 3, 128,
                  {"resnet": Original("resnet20"),
                   "vgg-slim": Original("vgg19", {"cfg": _VGG11_Q}, 1e-4)},
                  (Arm("resnet20-B", "resnet", "l1-filter", _B),
                   Arm("vgg11/4-slim-50%", "vgg-slim", "slimming", {"percent": 0.5}))),
    "paper": Preset(None, None, 160, 40, 64,
                    {"resnet56": Original("resnet56"), "vgg16": Original("vgg16"),
                     "vgg19-slim": Original("vgg19", {}, 1e-4)},
                    (Arm("resnet56-A", "resnet56", "l1-filter", {"preset": "resnet56-a"}),
                     Arm("resnet56-B", "resnet56", "l1-filter", {"preset": "resnet56-b"}),
                     Arm("vgg16-A", "vgg16", "l1-filter", {"preset": "vgg16-a"}),
                     Arm("vgg19-slim-70%", "vgg19-slim", "slimming", {"percent": 0.7}))),
}


def stage_layer_ratios(model: nn.Module, stage_ratios: list[float]) -> dict[str, float]:
    """{first conv of every block of stage s: stage_ratios[s]} for a CIFAR ResNet."""
    out = {}
    for s, r in enumerate(stage_ratios):
        for j, _ in enumerate(getattr(model, f"layer{s + 1}")):
            if r > 0:
                out[f"layer{s + 1}.{j}.conv1"] = float(r)
    return out


def prune_arm(arm: Arm, model: nn.Module, x: torch.Tensor) -> tuple[fxprune.PruneResult, str]:
    """Prune `model` as `arm` says; also return which selection did it."""
    if arm.method == "slimming":
        return C.slimming_prune(model, x, arm.setting["percent"])
    have = C.criterion_available("l1-filter")
    if "preset" in arm.setting:
        if not have:
            raise SystemExit(f"{arm.name}: preset {arm.setting['preset']} needs the l1-filter "
                             "criterion pass, which this checkout lacks")
        return (fxprune.prune(model, x, criterion="l1-filter", preset=arm.setting["preset"]),
                f"criterion l1-filter, preset {arm.setting['preset']}")
    ratios = stage_layer_ratios(model, arm.setting["stage_ratios"])
    if have:
        return (fxprune.prune(model, x, criterion="l1-filter", layer_ratios=ratios),
                "criterion l1-filter, per-layer ratios")
    groups = C.block_conv_groups(model, x, list(ratios))
    ratio = {groups[c]: r for c, r in ratios.items()}
    return (fxprune.prune(model, x, criterion="l1", ratio=ratio),
            "fallback: criterion l1 with per-group ratios")


def _train_original(key: str, o: Original, data, cfg: TrainConfig, work: Path) -> dict:
    """Train (or resume) one original; return its model, accuracy and counts."""
    x = C.example_input()
    torch.manual_seed(cfg.seed)
    net = C.build_model(o.model, **o.kwargs)
    kw: dict[str, Any] = {}
    if o.sparsity_s:
        hook = bn_sparsity_hook(o.sparsity_s)
        kw["grad_hook"] = lambda model, _opt: hook(model)
    C.log(f"original {key}: {o.model} {o.kwargs or ''} ({cfg.epochs} epochs)")
    res = train_original(net, data[0], None, cfg.replace(out_dir=work / key), rewind_epochs=(),
                         resume=True, on_epoch_end=C.epoch_printer(key, cfg.epochs), **kw)
    acc = C.evaluate_cached(res, data[1], cfg.device)
    C.log(f"original {key}: test acc {acc:.4f}")
    return {"model": res.model.cpu(), "acc": acc, "counts": C.measure(res.model, x),
            "time": sum(h["time"] for h in res.history)}


def _retrain(arm: Arm, pruned: nn.Module, data, cfg: TrainConfig, p: Preset, work: Path,
             macs: tuple[int, int]) -> dict[str, dict]:
    """Fine-tune, Scratch-E and Scratch-B of one pruned architecture, by name."""
    init = {"init": init_weights}  # the models' own Kaiming init, as in the paper
    b_kw = {"macs_full": macs[0], "macs_pruned": macs[1], "max_factor": p.max_factor, **init}
    runs = {"fine-tune": (fine_tune, {"lr": 1e-3, "epochs": p.ft_epochs}, p.ft_epochs),
            "scratch-e": (scratch_e, init, cfg.epochs),
            "scratch-b": (scratch_b, b_kw, scratch_b_epochs(cfg.epochs, *macs,
                                                             max_factor=p.max_factor))}
    out: dict[str, dict] = {}
    for name, (recipe, kw, epochs) in runs.items():
        C.log(f"{arm.name}: {name}")
        res = recipe(pruned, data[0], None, cfg.replace(out_dir=work / name), resume=True,
                     on_epoch_end=C.epoch_printer(f"{arm.name} {name}", epochs), **kw)
        acc = C.evaluate_cached(res, data[1], cfg.device)
        out[name] = {"epochs": len(res.history), "lr": res.history[0]["lr"], "acc": acc,
                     "time": sum(h["time"] for h in res.history)}
        C.log(f"{arm.name}: {name} test acc {acc:.4f} ({out[name]['epochs']} epochs)")
    return out


def _run_arm(arm: Arm, orig: dict, data, cfg: TrainConfig, p: Preset, work: Path) -> dict:
    x = C.example_input()
    pr, selection = prune_arm(arm, orig["model"], x)
    base = work / arm.name.replace("/", "_")
    base.mkdir(parents=True, exist_ok=True)
    atomic_write_text(base / "plan.json", pr.plan.to_json(indent=1))
    counts = C.measure(pr.module, x)
    acc0 = evaluate(pr.module, data[1], device=cfg.device)["acc"]
    C.log(f"{arm.name}: pruned by {selection}: MACs {orig['counts']['macs'] / 1e6:.2f}M -> "
          f"{counts['macs'] / 1e6:.2f}M, acc before retraining {acc0:.4f}")
    retrain = _retrain(arm, pr.module.cpu(), data, cfg, p, base,
                       (orig["counts"]["macs"], counts["macs"]))
    return {"arm": arm.name, "original": arm.original, "method": arm.method,
            "setting": arm.setting, "selection": selection,
            "full": {**orig["counts"], "acc": orig["acc"]},
            "pruned": {**counts, "acc_no_retrain": acc0}, "retrain": retrain}


def run(preset: str, work: Path, device: str) -> dict:
    """Run every arm of `preset` (resuming whatever `work` holds); return the payload."""
    p = PRESETS[preset]
    t0, c0 = time.perf_counter(), time.process_time()
    data = C.cifar_data(p.train_size, p.test_size)
    cfg = TrainConfig(epochs=p.epochs, lr=0.1, batch_size=p.batch_size, weight_decay=1e-4,
                      device=device, seed=0)
    C.log(f"rethinking/{preset}: {len(data[0])} train, {len(data[1])} test images, "
          f"E={p.epochs}, fine-tune {p.ft_epochs} epochs, batch {p.batch_size}")
    originals: dict[str, dict] = {}
    arms = []
    for arm in p.arms:
        if arm.original not in originals:
            originals[arm.original] = _train_original(arm.original, p.originals[arm.original],
                                                      data, cfg, work)
        arms.append(_run_arm(arm, originals[arm.original], data, cfg, p, work))
    return {"experiment": "rethinking", "preset": preset,
            "config": {**{k: v for k, v in asdict(p).items() if k not in ("arms", "originals")},
                       "originals": {k: asdict(o) for k, o in p.originals.items()},
                       "lr": cfg.lr, "weight_decay": cfg.weight_decay, "milestones": [0.5, 0.75],
                       "ft_lr": 1e-3, "threads": torch.get_num_threads(), "device": device},
            "data": {"train": len(data[0]), "test": len(data[1])},
            "originals": {k: {"acc": o["acc"], "train_time_s": o["time"], **o["counts"]}
                          for k, o in originals.items()},
            "arms": arms, "anchors": ANCHORS, "wall_s": time.perf_counter() - t0,
            "wall_total_s": C.total_wall_time(work, time.perf_counter() - t0),
            "train_s": sum(o["time"] for o in originals.values())
            + sum(r["time"] for a in arms for r in a["retrain"].values()),
            "cpu_s": time.process_time() - c0}


# --------------------------------------------------------------------------- report

#: Published anchor (Liu et al. 2019, Table 1, L1-norm filter pruning, CIFAR-10, mean of 5 runs).
ANCHORS = [{"model": "VGG-16-A", "source": "Liu et al. 2019, Table 1 (L1-norm filter pruning)",
            "original": 93.63, "fine-tune": 93.41, "scratch-e": 93.62, "scratch-b": 93.78}]
_METHODS = ("fine-tune", "scratch-e", "scratch-b")


def _verdict(diff: float, noise: float, paper: str) -> str:
    if abs(diff) < noise:
        return f"{diff:+.2f} pts, within noise (2 s.e. = {noise:.2f} pts); paper: {paper}"
    word = "same sign as the paper" if diff > 0 else "**disagrees** with the paper"
    return f"{diff:+.2f} pts, {word} ({paper})"


def _agreement(payload: dict) -> list[str]:
    """One bullet per arm (sign of Scratch-B/E - fine-tune, fine-tune's loss), then a
    plain summary of where this run disagrees with the paper."""
    n = payload["data"]["test"]
    lines, against, weak_ft = [], [], []
    for a in payload["arms"]:
        acc = {m: 100 * a["retrain"][m]["acc"] for m in _METHODS}
        p = sum(acc.values()) / 300
        noise = 2 * 100 * (2 * p * (1 - p) / n) ** 0.5  # 2 s.e. of a difference of accuracies
        ft_loss = 100 * a["full"]["acc"] - acc["fine-tune"]
        lines.append(f"- **{a['arm']}**: Scratch-B - fine-tune "
                     + _verdict(acc["scratch-b"] - acc["fine-tune"], noise,
                                "Scratch-B >= fine-tune, +0.37 on VGG-16-A")
                     + "; Scratch-E - fine-tune "
                     + _verdict(acc["scratch-e"] - acc["fine-tune"], noise,
                                "Scratch-E about equal to fine-tune, +0.21 on VGG-16-A")
                     + f"; fine-tune loses {ft_loss:.2f} pts against the original "
                     "(paper: 0.22 on VGG-16-A).")
        against += [f"{a['arm']} ({m})" for m in ("scratch-b", "scratch-e")
                    if acc["fine-tune"] - acc[m] >= noise]
        weak_ft += [a["arm"]] if ft_loss >= noise else []
    summary = []
    if against:
        summary.append(f"fine-tuning beats training from scratch beyond the noise for "
                       f"{', '.join(against)}, which **disagrees** with the paper")
    if weak_ft:
        summary.append(f"fine-tuning recovers far less of the original accuracy than in the "
                       f"paper ({', '.join(weak_ft)}), so the gaps to Scratch-E/B are much "
                       "larger than the paper's few tenths of a point: a short, low-LR "
                       "fine-tune cannot undo heavy pruning of an unconverged network")
    lines.append("\nIn short: " + ("; ".join(summary) + "." if summary else
                                   "no comparison contradicts the paper beyond the noise of "
                                   "this small test set (see the 2 s.e. figures)."))
    return lines


def markdown(payload: dict) -> str:
    """The report: setup, results, published anchors, where we disagree."""
    c, d = payload["config"], payload["data"]
    rows = []
    for a in payload["arms"]:
        f, q = a["full"], a["pruned"]
        rows.append([a["arm"], a["selection"],
                     f"{f['params'] / 1e3:.0f}k -> {q['params'] / 1e3:.0f}k",
                     f"{f['macs'] / 1e6:.1f}M -> {q['macs'] / 1e6:.1f}M "
                     f"({q['macs'] / f['macs']:.0%})",
                     f"{100 * f['acc']:.2f}", f"{100 * q['acc_no_retrain']:.2f}"]
                    + [f"{100 * a['retrain'][m]['acc']:.2f} ({a['retrain'][m]['epochs']} ep)"
                       for m in _METHODS])
    anchors = [[x["model"], x["original"], x["fine-tune"], x["scratch-e"], x["scratch-b"],
                x["source"]] for x in payload["anchors"]]
    data = "full CIFAR-10" if c["train_size"] is None else \
        f"seeded class-balanced CIFAR-10 subset: {d['train']} train / {d['test']} test images"
    return "\n\n".join([
        f"# Rethinking the Value of Network Pruning: preset `{payload['preset']}`",
        f"Data: {data}. Original: {c['epochs']} epochs, SGD lr {c['lr']} (x0.1 at 50%/75%), "
        f"batch {c['batch_size']}, weight decay {c['weight_decay']}. Fine-tune: constant lr "
        f"{c['ft_lr']} for {c['ft_epochs']} epochs. Scratch-E: {c['epochs']} epochs; Scratch-B: "
        f"E x MACs_full/MACs_pruned epochs (at most {c['max_factor']:g}x), lr x0.1 at 50%/75%. "
        f"One seed. Device {c['device']}, torch threads: {c['threads']}. Training time (all runs' "
        f"epochs, from their checkpoints): {payload['train_s'] / 60:.1f} min; wall time "
        f"{payload['wall_total_s'] / 60:.1f} min over all invocations (the last one: "
        f"{payload['wall_s'] / 60:.1f} min wall, {payload['cpu_s'] / 60:.1f} min CPU).",
        "Models: " + "; ".join(
            f"`{k}` = {o['model']}({', '.join(f'{a}={v}' for a, v in o['kwargs'].items())})"
            + (f" trained with the BN L1 penalty s={o['sparsity_s']:g}" if o["sparsity_s"] else "")
            for k, o in c["originals"].items()) + ".",
        "## Results (test top-1 %)",
        C.md_table(["arm", "selection", "params", "MACs", "original", "pruned, no retrain",
                    "fine-tune", "Scratch-E", "Scratch-B"], rows),
        "## Published anchor (full CIFAR-10, 160 epochs)",
        C.md_table(["model", "original", "fine-tune", "Scratch-E", "Scratch-B", "source"],
                   anchors),
        "## Agreement with the paper",
        "\n".join(_agreement(payload)),
        "## Caveats\n\n" + "\n".join([
            "- The small presets train on a few thousand images for a few epochs: the "
            "originals are far from converged, so every method is also limited by training "
            "time, and one seed on a small test set leaves differences of a few points in "
            "the noise.",
            "- Scratch runs re-initialise with the models' own init "
            "(`fxprune.models.init_weights`: Kaiming-normal convs, unit BN), as the originals.",
            "- L1-filter arms prune the first conv of each residual block only (the residual "
            "stream is left alone); the small presets' ResNet arm applies the ResNet-56-B "
            "per-stage ratios to every block (the published skip lists exist only for ResNet-56/110).",
        ]),
    ]) + "\n"


def plot(payload: dict, path: Path) -> None:
    """Grouped bars per arm (original, fine-tune, Scratch-E, Scratch-B), anchor beside."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["original", "fine-tune", "Scratch-E", "Scratch-B"]
    groups = [(a["arm"], [a["full"]["acc"] * 100] + [a["retrain"][m]["acc"] * 100
                                                     for m in _METHODS]) for a in payload["arms"]]
    groups += [(f"{x['model']} (paper)", [x["original"], x["fine-tune"], x["scratch-e"],
                                          x["scratch-b"]]) for x in payload["anchors"]]
    fig, ax = plt.subplots(figsize=(2.6 * len(groups) + 1, 4))
    w = 0.2
    for i, lab in enumerate(labels):
        xs = [g + (i - 1.5) * w for g in range(len(groups))]
        bars = ax.bar(xs, [v[i] for _, v in groups], w, label=lab)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(groups)), [n for n, _ in groups])
    lo = min(min(v) for _, v in groups)
    ax.set_ylim(max(0, lo - 10), 100)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Rethinking the value of pruning, preset {payload['preset']}")
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    fig.tight_layout()
    C.save_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    return C.experiment_main(argv, __doc__, "rethinking", list(PRESETS), run, markdown, plot)


if __name__ == "__main__":
    raise SystemExit(main())
