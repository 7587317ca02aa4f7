"""fxprune.deps: missing packages are named with their fix before long work starts."""
from __future__ import annotations

import importlib.util
import time

import pytest

from fxprune import demo
from fxprune.deps import MissingDependencyError, missing, require


def _hide(monkeypatch, *names: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a, **k: None if n in names else real(n, *a, **k))


def test_present_modules_pass():
    require("torch", "numpy", why="a test")
    assert missing("torch", "no_such_module_xyz") == ["no_such_module_xyz"]


def test_core_dependency_fix_names_pip_install(monkeypatch):
    _hide(monkeypatch, "onnxruntime")
    with pytest.raises(MissingDependencyError, match=r"pip install onnxruntime"):
        require("onnx", "onnxruntime", why="measuring ONNX Runtime latency")


def test_extra_fix_names_the_extra(monkeypatch):
    _hide(monkeypatch, "transformers", "ultralytics")
    with pytest.raises(MissingDependencyError, match=r"fxprune\[hf,yolo\]"):
        require("transformers", "ultralytics", why="the real-world suite")


def test_demo_fails_in_the_first_second_without_onnx(monkeypatch, tmp_path):
    """The demo used to train for minutes and then die in the ONNX export."""
    _hide(monkeypatch, "onnx")
    trained = []
    monkeypatch.setattr(demo, "train_epochs", lambda *a, **k: trained.append(1) or [0.0])
    t0 = time.perf_counter()
    with pytest.raises(MissingDependencyError, match="onnx"):
        demo.main(out=tmp_path, quick=True)
    assert not trained and time.perf_counter() - t0 < 1.0
