"""The backend contract of the latency harness.

A backend turns a module plus inputs of one fixed batch size into a *runner*: a
zero-argument callable that runs one forward pass to completion and returns its
wall time in milliseconds, timed the way that backend should be timed
(``perf_counter`` on CPU, CUDA events on GPU). Backends whose library or device is
missing raise ``BackendUnavailable`` from ``check()``; the harness turns that into
a skip with the message.
"""
from __future__ import annotations

import functools
import os
import platform
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import FxPruneError

__all__ = ["Backend", "BackendUnavailable", "Runner", "cpu_name", "default_threads"]

Runner = Callable[[], float]


class BackendUnavailable(FxPruneError):
    """The backend's library or device is not present on this machine."""


@functools.cache
def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_threads() -> int:
    """torch's intra-op thread count: used for every CPU backend unless told otherwise,
    so torch and ONNX Runtime are compared on the same number of cores."""
    return torch.get_num_threads() or os.cpu_count() or 1


class Backend(ABC):
    """One way of running a module. Subclasses set ``name`` and implement the rest."""

    name: ClassVar[str]

    def __init__(self, threads: int | None = None, **options: Any) -> None:
        self.check()
        self.threads = threads or default_threads()
        self.options = options

    @classmethod
    @abstractmethod
    def check(cls) -> None:
        """Raise ``BackendUnavailable`` (saying how to fix it) if this backend cannot run."""

    @abstractmethod
    def version(self) -> str:
        """The backend library's version string."""

    @abstractmethod
    def device(self) -> str:
        """The device the backend runs on, in words."""

    @abstractmethod
    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Runner:
        """Build whatever the backend needs (session, engine, graph) for ``inputs``'
        exact shapes and return the runner. ``module`` is in eval mode."""

    def close(self) -> None:
        """Release resources held across ``prepare`` calls (temporary files)."""
