"""Saving never deletes a user's files: what a save may replace, symlinks, the directory
swap (atomic exchange and the two-rename fallback), recovery and stale staging
directories after a real kill (a subprocess that dies with os._exit mid-save)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny

import fxprune
from fxprune import io, savedir
from fxprune.file_errors import NotASaveError, UnexpectedFilesError

ROOT = Path(__file__).resolve().parent.parent
X = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
FILES = ["manifest.json", "meta.json", "model.safetensors", "plan.json"]


@pytest.fixture(scope="module")
def results():
    return [fxprune.prune(tiny(), (X,), ratio=r) for r in (0.25, 0.5)]


def _save(path, res):
    return io.save(path, res, example_inputs=(X,), factory="tiny_models:tiny")


def _ratio(path: Path) -> float:
    return json.loads((path / "plan.json").read_text())["settings"]["ratio"]


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("layout", [
    {"train.py": "print('mine')", "data/x.csv": "1,2"},
    {"plan.json": "{}", "meta.json": "{}", "train.py": "mine"},  # looks like a save, is not
    {"manifest.json": "not json", "notes.txt": "mine"},
])
def test_foreign_directory_is_refused_untouched(tmp_path, results, layout):
    d = tmp_path / "out"
    for name, text in layout.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    before = _snapshot(d)
    with pytest.raises(NotASaveError, match="refusing"):
        _save(d, results[0])
    assert _snapshot(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_user_files_in_a_save_are_refused_and_listed(tmp_path, results):
    d = _save(tmp_path / "out", results[0])
    (d / "results.csv").write_text("acc,0.9")
    (d / "logs").mkdir()
    before = _snapshot(d)
    with pytest.raises(UnexpectedFilesError, match=r"logs, results\.csv"):
        _save(d, results[1])
    assert _snapshot(d) == before


def test_hand_edited_save_file_is_not_overwritten(tmp_path, results):
    d = _save(tmp_path / "out", results[0])
    (d / "plan.json").write_text((d / "plan.json").read_text().replace("\"l1\"", "\"l2\""))
    with pytest.raises(UnexpectedFilesError, match=r"changed since.*plan\.json"):
        _save(d, results[1])


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replacing_a_save(tmp_path, results, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(savedir, "_renameat2", lambda *a: False)
    d = _save(tmp_path / "out", results[0])
    _save(d, results[1])
    assert _ratio(d) == 0.5 and sorted(p.name for p in d.iterdir()) == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    io.load(d, tiny)


def test_replacing_a_first_format_save(tmp_path, results):
    d = tmp_path / "old"
    d.mkdir()
    (d / "plan.json").write_text(results[0].plan.to_json())
    torch.save(results[0].module.state_dict(), d / "state_dict.pt")
    meta = {"format": "fxprune-save/1", "model_factory": "tiny_models:tiny",
            "input_shapes": [[1, 3, 16, 16]], "input_dtypes": ["float32"],
            "files": ["plan.json", "state_dict.pt", "meta.json"]}
    (d / "meta.json").write_text(json.dumps(meta))
    assert io.load(d, tiny).plan == results[0].plan  # still loads (weights_only=True)
    (d / "train.py").write_text("mine")
    with pytest.raises(UnexpectedFilesError, match="train.py"):
        _save(d, results[1])
    (d / "train.py").unlink()
    _save(d, results[1])
    assert sorted(p.name for p in d.iterdir()) == FILES and _ratio(d) == 0.5


def test_symlinked_dir_is_followed(tmp_path, results):
    target = _save(tmp_path / "real", results[0])
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    _save(link, results[1])
    assert link.is_symlink() and os.path.realpath(link) == str(target)
    assert _ratio(target) == 0.5 and _ratio(link) == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    (tmp_path / "file").write_text("mine")
    (tmp_path / "flink").symlink_to(tmp_path / "file")
    with pytest.raises(NotASaveError, match="not a directory"):
        _save(tmp_path / "flink", results[0])
    assert (tmp_path / "file").read_text() == "mine"


def test_recovery_after_a_kill_between_the_renames(tmp_path, results):
    d = _save(tmp_path / "out", results[0])
    old = tmp_path / f"out.old-{_dead_pid()}-abcdef12"
    os.rename(d, old)  # what a kill between the two renames leaves
    assert io.load(d, tiny).plan == results[0].plan
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_stale_staging_dirs_are_cleaned_by_the_next_save_and_ignored_by_load(tmp_path, results):
    d = _save(tmp_path / "out", results[0])
    pid = _dead_pid()
    stale = tmp_path / f"out.tmp-{pid}-aaaa"
    stale.mkdir()
    (stale / "plan.json").write_text("{")
    (stale / ".model.safetensors.x.part.safetensors").write_bytes(b"half")
    kept = tmp_path / f"out.old-{pid}-bbbb"
    kept.mkdir()
    (kept / "meta.json").write_text("{}")
    (kept / "notes.txt").write_text("mine")
    alive = tmp_path / f"out.tmp-{os.getpid()}-cccc"  # a save in progress: left alone
    alive.mkdir()
    (alive / "plan.json").write_text("{")
    other = tmp_path / f"other.tmp-{pid}-dddd"
    other.mkdir()
    io.load(d, tiny)
    assert stale.is_dir(), "load must not touch staging dirs"
    _save(d, results[1])
    assert not stale.exists() and alive.is_dir() and other.is_dir()
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]  # only fxprune's files removed


_KILL = r"""
import os, sys
sys.path[:0] = sys.argv[1:3]
import torch, fxprune
from fxprune import io, savedir
from tiny_models import tiny
res = fxprune.prune(tiny(), (torch.randn(1, 3, 16, 16),), ratio=0.5)
die = lambda *a, **k: os._exit(9)
mode = sys.argv[4]
if mode == "before-swap":
    savedir._swap_in = die
elif mode == "after-exchange":
    savedir._remove_owned = die
else:  # between the two renames of the fallback
    savedir._renameat2 = lambda *a: False
    real = os.rename
    def rename(src, dst):
        real(src, dst)
        if ".old-" in str(dst):
            os._exit(9)
    os.rename = rename
io.save(sys.argv[3], res, example_inputs=(torch.randn(1, 3, 16, 16),))
"""


@pytest.mark.parametrize("mode, ratio_after", [
    pytest.param("before-swap", 0.25, marks=pytest.mark.slow),
    pytest.param("after-exchange", 0.5, marks=pytest.mark.slow),
    ("between-renames", 0.25),  # the one that used to leave no DIR at all
])
def test_kill_mid_save(tmp_path, results, mode, ratio_after):
    if mode == "after-exchange" and not sys.platform.startswith("linux"):
        pytest.skip("renameat2 is Linux-only")
    d = _save(tmp_path / "out", results[0])
    p = subprocess.run([sys.executable, "-c", _KILL, str(ROOT / "tests"), str(ROOT), str(d), mode],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 9, p.stderr
    assert len(list(tmp_path.iterdir())) == 2, "the kill left a staging dir"
    assert io.load(d, tiny).plan.settings["ratio"] == ratio_after  # recovered or intact
    _save(d, results[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # stale dirs cleaned
    assert _ratio(d) == 0.5
