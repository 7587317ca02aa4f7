"""``tensorrt``: the module exported to ONNX, parsed with ``trt.OnnxParser`` and built
into an engine by ``trt.Builder`` (fp16 allowed by default, ``fp16=False`` for strict
fp32), with a timing cache file that is loaded before the build and saved after it so
repeated builds skip tactic timing. The engine is deserialised, an execution context
bound to torch CUDA tensors, and each run is ``execute_async_v3`` on a torch stream
timed with CUDA events. ``tensorrt`` is imported lazily: where it is missing,
``check()`` raises ``BackendUnavailable``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...export import to_onnx
from ...io import atomic_path
from .base import Backend, BackendUnavailable, Runner

__all__ = ["TensorRT", "default_timing_cache"]


def _import_trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable("tensorrt is not installed (pip install 'fxprune[tensorrt]' "
                                 "on a machine with an NVIDIA GPU and driver)") from e
    return trt


def default_timing_cache() -> Path:
    """``$FXPRUNE_CACHE/trt_timing.cache`` (default ``~/.cache/fxprune``)."""
    root = os.environ.get("FXPRUNE_CACHE", Path.home() / ".cache" / "fxprune")
    return Path(root) / "trt_timing.cache"


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    names = ("float32", "float16", "bfloat16", "int32", "int64", "int8", "bool")
    table = {getattr(trt, n): getattr(torch, n) for n in names if hasattr(trt, n)}
    return table[dt]


class TensorRT(Backend):
    """NVIDIA TensorRT through its public Python API. Options: ``fp16`` (default True),
    ``timing_cache`` (path), ``workspace_gib`` (default 2)."""

    name = "tensorrt"

    @classmethod
    def check(cls) -> None:
        _import_trt()
        if not torch.cuda.is_available():
            raise BackendUnavailable("tensorrt needs a CUDA device; none is visible")

    def __init__(self, threads: int | None = None, **options: Any) -> None:
        super().__init__(threads, **options)
        self.trt = _import_trt()
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self._tmp = tempfile.TemporaryDirectory(prefix="fxprune-trt-")
        self._n = 0
        self._keep: list[Any] = []  # engines, contexts and buffers of live runners

    def version(self) -> str:
        return self.trt.__version__

    def device(self) -> str:
        return torch.cuda.get_device_name()

    def _config(self, builder: Any) -> Any:
        trt = self.trt
        config = builder.create_builder_config()
        gib = float(self.options.get("workspace_gib", 2))
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(gib * (1 << 30)))
        if self.options.get("fp16", True) and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        cache_file = Path(self.options.get("timing_cache") or default_timing_cache())
        blob = cache_file.read_bytes() if cache_file.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=True)
        return config

    def _save_timing_cache(self, config: Any) -> None:
        cache_file = Path(self.options.get("timing_cache") or default_timing_cache())
        with atomic_path(cache_file) as tmp:
            tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))

    def build_engine(self, onnx_path: Path) -> Any:
        """Parse ``onnx_path`` and build a deserialised ``ICudaEngine``."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if int(trt.__version__.split(".")[0]) < 10:  # implicit batch was removed in TRT 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_path.read_bytes()):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailable(f"TensorRT could not parse {onnx_path.name}: {errs}")
        config = self._config(builder)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendUnavailable("TensorRT failed to build an engine (see its log above)")
        self._save_timing_cache(config)
        return trt.Runtime(self.logger).deserialize_cuda_engine(serialized)

    def _bind(self, engine: Any, context: Any, inputs: tuple[torch.Tensor, ...]) -> list:
        trt, buffers, it = self.trt, [], iter(inputs)
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = _torch_dtype(trt, engine.get_tensor_dtype(name))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                buf = next(it).to("cuda", dtype).contiguous()
                context.set_input_shape(name, tuple(buf.shape))
            else:
                shape = tuple(context.get_tensor_shape(name))
                buf = torch.empty(shape, dtype=dtype, device="cuda")
            context.set_tensor_address(name, buf.data_ptr())
            buffers.append(buf)
        return buffers

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Runner:
        self._n += 1
        onnx_path = to_onnx(module, tuple(t.cpu() for t in inputs),
                            Path(self._tmp.name) / f"m{self._n}.onnx", dynamic_batch=False)
        engine = self.build_engine(onnx_path)
        context = engine.create_execution_context()
        buffers = self._bind(engine, context, inputs)
        self._keep.append((engine, context, buffers))
        stream = torch.cuda.Stream()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run() -> float:
            start.record(stream)
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end)

        return run

    def close(self) -> None:
        self._keep.clear()
        self._tmp.cleanup()
