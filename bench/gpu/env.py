"""What machine and software the GPU run ran on, and which optional backends are there.

Every field is read defensively: a missing tool or library becomes a sentence saying so,
never an exception, because this is written first and must always be in the results.
"""
from __future__ import annotations

import datetime
import platform
import shutil
import subprocess
from typing import Any

import torch

__all__ = ["environment", "tensorrt_line", "ort_cuda_line"]


def environment() -> dict[str, Any]:
    """GPU model, memory, driver, torch / CUDA / cuDNN versions, date, CPU, host python."""
    import torchvision

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_runtime": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": _cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update({
            "gpu": torch.cuda.get_device_name(0),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_sms": props.multi_processor_count,
            "cudnn": torch.backends.cudnn.version(),
            "driver": _driver_version(),
        })
    else:
        env["gpu"] = "none (torch.cuda.is_available() is False)"
    env["tensorrt"] = tensorrt_line()
    env["onnxruntime_cuda"] = ort_cuda_line()
    return env


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _driver_version() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "unknown (no nvidia-smi on PATH)"
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else out.stderr.strip()
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        return f"unknown ({type(e).__name__}: {e})"


def tensorrt_line() -> str:
    """One line: the TensorRT version if it imports, else why not."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything
        return f"TensorRT not importable here ({type(e).__name__}: {e}); not measured"
    if not torch.cuda.is_available():
        return f"TensorRT {trt.__version__} imports, but there is no CUDA device; not measured"
    return f"TensorRT {trt.__version__}"


def ort_cuda_line() -> str:
    """One line: whether ONNX Runtime has its CUDA execution provider here."""
    try:
        import onnxruntime as ort
    except Exception as e:
        return f"onnxruntime not importable ({type(e).__name__}: {e}); not measured"
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: "
                f"{', '.join(providers)}; the GPU build is the onnxruntime-gpu package); "
                "not measured")
    if not torch.cuda.is_available():
        return f"onnxruntime {ort.__version__} has CUDAExecutionProvider but no CUDA device"
    return f"onnxruntime {ort.__version__} with CUDAExecutionProvider"
