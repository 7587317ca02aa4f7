"""A tiny, deterministic DistributedDataParallel run of the fxprune training loop.

    torchrun --standalone --nproc_per_node=2 -m fxprune.train.ddp_demo --out DIR
    python -m fxprune.train.ddp_demo --out DIR --batch-size 16     # 1-process twin

Each rank writes its final weights to `DIR/final_rank{r}.pt`; rank 0 alone writes
the checkpoint and `metrics.jsonl`.

Equivalence with one process. N processes with per-rank batch B end with the
same weights (up to float rounding of the gradient all-reduce) as one process
with batch N*B when:

* the dataset length is a multiple of N (DistributedSampler pads otherwise);
* the sampler order agrees: `train` always uses a DistributedSampler seeded with
  (cfg.seed, epoch), so one process reads the permutation P and rank r reads
  P[r::N]; the r-th sample of each rank's k-th batch is then in the single
  process's k-th batch, shuffling included;
* the loss is a per-sample mean (DDP averages the ranks' mean gradients, which
  equals the global mean when every rank's batch has the same size);
* no layer depends on batch statistics (no BatchNorm in train mode) and no
  randomness is drawn per rank (no dropout) - the demo model is a plain MLP.

Momentum and weight decay act on identical parameters and gradients on every
rank, so they do not break the equivalence.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .config import TrainConfig
from .dist import barrier, init_distributed
from .loop import train

__all__ = ["make_data", "make_model", "demo_config", "run", "main"]


def make_data(n: int = 64, dim: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    """A linearly separable synthetic set: inputs drawn with `seed`, labels from one
    fixed linear rule (so sets with different seeds are train/test splits of one task)."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    w = torch.randn(dim, classes, generator=torch.Generator().manual_seed(12345))
    return TensorDataset(x, (x @ w).argmax(1))


def make_model(dim: int = 8, hidden: int = 16, classes: int = 3, seed: int = 0) -> nn.Module:
    """An MLP without BatchNorm or dropout (see the equivalence conditions above)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def demo_config(out_dir: str | Path | None, batch_size: int, epochs: int = 2,
                device: str = "cpu") -> TrainConfig:
    """The demo's config: SGD with momentum and weight decay, step schedule, shuffling."""
    return TrainConfig(epochs=epochs, lr=0.1, momentum=0.9, weight_decay=1e-3,
                       schedule="step", milestones=(0.5,), batch_size=batch_size,
                       seed=0, device=device, out_dir=out_dir, progress=False)


def run(out_dir: str | Path, *, batch_size: int = 8, epochs: int = 2, device: str = "cpu",
        backend: str | None = None) -> dict[str, torch.Tensor]:
    """Train the demo (joining torchrun's process group if there is one); every rank
    saves its final state dict to `out_dir/final_rank{r}.pt` and returns it."""
    ctx = init_distributed(backend or ("nccl" if device.startswith("cuda") else "gloo"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(out / "run", batch_size, epochs, device)
    res = train(make_model(), make_data(), make_data(n=30, seed=1), cfg)
    state = {k: v.detach().cpu() for k, v in res.model.state_dict().items()}
    torch.save(state, out / f"final_rank{ctx.rank}.pt")
    barrier()
    return state


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m fxprune.train.ddp_demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=8, help="per-process batch size")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl)")
    args = p.parse_args(argv)
    run(args.out, batch_size=args.batch_size, epochs=args.epochs, device=args.device)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
