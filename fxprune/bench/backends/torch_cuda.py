"""``torch-cuda``: eager PyTorch on the GPU, timed with CUDA events; with
``cuda_graphs=True`` (the default) the forward pass is captured once in a CUDA graph
and each timed run is a graph replay, which removes Python and launch overhead the
way a deployment runtime would. ``dtype=torch.float16`` runs in half precision."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .base import Backend, BackendUnavailable, Runner

__all__ = ["TorchCUDA"]


class TorchCUDA(Backend):
    """Eager PyTorch (optionally CUDA graphs) on the current CUDA device."""

    name = "torch-cuda"
    _saved_benchmark: bool | None = None

    @classmethod
    def check(cls) -> None:
        if not torch.cuda.is_available():
            raise BackendUnavailable("torch-cuda needs a CUDA device; none is visible "
                                     "(torch.cuda.is_available() is False)")

    def version(self) -> str:
        return f"{torch.__version__} (CUDA {torch.version.cuda})"

    def device(self) -> str:
        return torch.cuda.get_device_name()

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.cuda.CUDAGraph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # warm up allocator and cuDNN autotuning before capture
                module(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            module(*inputs)
        return graph

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Runner:
        dtype = self.options.get("dtype", torch.float32)
        module = copy.deepcopy(module).to("cuda", dtype)  # never move the caller's model
        inputs = tuple(t.to("cuda", dtype) for t in inputs)
        if self._saved_benchmark is None:
            self._saved_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # autotune convolutions, as deployment would
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph = self._capture(module, inputs) if self.options.get("cuda_graphs", True) else None

        def run() -> float:
            with torch.inference_mode():
                start.record()
                if graph is not None:
                    graph.replay()
                else:
                    module(*inputs)
                end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return run

    def close(self) -> None:
        if self._saved_benchmark is not None:
            torch.backends.cudnn.benchmark = self._saved_benchmark
            self._saved_benchmark = None
