"""Latency backends by name: ``torch-cpu``, ``torch-cuda``, ``onnxruntime``,
``onnxruntime-cuda``, ``tensorrt``.

    backend = get_backend("onnxruntime", threads=2)
    run = backend.prepare(module.eval(), (x,))   # one forward, returns ms
    available_backends()                          # the names that can run here
"""
from __future__ import annotations

from typing import Any

from .base import Backend, BackendUnavailable, Runner
from .onnx_runtime import OnnxRuntimeCPU, OnnxRuntimeCUDA
from .tensorrt_engine import TensorRT
from .torch_cpu import TorchCPU
from .torch_cuda import TorchCUDA

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "Runner", "available_backends",
           "get_backend"]

BACKENDS: dict[str, type[Backend]] = {
    b.name: b for b in (TorchCPU, TorchCUDA, OnnxRuntimeCPU, OnnxRuntimeCUDA, TensorRT)
}


def get_backend(name: str, threads: int | None = None, **options: Any) -> Backend:
    """Instantiate backend ``name``; raises ``BackendUnavailable`` if it cannot run here
    and ``ValueError`` for an unknown name."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BACKENDS[name](threads=threads, **options)


def available_backends() -> list[str]:
    """Names of the backends whose library and device are present."""
    names = []
    for name, cls in BACKENDS.items():
        try:
            cls.check()
        except BackendUnavailable:
            continue
        names.append(name)
    return names
