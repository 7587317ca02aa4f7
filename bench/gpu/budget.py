"""Time budget and the results file of the GPU run.

``Budget`` is a wall-clock deadline with per-stage sub-deadlines; every loop asks it how
long is left before starting a unit of work. ``Results`` is the one JSON document of the
run, rewritten atomically (temp file + ``os.replace``) after every unit, so a run killed at
any point leaves the last complete state on disk. ``Watchdog`` is the hard stop: a timer
thread that, past the deadline, marks the document as stopped by the watchdog, writes it
and ends the process, whatever the main thread is blocked in.
"""
from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Budget", "Results", "Watchdog", "CHILD_GROUPS"]

#: Process groups of running children (the compile worker lives in its own session, so
#: neither ``timeout`` nor the device tool would end it): the watchdog kills them first.
CHILD_GROUPS: set[int] = set()


class Budget:
    """``total_s`` seconds from construction; ``left()`` counts down to 0."""

    def __init__(self, total_s: float):
        self.total_s = float(total_s)
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return max(0.0, self.total_s - self.elapsed())

    def until(self, at_s: float) -> float:
        """Seconds left before the point ``at_s`` seconds after the start (>= 0)."""
        return max(0.0, at_s - self.elapsed())


class Results:
    """The run's JSON document; ``save()`` after every change that should survive a kill."""

    def __init__(self, path: Path, doc: dict[str, Any]):
        self.path = Path(path)
        self.doc = doc
        self.lock = threading.RLock()

    def set(self, key: str, value: Any) -> None:
        with self.lock:
            self.doc[key] = value
            self.save()

    def stage(self, name: str, **fields: Any) -> None:
        """Merge ``fields`` into ``doc["stages"][name]`` and save."""
        with self.lock:
            self.doc.setdefault("stages", {}).setdefault(name, {}).update(fields)
            self.save()

    def save(self) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}",
                                       suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(self.doc, fh, indent=1, default=_jsonable)
                    fh.write("\n")
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


class Watchdog:
    """Ends the process ``hard_s`` seconds after ``budget`` started, after marking
    ``results`` as stopped by the watchdog (exit code 3). ``cancel()`` when done."""

    def __init__(self, budget: Budget, hard_s: float, results: Results, log=print):
        self.results, self.log = results, log
        self.timer = threading.Timer(max(0.0, hard_s - budget.elapsed()), self._fire)
        self.timer.daemon = True

    def start(self) -> Watchdog:
        self.timer.start()
        return self

    def cancel(self) -> None:
        self.timer.cancel()

    def _fire(self) -> None:
        for pgid in list(CHILD_GROUPS):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        try:
            # the lock is re-entrant for the main thread only: a save in progress there
            # finishes first (acquire waits), so the file is never half-written
            if self.results.lock.acquire(timeout=10):
                self.results.doc["status"] = "stopped by the watchdog (time budget spent)"
                self.results.save()
            self.log("watchdog: time budget spent, results saved, exiting")
        finally:
            os._exit(3)
