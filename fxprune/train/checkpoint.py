"""Crash-safe checkpoint files for training runs.

Layout of a run's `out_dir`:

    checkpoint.pt            the last finished epoch: model, optimizer, AMP scaler,
                             next epoch, RNG states (torch, CUDA, numpy, python; one
                             set per rank), history, config fingerprint
    weights/epoch_0003.pt    model weights after 3 epochs (rewind points; which
                             epochs are kept is the caller's choice)
    metrics.jsonl            one JSON line per finished epoch

Every file is written atomically: a temp file in the same directory, flushed and
fsynced, then `os.replace`d over the target, so a kill leaves either the old or
the new file, never a torn one. Everything is stored as tensors and plain
Python values so it loads with `torch.load(weights_only=True)`.

Checksums: `atomic_save` of a dict adds the key `"fxprune.sha256"`, the
`tensor_files.tree_sha256` of the rest (dtypes, shapes, bytes, keys, values), inside
the same file, so one rename keeps file and checksum together. `load_checkpoint`
and `load_rewind_weights` recompute it and raise `ChecksumError` naming the file
when a bit changed; a file unreadable as a checkpoint raises `WeightsFileError`.
Files written before checksums (no such key) still load.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import FxPruneError
from ..file_errors import ChecksumError, WeightsFileError
from ..tensor_files import tree_sha256

__all__ = [
    "CHECKPOINT_NAME",
    "atomic_save",
    "atomic_write_text",
    "load_checkpoint",
    "load_verified",
    "weights_path",
    "save_rewind_weights",
    "load_rewind_weights",
    "available_rewind_epochs",
    "get_rng_state",
    "set_rng_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKSUM_KEY = "fxprune.sha256"
_WEIGHTS_RE = re.compile(r"epoch_(\d+)\.pt$")


def _atomic_write(path: Path, write: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # Make the rename itself durable (not supported on every platform).
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj, path)`, atomically (temp file + fsync + os.replace); a dict gets
    its checksum under `CHECKSUM_KEY`, checked by `load_verified`."""
    if isinstance(obj, dict):
        obj = {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY},
               CHECKSUM_KEY: tree_sha256({k: v for k, v in obj.items() if k != CHECKSUM_KEY})}
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def load_verified(path: str | Path, fix: str) -> Any:
    """`torch.load(path, weights_only=True)`, its checksum checked and removed; errors name
    `path` and say `fix`."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises zip, EOF and unpickling errors of many types
        raise WeightsFileError(f"cannot read {path} ({type(e).__name__}: {e}): it is empty, "
                               f"truncated, damaged or not an fxprune file. {fix}") from e
    if isinstance(obj, dict) and CHECKSUM_KEY in obj:
        want = obj.pop(CHECKSUM_KEY)
        try:
            got = tree_sha256(obj)
        except TypeError as e:
            raise WeightsFileError(f"{path} holds {e}. {fix}") from e
        if got != want:
            raise ChecksumError(f"{path} is damaged: its contents do not match the sha256 "
                                f"recorded when it was written. {fix}")
    return obj


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def load_checkpoint(out_dir: str | Path) -> dict[str, Any] | None:
    """The run checkpoint in `out_dir`, or None when there is none."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    # a torn file cannot happen with atomic writes; anything else is a foreign or
    # damaged file the user should look at
    return load_verified(path, "Delete it to start over, or point out_dir at the right run.")


def weights_path(out_dir: str | Path, epoch: int) -> Path:
    """Where the weights after `epoch` epochs are kept."""
    return Path(out_dir) / "weights" / f"epoch_{epoch:04d}.pt"


def save_rewind_weights(out_dir: str | Path, epoch: int, state: Mapping[str, torch.Tensor]) -> None:
    """Keep a copy of the weights after `epoch` epochs for weight rewinding."""
    atomic_save({k: v.detach().cpu() for k, v in state.items()}, weights_path(out_dir, epoch))


def available_rewind_epochs(out_dir: str | Path) -> list[int]:
    """Epochs for which rewind weights exist in `out_dir`, sorted."""
    d = Path(out_dir) / "weights"
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _WEIGHTS_RE.match(p.name)))


def load_rewind_weights(out_dir: str | Path, epoch: int) -> dict[str, torch.Tensor]:
    """The state dict saved after `epoch` epochs of the run in `out_dir`."""
    path = weights_path(out_dir, epoch)
    if not path.exists():
        have = available_rewind_epochs(out_dir)
        raise FxPruneError(
            f"no rewind weights for epoch {epoch} in {Path(out_dir)} (have epochs {have}). "
            "Train the original with train_original(..., rewind_epochs=None) to keep every "
            "epoch, or rewind to one of the saved epochs."
        )
    return load_verified(path, "Train the original again to rewrite it, or rewind to another "
                               f"epoch (have {available_rewind_epochs(out_dir)}).")


def get_rng_state() -> dict[str, Any]:
    """Every RNG state a training step can touch, in weights_only-loadable form."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore a state from `get_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
         n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
