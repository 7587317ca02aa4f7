"""Saved directories that are written whole or not at all, and never delete a user's files.

A save directory ``DIR`` holds ``manifest.json``: every other file fxprune wrote
there, with its size and sha256. The manifest is what makes a directory an
fxprune save:

- :func:`atomic_dir` stages a new save as ``DIR.tmp-<pid>-<hex>`` and swaps it in
  only when complete. It replaces ``DIR`` only if ``DIR`` is absent, empty, or
  exactly an fxprune save: its files are the manifest's (or, for saves before the
  manifest, the ``files`` list of their ``meta.json``) with the recorded checksums.
  A directory that is not a save raises ``NotASaveError``; a save holding files it
  did not write (results, logs) or files changed since raises
  ``UnexpectedFilesError`` listing them. Nothing is ever removed with ``rmtree``
  except the staging directory the same call created; an old save is removed file
  by file, the manifest's files only.
- ``DIR`` a symlink: it is followed. The save is staged beside the link's target
  and swapped in for the target, so the link stays and points at the new save.
- The swap: on Linux ``renameat2(RENAME_EXCHANGE)`` exchanges the two directories in
  one atomic step (``DIR`` always exists). Elsewhere, or on a filesystem without it,
  two renames (``DIR`` -> ``DIR.old-*``, staging -> ``DIR``); a kill between them
  leaves no ``DIR``, and the next :func:`recover` (run by every save and load)
  renames the newest complete ``DIR.old-*`` back.
- Staging directories a killed save left behind (``DIR.tmp-*``, ``DIR.old-*`` whose
  process is gone) are cleaned by the next save to ``DIR`` (:func:`clean_stale`):
  only the files fxprune writes are removed, then the directory if it is empty.
  Loading never looks at them.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .file_errors import (
    ChecksumError,
    MetaFileError,
    NotASaveError,
    UnexpectedFilesError,
)

__all__ = ["MANIFEST", "atomic_dir", "atomic_path", "check_files", "clean_stale", "owned_files",
           "read_manifest", "recover", "sha256_file", "write_manifest"]

MANIFEST = "manifest.json"
SAVE_FORMAT = "fxprune-save/2"
PathLike = str | os.PathLike
# every name fxprune writes into a save or its staging directory; only these are deleted
KNOWN_FILES = frozenset({MANIFEST, "meta.json", "plan.json", "model.safetensors",
                         "state_dict.pt", "model.onnx", "model.onnx.data", "model.pt2"})
_PART = re.compile(r"^\..+\.part[^/]*$")  # atomic_path's temporary files


# ------------------------------------------------------------------ single files
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, suffixes: Sequence[str] = ("",)) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success fsync it and
    ``os.replace`` it onto ``path`` (and ``tmp + sfx`` onto ``path + sfx`` for each
    sidecar suffix); on any exception remove the temporary files and re-raise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        for sfx in suffixes:
            src = Path(str(tmp_path) + sfx)
            if not src.exists():
                continue
            with open(src, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(src, 0o666 & ~_umask())  # mkstemp creates 0600
            os.replace(src, str(path) + sfx)
        _fsync_dir(path.parent)
    finally:
        for sfx in suffixes:
            Path(str(tmp_path) + sfx).unlink(missing_ok=True)


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------- manifest
def write_manifest(stage: Path, names: Iterable[str]) -> None:
    """Write ``stage/manifest.json`` listing ``names`` with size and sha256 (last file)."""
    files = {n: {"bytes": (stage / n).stat().st_size, "sha256": sha256_file(stage / n)}
             for n in sorted(names)}
    with atomic_path(stage / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"format": SAVE_FORMAT, "files": files}, indent=2) + "\n",
                       encoding="utf-8")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MetaFileError(f"{path} is not valid JSON ({e}); {what}") from e


def read_manifest(path: PathLike) -> dict[str, dict[str, Any]] | None:
    """``{name: {"bytes", "sha256"}}`` of save directory ``path``; None if it has no manifest."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        return None
    fix = "the save is damaged: save the model again"
    d = _read_json(file, fix)
    files = d.get("files") if isinstance(d, dict) else None
    if not (isinstance(d, dict) and d.get("format") == SAVE_FORMAT and isinstance(files, dict)
            and all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                    for v in files.values())
            and all(isinstance(n, str) and n in KNOWN_FILES and n != MANIFEST for n in files)):
        raise MetaFileError(f"{file} is not an fxprune {SAVE_FORMAT} manifest; {fix}")
    return files


def check_files(path: PathLike, manifest: dict[str, dict[str, Any]]) -> None:
    """Raise ``MetaFileError`` for a listed file that is missing, ``ChecksumError`` for
    one whose sha256 differs from the manifest's."""
    path = Path(path)
    for name, entry in manifest.items():
        file = path / name
        if file.is_symlink() or not file.is_file():
            raise MetaFileError(f"{path} is incomplete: {name} is missing (listed in "
                                f"{MANIFEST}); save the model again")
        if sha256_file(file) != entry["sha256"]:
            raise ChecksumError(f"{file} is damaged or was changed: its sha256 differs from the "
                                f"one in {path / MANIFEST}; save the model again or restore it")


def _legacy_files(path: Path) -> set[str] | None:
    """The ``files`` list of a save written before the manifest (fxprune-save/1)."""
    meta = path / "meta.json"
    if not meta.is_file() or meta.is_symlink():
        return None
    try:
        d = json.loads(meta.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    files = d.get("files") if isinstance(d, dict) else None
    if d.get("format") != "fxprune-save/1" or not isinstance(files, list):
        return None
    return {f for f in files if isinstance(f, str) and f in KNOWN_FILES}


def owned_files(path: PathLike) -> set[str] | None:
    """The names fxprune wrote in save directory ``path`` (manifest included); None when
    ``path`` is not an fxprune save."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except MetaFileError:
        return None
    if manifest is not None:
        return set(manifest) | {MANIFEST}
    return _legacy_files(path)


def _check_replaceable(path: Path) -> set[str]:
    """The files of ``path`` a new save may delete; raise if it may not replace ``path``."""
    if not path.exists():
        return set()
    if not path.is_dir():
        raise NotASaveError(f"{path} exists and is not a directory; refusing to replace it "
                            "(choose another output path)")
    entries = set(os.listdir(path))
    if not entries:
        return set()
    owned = owned_files(path)
    if owned is None:
        raise NotASaveError(f"{path} is a non-empty directory that is not an fxprune save (no "
                            f"{MANIFEST}); refusing to overwrite it (choose another output "
                            "directory, or empty it yourself)")
    extra = sorted(n for n in entries if n not in owned or not (path / n).is_file()
                   or (path / n).is_symlink())
    manifest = read_manifest(path) or {}
    changed = sorted(n for n, e in manifest.items() if n in entries and n not in extra
                     and sha256_file(path / n) != e["sha256"])
    if extra or changed:
        what = ([f"files fxprune did not write: {', '.join(extra)}"] if extra else []) + \
               ([f"files changed since it wrote them: {', '.join(changed)}"] if changed else [])
        raise UnexpectedFilesError(
            f"{path} is an fxprune save but holds {'; '.join(what)}; refusing to replace it, "
            "which would delete them (move them out of the directory, or save elsewhere)")
    return owned & entries


# --------------------------------------------------------------------- the swap
_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the OS or filesystem lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _remove_owned(path: Path, names: Iterable[str]) -> None:
    """Delete the listed files of an old save, then the directory if that emptied it."""
    for n in names:
        (path / n).unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        left = sorted(os.listdir(path)) if path.is_dir() else []
        if left:
            warnings.warn(f"kept {path}: it holds files fxprune did not write ({', '.join(left)})",
                          stacklevel=3)


def _swap_in(stage: Path, path: Path, owned: set[str]) -> None:
    if not path.exists():  # nothing to replace: one rename (NOREPLACE where available)
        if not _renameat2(stage, path, _RENAME_NOREPLACE):
            os.rename(stage, path)
        _fsync_dir(path.parent)
        return
    if _renameat2(stage, path, _RENAME_EXCHANGE):  # atomic: DIR exists at every instant
        _fsync_dir(path.parent)
        _remove_owned(stage, owned)  # `stage` now holds the old save
        return
    old = path.with_name(f"{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(path, old)  # a kill after this leaves DIR.old-*; recover() puts it back
    try:
        os.rename(stage, path)
    except BaseException:
        os.rename(old, path)
        raise
    _fsync_dir(path.parent)
    _remove_owned(old, owned)


def _target(path: PathLike) -> Path:
    """``path`` with symlinks followed (a link to a save is saved through, not replaced)."""
    return Path(os.path.realpath(os.fspath(path)))


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a staging directory; on success swap it in for ``path`` (see the module
    docstring for what may be replaced); on any exception remove the staging directory
    and leave ``path`` untouched."""
    path = _target(path)
    recover(path)
    clean_stale(path)
    owned = _check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    stage.mkdir()
    try:
        yield stage
        _fsync_dir(stage)
        owned = _check_replaceable(path)  # again: a file may have appeared meanwhile
        _swap_in(stage, path, owned)
    except BaseException:
        if stage.is_dir():
            shutil.rmtree(stage, ignore_errors=True)  # created by this call, holds only its files
        raise


# ----------------------------------------------------------- after a killed save
def _staging_dirs(path: Path, kind: str) -> list[tuple[Path, int | None]]:
    pat = re.compile(rf"^{re.escape(path.name)}\.{kind}-(?:(\d+)-)?[0-9A-Za-z_]+$")
    if not path.parent.is_dir():
        return []
    found = []
    for entry in path.parent.iterdir():
        m = pat.match(entry.name)
        if m and entry.is_dir() and not entry.is_symlink():
            found.append((entry, int(m[1]) if m[1] else None))
    return found


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False  # written by an fxprune older than the pid in the name
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(path: PathLike) -> bool:
    """If ``path`` is missing but a complete save ``path.old-*`` (left by a kill between
    the two renames of a swap) exists, rename the newest back to ``path``."""
    path = _target(path)
    if path.exists():
        return False
    complete = []
    for old, _ in _staging_dirs(path, "old"):
        try:
            manifest = read_manifest(old)
            if manifest is not None:
                check_files(old, manifest)
                complete.append(old)
        except (MetaFileError, ChecksumError, OSError):
            continue
    for old in sorted(complete, key=lambda p: p.stat().st_mtime, reverse=True):
        with contextlib.suppress(OSError):
            os.rename(old, path)
            _fsync_dir(path.parent)
            return True
    return False


def clean_stale(path: PathLike) -> list[Path]:
    """Remove staging directories of saves to ``path`` whose process is gone: the files
    fxprune writes in them, then the directory if nothing else is left. Returns the
    directories removed."""
    path = _target(path)
    removed = []
    for d, pid in _staging_dirs(path, "tmp") + _staging_dirs(path, "old"):
        if _alive(pid):
            continue
        for f in d.iterdir():
            ours = f.name in KNOWN_FILES or _PART.match(f.name)
            if ours and f.is_file() and not f.is_symlink():
                f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            d.rmdir()
            removed.append(d)
    return removed
