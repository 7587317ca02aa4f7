"""``torch-cpu``: eager PyTorch on the CPU under ``torch.inference_mode``, timed with
``time.perf_counter``; the intra-op thread count is set by ``prepare`` and restored by
``close``."""
from __future__ import annotations

import copy
import itertools
import time

import torch
from torch import nn

from .base import Backend, Runner, cpu_name

__all__ = ["TorchCPU"]


class TorchCPU(Backend):
    """Eager PyTorch on the CPU."""

    name = "torch-cpu"
    _saved_threads: int | None = None

    @classmethod
    def check(cls) -> None:  # torch is always there
        return None

    def version(self) -> str:
        return torch.__version__

    def device(self) -> str:
        return cpu_name()

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Runner:
        inputs = tuple(t.cpu() for t in inputs)
        tensors = itertools.chain(module.parameters(), module.buffers())
        if any(t.device.type != "cpu" for t in tensors):
            module = copy.deepcopy(module).cpu()  # never move the caller's model
        # set once, not per run: changing the pool size between runs re-creates threads
        if self._saved_threads is None:
            self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)

        def run() -> float:
            with torch.inference_mode():
                t0 = time.perf_counter()
                module(*inputs)
                return (time.perf_counter() - t0) * 1e3

        return run

    def close(self) -> None:
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
