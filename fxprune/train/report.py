"""Progress bars (rich) and the per-epoch JSONL metrics file.

Bars are shown only on the main rank, only when stderr is a terminal, and only
when the run asks for them; otherwise everything here is silent.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .checkpoint import atomic_write_text

__all__ = ["METRICS_NAME", "make_progress", "append_metrics", "write_metrics", "read_metrics"]

METRICS_NAME = "metrics.jsonl"


def make_progress(enabled: bool) -> Progress:
    """A rich Progress on stderr, disabled unless `enabled` and stderr is a TTY."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not (enabled and sys.stderr.isatty()),
        transient=False,
    )


def _line(record: dict[str, Any]) -> str:
    # JSON has no NaN: write missing metrics (no test set) as null.
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
    return json.dumps(clean, sort_keys=False) + "\n"


def append_metrics(out_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to `out_dir/metrics.jsonl`."""
    with open(Path(out_dir) / METRICS_NAME, "a", encoding="utf-8") as f:
        f.write(_line(record))


def write_metrics(out_dir: str | Path, history: Iterable[dict[str, Any]]) -> None:
    """Rewrite `metrics.jsonl` from a history (atomically): used on resume so the file
    matches the checkpoint exactly, whatever a kill left behind."""
    atomic_write_text(Path(out_dir) / METRICS_NAME, "".join(_line(r) for r in history))


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `out_dir/metrics.jsonl`, one per finished epoch."""
    path = Path(out_dir) / METRICS_NAME
    if not path.exists():
        return []
    return [json.loads(s) for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
