"""``fxprune prune hf:DIR --ratio R --out OUT``: a local HF checkpoint in, an HF checkpoint out.

Local directories only (fxprune never downloads): a spec that is not a directory on
disk gets ``HFPathError`` saying how to fetch it first. The model class comes from
``config.json``'s ``architectures``; the example / calibration batch is random token
ids (``--calibration random:N`` gives N of them, for the activation and Taylor
criteria). Tokenizer and generation files next to the weights are copied to OUT.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import FxPruneError

__all__ = ["HFPathError", "is_hf_spec", "load_local", "prune_command"]

PREFIX = "hf:"
_COPY = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
         "merges.txt", "vocab.txt", "tokenizer.model", "generation_config.json")


class HFPathError(FxPruneError):
    """``hf:PATH`` does not name a local Hugging Face checkpoint directory."""


def is_hf_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def load_local(spec: str):
    """``(model, path)`` for ``hf:PATH``; PATH must be a directory holding config.json."""
    from .hf import require_transformers

    transformers = require_transformers()
    path = Path(spec[len(PREFIX):]).expanduser()
    if not path.is_dir():
        hub = spec[len(PREFIX):].count("/") == 1 and not path.exists()
        why = (" looks like a Hugging Face hub id; fxprune reads local directories only: "
               "download it first (huggingface-cli download ID --local-dir DIR) and pass hf:DIR"
               if hub else " is not a directory")
        raise HFPathError(f"{spec}: {path}{why}")
    if not (path / "config.json").is_file():
        raise HFPathError(f"{spec}: {path} has no config.json (not a save_pretrained directory)")
    cfg = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    arch = (getattr(cfg, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModelForCausalLM
    return cls.from_pretrained(path, local_files_only=True).eval(), path


def _batches(model, spec: str | None, seq: int = 32) -> list[torch.Tensor]:
    n = 1
    if spec:
        kind, _, count = spec.partition(":")
        if kind != "random":
            raise HFPathError(f"--calibration {spec}: hf: models take random:N (random token ids)")
        n = int(count or 8)
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, model.config.vocab_size, (1, seq), generator=gen) for _ in range(n)]


def prune_command(args: Any, out, err) -> int:
    """The ``prune`` subcommand for ``hf:`` specs (``out``/``err``: rich consoles)."""
    from . import hf

    if getattr(args, "target_macs", None) is not None:
        raise FxPruneError("--target-macs is not supported for hf: models; use --ratio")
    model, src = load_local(args.model)
    criterion = args.criterion if args.criterion != "l1" else "l2"  # l1 is the graph default
    batches = _batches(model, args.calibration)
    ratio = 0.5 if args.ratio is None else args.ratio
    with err.status(f"pruning {src}…"):
        pruned = hf.prune(model, batches[0], ratio=ratio, criterion=criterion,
                          calibration=batches, verify=True)  # the CLI always checks
    kind = hf.save(pruned, args.out)
    for name in _COPY:
        if (src / name).is_file():
            shutil.copy2(src / name, Path(args.out) / name)
    n0 = sum(p.numel() for p in model.parameters())
    n1 = sum(p.numel() for p in pruned.parameters())
    what = "an HF checkpoint" if kind == "hf" else "fxprune's per-layer format"
    out.print(f"{type(model).__name__}: {n0 / 1e6:,.2f}M -> {n1 / 1e6:,.2f}M params "
              f"({n1 / n0:.1%}); wrote {what} to {args.out}")
    return 0
