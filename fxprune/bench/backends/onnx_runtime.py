"""``onnxruntime`` / ``onnxruntime-cuda``: the module exported to ONNX (static shapes,
one file per batch size, via ``fxprune.export.to_onnx``) and run by ONNX Runtime with
full graph optimisation. The CPU provider is timed with ``perf_counter`` around
``session.run``; the CUDA provider binds torch CUDA tensors with IO binding so no
host-device copy is timed, and synchronises before stopping the clock."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...export import onnx_session, to_onnx
from .base import Backend, BackendUnavailable, Runner, cpu_name

__all__ = ["OnnxRuntimeCPU", "OnnxRuntimeCUDA"]


def _import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime (a core dependency of fxprune: reinstall it)") from e
    return onnxruntime


class OnnxRuntimeCPU(Backend):
    """ONNX Runtime, CPU execution provider."""

    name = "onnxruntime"
    provider = "CPUExecutionProvider"

    @classmethod
    def check(cls) -> None:
        ort = _import_ort()
        if cls.provider not in ort.get_available_providers():
            raise BackendUnavailable(f"{cls.name}: ONNX Runtime has no {cls.provider} here "
                                     f"(available: {ort.get_available_providers()}); "
                                     "install onnxruntime-gpu for CUDA")

    def __init__(self, threads: int | None = None, **options) -> None:
        super().__init__(threads, **options)
        self._tmp = tempfile.TemporaryDirectory(prefix="fxprune-ort-")
        self._n = 0

    def version(self) -> str:
        return _import_ort().__version__

    def device(self) -> str:
        return cpu_name()

    def _session(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]):
        self._n += 1
        path = to_onnx(module, tuple(t.cpu() for t in inputs),
                       Path(self._tmp.name) / f"m{self._n}.onnx", dynamic_batch=False)
        return onnx_session(path, providers=[self.provider], threads=self.threads)

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Runner:
        sess = self._session(module, inputs)
        feed = {i.name: t.detach().cpu().numpy() for i, t in zip(sess.get_inputs(), inputs)}

        def run() -> float:
            t0 = time.perf_counter()
            sess.run(None, feed)
            return (time.perf_counter() - t0) * 1e3

        return run

    def close(self) -> None:
        self._tmp.cleanup()


class OnnxRuntimeCUDA(OnnxRuntimeCPU):
    """ONNX Runtime, CUDA execution provider, with IO binding on torch CUDA tensors."""

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"

    @classmethod
    def check(cls) -> None:
        super().check()
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"{cls.name} needs a CUDA device; none is visible")

    def device(self) -> str:
        return torch.cuda.get_device_name()

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Runner:
        sess = self._session(module, inputs)
        binding = sess.io_binding()
        dev = [t.detach().to("cuda", torch.float32).contiguous() for t in inputs]
        for info, t in zip(sess.get_inputs(), dev):
            binding.bind_input(info.name, "cuda", 0, np.float32, list(t.shape), t.data_ptr())
        for info in sess.get_outputs():
            binding.bind_output(info.name, "cuda")

        def run(_keep_alive: list[torch.Tensor] = dev) -> float:  # binding holds raw pointers
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()
            torch.cuda.synchronize()
            return (time.perf_counter() - t0) * 1e3

        return run
