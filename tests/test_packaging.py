"""fxprune.passes and fxprune.models resolve in every install mode.

`passes/` and `models/` live at the top of the repository and are mapped into
the package by setuptools' package-dir; a wheel must carry them inside
`fxprune/`, and a source checkout on sys.path must find them too.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = "import fxprune.passes, fxprune.models; print(fxprune.passes.__file__); print(fxprune.models.__file__)"


def _run_and_check(cmd: list[str], cwd: Path, expect_under: str) -> None:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    paths = out.stdout.strip().splitlines()
    assert len(paths) == 2 and all(expect_under in p for p in paths), paths


def test_source_checkout_on_sys_path(tmp_path):
    """pytest / python from the repo root: the checkout's own folders are used."""
    _run_and_check([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {PROBE}"],
                   tmp_path, str(ROOT))


def test_wheel_carries_passes_and_models(tmp_path):
    """A regular wheel: passes/ and models/ are installed as fxprune/passes, fxprune/models."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                           timeout=300)
    if built.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {built.stderr[-300:]}")
    wheel = next(tmp_path.glob("fxprune-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("fxprune/passes/__init__.py", "fxprune/passes/shrink.py",
                     "fxprune/models/__init__.py", "fxprune/rules/__init__.py"):
        assert required in names, f"{required} missing from {wheel.name}"
    assert not any(n.startswith(("passes/", "models/", "tests/")) for n in names)
    # a pure-python wheel is importable as a zip: the mapped packages come from inside it
    _run_and_check([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(wheel)!r}); {PROBE}"],
                   tmp_path, wheel.name)
