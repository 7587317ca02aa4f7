"""Optional and core dependencies, checked before any long work starts.

    fxprune.deps.require("onnx", "onnxruntime", why="the demo measures ONNX Runtime latency")

A missing package is reported in the first second, naming the ``pip install`` that
fixes it, never after minutes of training. The table below says which pip package
and which fxprune extra provides each importable module.
"""
from __future__ import annotations

import importlib.util

from .errors import FxPruneError

__all__ = ["MissingDependencyError", "PACKAGES", "missing", "require"]


class MissingDependencyError(FxPruneError, ImportError):
    """A package fxprune needs for the requested work is not installed."""


# import name -> (pip package, fxprune extra or None for a core dependency)
PACKAGES: dict[str, tuple[str, str | None]] = {
    "onnx": ("onnx", None),
    "onnxruntime": ("onnxruntime", None),
    "onnxscript": ("onnxscript", None),
    "safetensors": ("safetensors", None),
    "torchvision": ("torchvision", None),
    "tensorrt": ("tensorrt", "tensorrt"),
    "timm": ("timm", "timm"),
    "transformers": ("transformers", "hf"),
    "ultralytics": ("ultralytics", "yolo"),
    "torch_pruning": ("torch-pruning", "dev"),
}


def missing(*modules: str) -> list[str]:
    """The modules among ``modules`` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _fix(modules: list[str]) -> str:
    core = [PACKAGES.get(m, (m, None))[0] for m in modules if PACKAGES.get(m, (m, None))[1] is None]
    extras = sorted({PACKAGES[m][1] for m in modules if m in PACKAGES and PACKAGES[m][1]})
    fixes = []
    if core:
        fixes.append(f"pip install {' '.join(core)} (core dependencies of fxprune: "
                     "`pip install -e .` installs them)")
    if extras:
        fixes.append(f"pip install 'fxprune[{','.join(extras)}]'")
    return "; ".join(fixes)


def require(*modules: str, why: str) -> None:
    """Raise MissingDependencyError unless every module in ``modules`` imports."""
    absent = missing(*modules)
    if absent:
        raise MissingDependencyError(
            f"{why} needs {', '.join(absent)}, which is not installed; fix: {_fix(absent)}")
