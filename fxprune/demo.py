"""``fxprune demo``: the README's main job end to end, on data shipped with scikit-learn.

Train a CIFAR-style ResNet-20 (one input channel) on scikit-learn's 8x8 digits
upsampled to 32x32, prune half of every channel group by L1 norm (classifier kept),
fine-tune briefly, then print a before/after table (accuracy, params, MACs, ONNX
Runtime latency at batch 1, speed-up), save ``OUT/demo.png`` and the pruned model
directory ``OUT/pruned`` (reload it with ``fxprune.io.load``). About a minute on two
CPU cores; ``--quick`` takes seconds (smaller model, fewer samples, for smoke tests).
No network, no GPU.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

__all__ = ["main", "train_epochs", "accuracy"]


def _data(quick: bool) -> tuple[torch.Tensor, ...]:
    from .data import digits

    def stack(ds: Any, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = range(len(ds) if n is None else min(n, len(ds)))
        return (torch.stack([ds[i][0] for i in idx]),
                torch.tensor([int(ds[i][1]) for i in idx]))

    n_train, n_test = (256, 128) if quick else (None, None)
    return (*stack(digits(train=True, seed=0, size=32), n_train),
            *stack(digits(train=False, seed=0, size=32), n_test))


def train_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
                 progress: Progress, desc: str, batch_size: int = 64, seed: int = 0) -> list[float]:
    """SGD (momentum 0.9, wd 5e-4) with a cosine learning rate; returns per-epoch loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.15)
    task = progress.add_task(desc, total=steps)
    losses = []
    model.train()
    for _ in range(epochs):
        perm, total = torch.randperm(len(x), generator=gen), 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            progress.advance(task)
        losses.append(total / len(x))
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in eval mode."""
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def _latency_ms(module: nn.Module, x: torch.Tensor, quick: bool) -> tuple[float, str]:
    from .bench import latency

    for backend in ("onnxruntime", "torch-cpu"):
        rep = latency(module, x[:1], backend=backend, batch_sizes=(1,),
                      warmup=3 if quick else 20, repeats=10 if quick else 100)
        if not rep.skipped:
            return rep[1].median_ms, backend
    raise RuntimeError("no latency backend could run")


def _row(name: str, model: nn.Module, x: tuple, xs: torch.Tensor, ys: torch.Tensor,
         quick: bool) -> dict[str, Any]:
    import fxprune

    c = fxprune.count(model, x)
    ms, backend = _latency_ms(model, xs, quick)
    return {"model": name, "accuracy": accuracy(model, xs, ys), "params": int(c.params),
            "macs": int(c.macs), "latency_ms": ms, "backend": backend}


def _table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="fxprune demo: ResNet-20 on digits, 50% of channels pruned (L1)",
              title_justify="left")
    for col in ("model", "accuracy", "params", "MACs", f"{rows[0]['backend']} ms (batch 1)",
                "speed-up"):
        t.add_column(col, justify="left" if col == "model" else "right")
    base = rows[0]
    for r in rows:
        t.add_row(r["model"], f"{r['accuracy']:.1%}", f"{r['params'] / 1e3:,.1f}k",
                  f"{r['macs'] / 1e6:,.2f}M", f"{r['latency_ms']:.3f}",
                  f"{base['latency_ms'] / r['latency_ms']:.2f}x")
    return t


def _plot(path: Path, rows: list[dict[str, Any]], history: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    n = len(history["train"])
    a.plot(range(1, n + 1), history["train"], "o-", label="train")
    a.plot(range(n + 1, n + 1 + len(history["finetune"])), history["finetune"], "s-",
           label="fine-tune after pruning")
    a.set(xlabel="epoch", ylabel="training loss", title="training")
    a.xaxis.get_major_locator().set_params(integer=True)
    a.legend()
    keys = [("params", "params"), ("macs", "MACs"), ("latency_ms", "latency"),
            ("accuracy", "accuracy")]
    base = rows[0]
    for i, r in enumerate(rows):
        b.bar([j + 0.27 * i for j in range(len(keys))], [r[k] / base[k] for k, _ in keys],
              width=0.27, label=r["model"])
    b.set_xticks([j + 0.27 for j in range(len(keys))], [lbl for _, lbl in keys])
    b.set(ylabel="relative to the original", title="before / after")
    b.axhline(1.0, color="grey", lw=0.8)
    b.set_ylim(0, 1.3)
    b.legend(ncol=3, fontsize=8, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(out: str | Path = "demo_out", epochs: int | None = None, quick: bool = False,
         console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the before/after rows (also written to ``OUT/demo.json``)."""
    import fxprune

    from . import io, models
    from .deps import require

    # the last step saves ONNX and measures ONNX Runtime: fail now, not after training
    require("onnx", "onnxruntime", "safetensors", why="fxprune demo (ONNX export and latency)")
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    width = 8 if quick else 16
    epochs = epochs or (1 if quick else 3)
    factory = f"cifar:resnet20(num_classes=10, in_channels=1, width={width})"
    xtr, ytr, xte, yte = _data(quick)
    model = models.get_model("resnet20", num_classes=10, in_channels=1, width=width)
    example = (xtr[:1],)
    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as prog:
        history = {"train": train_epochs(model, xtr, ytr, epochs, 0.1, prog, "training")}
        rows = [_row("original", model, example, xte, yte, quick)]
        # no ignore=[model.fc]: fc's output is the graph output, which is never pruned, and
        # ignoring fc would keep its input channels (the whole last stage) too
        res = fxprune.prune(model, example, ratio=0.5, criterion="l1")
        pruned = res.module
        rows.append(_row("pruned", pruned, example, xte, yte, quick))
        history["finetune"] = train_epochs(pruned, xtr, ytr, max(1, epochs - 1), 0.05, prog,
                                           "fine-tuning")
        rows.append(_row("pruned + fine-tuned", pruned, example, xte, yte, quick))
    io.save(out / "pruned", res, onnx=True, example_inputs=example, factory=factory)
    _plot(out / "demo.png", rows, history)
    (out / "demo.json").write_text(json.dumps({"rows": rows, "history": history}, indent=2))
    console.print(_table(rows))
    console.print(f"{time.perf_counter() - t0:.0f}s; wrote {out / 'demo.png'}, "
                  f"{out / 'demo.json'} and {out / 'pruned'}/ "
                  f"(fxprune.io.load('{out / 'pruned'}') rebuilds it)")
    return {"rows": rows, "history": history}


if __name__ == "__main__":  # python -m fxprune.demo [--out DIR] [--epochs N] [--quick]
    import sys

    from .cli import main as _cli

    sys.exit(_cli(["demo", *sys.argv[1:]]))
