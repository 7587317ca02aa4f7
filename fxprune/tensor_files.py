"""Tensor files without pickle: state dicts and nested records as safetensors.

- :func:`write_state_dict` / :func:`read_state_dict`: a module's ``state_dict()`` as
  ``*.safetensors``. safetensors refuses tensors that share storage (tied weights:
  an embedding and an output layer holding one Parameter), so each distinct tensor
  is stored once and the other names are recorded as aliases in the file's
  metadata (``fxprune.aliases``) and restored on read. Old ``*.pt`` state dicts are
  still read, with ``torch.load(weights_only=True)``.
- :func:`write_tree` / :func:`read_tree`: a nested record of tensors and plain values
  (dicts with any int/str keys, lists, tuples, numbers, strings, None), e.g. an
  optimizer's ``state_dict()`` and a history, in *one* safetensors file: the
  tensors as tensors, the rest as JSON in the metadata, with a sha256 of the whole
  (:func:`tree_sha256`) checked on read. One file, so one atomic rename.

Every read error is a :class:`~fxprune.file_errors.WeightsFileError` (or
``ChecksumError``) naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .file_errors import ChecksumError, WeightsFileError

__all__ = ["read_state_dict", "read_tree", "tree_sha256", "write_state_dict", "write_tree"]

PathLike = str | os.PathLike
_ALIASES = "fxprune.aliases"
_TREE, _TREE_SHA = "fxprune.tree", "fxprune.tree_sha256"


# --------------------------------------------------------------------- checksums
def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _feed(h: Any, obj: Any, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}:".encode())
        h.update(_tensor_bytes(obj))
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}:".encode())
        for k, v in obj.items():
            h.update(f"{type(k).__name__}{k!r}=".encode())
            _feed(h, v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}:".encode())
        for i, v in enumerate(obj):
            _feed(h, v, f"{where}[{i}]")
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}{obj!r};".encode())
    else:
        raise TypeError(f"{where} is a {type(obj).__name__}: fxprune stores tensors and plain "
                        "Python values only (dict, list, tuple, int, float, str, None)")


def tree_sha256(obj: Any) -> str:
    """sha256 of a nested record of tensors and plain values (dtypes, shapes, bytes,
    keys and values, in order). Raises TypeError for anything else."""
    h = hashlib.sha256()
    _feed(h, obj, "the record")
    return h.hexdigest()


# ------------------------------------------------------------------- state dicts
def _distinct(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Each distinct tensor once; other names that are the very same tensor become aliases.
    Tensors that only partly overlap another's storage are copied (safetensors refuses
    shared storage)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        key = (t.device, ptr, t.storage_offset(), t.dtype, tuple(t.shape), tuple(t.stride()))
        if ptr and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        t = t.cpu().contiguous()
        if ptr and t.untyped_storage().data_ptr() in storages or \
                t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    return tensors, aliases


def write_state_dict(path: PathLike, state: Mapping[str, torch.Tensor],
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write ``state`` to ``path`` as safetensors, tied tensors stored once."""
    from safetensors.torch import save_file

    tensors, aliases = _distinct(state)
    meta = {**(metadata or {}), _ALIASES: json.dumps(aliases, sort_keys=True)}
    save_file(tensors, str(path), metadata=meta)


def _open_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise WeightsFileError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); it is "
            "empty, truncated or damaged: save the model again or restore the file") from e
    return tensors, meta


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``*.safetensors``, or an old ``*.pt`` read with
    ``weights_only=True``), tied names restored."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return _read_legacy_pt(path)
    tensors, meta = _open_safetensors(path)
    try:
        aliases = json.loads(meta.get(_ALIASES, "{}"))
        assert isinstance(aliases, dict)
        state = dict(tensors)
        for name, target in aliases.items():
            state[name] = tensors[target]
    except (ValueError, AssertionError, KeyError, TypeError) as e:
        raise WeightsFileError(f"{path}: its {_ALIASES} metadata is damaged ({e}); save the "
                               "model again") from e
    return state


def _read_legacy_pt(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises zip, EOF and unpickling errors of many types
        raise WeightsFileError(
            f"{path} is not a readable weights file ({type(e).__name__}: {e}); it is empty, "
            "truncated, damaged or holds more than tensors: save the model again") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(f"{path} does not hold a state dict of tensors; "
                               "save the model again")
    return state


# ----------------------------------------------------------------------- records
def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in obj):
            raise TypeError(f"{where} has keys other than str/int: {list(obj)[:5]}")
        return {"__dict__": [[k, _encode(v, tensors, f"{where}[{k!r}]")] for k, v in obj.items()]}
    raise TypeError(f"{where} is a {type(obj).__name__}: fxprune stores tensors and plain "
                    "Python values only")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    (tag, value), = obj.items()
    if tag == "__tensor__":
        return tensors[value]
    if tag == "__tuple__":
        return tuple(_decode(v, tensors) for v in value)
    if tag == "__dict__":
        return {k: _decode(v, tensors) for k, v in value}
    raise ValueError(f"unknown tag {tag!r}")


def write_tree(path: PathLike, record: Any) -> None:
    """Write a nested record of tensors and plain values to ``path`` (one safetensors file)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_encode(record, tensors, "the record"))
    sha = tree_sha256([tree, sorted(tensors.items())])
    save_file(tensors, str(path), metadata={_TREE: tree, _TREE_SHA: sha})


def read_tree(path: PathLike) -> Any:
    """The record :func:`write_tree` wrote to ``path``; raises ``ChecksumError`` if any
    byte of it changed since."""
    path = Path(path)
    tensors, meta = _open_safetensors(path)
    tree = meta.get(_TREE)
    if tree is None:
        raise WeightsFileError(f"{path} is a safetensors file but not an fxprune record "
                               f"(no {_TREE} metadata); point at the file fxprune wrote")
    if tree_sha256([tree, sorted(tensors.items())]) != meta.get(_TREE_SHA):
        raise ChecksumError(f"{path} is damaged: its contents do not match the sha256 recorded "
                            "when it was written; delete it to start over, or restore it")
    try:
        return _decode(json.loads(tree), tensors)
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsFileError(f"{path}: its record is damaged ({e}); "
                               "delete it to start over") from e
