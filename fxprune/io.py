"""Save and load pruned models: no pickle, no code named by a file, nothing of the user's lost.

    fxprune.save("out/r18", res, example_inputs=(x,), factory="resnet18", onnx=True)
    res = fxprune.load("out/r18")                      # factory from meta.json
    res = fxprune.load("out/r18", lambda: torchvision.models.resnet18())

A saved model is a directory (format ``fxprune-save/2``):

| file | what |
| --- | --- |
| ``plan.json`` | the ``PruningPlan`` (which units of which group were removed) |
| ``model.safetensors`` | the pruned weights (safetensors: no pickle; tied tensors stored once) |
| ``meta.json`` | fxprune and torch versions, model factory spec, input shapes and dtypes, counts |
| ``model.onnx`` / ``model.pt2`` | optional deployment artefacts |
| ``manifest.json`` | every file above with its size and sha256; written last |

Loading replays the plan on a fresh model from the factory (``fxprune.apply_plan``)
and loads the weights strictly, so no class is ever unpickled. Saves of the first
format (``state_dict.pt``, no manifest) still load, with ``torch.load(weights_only=True)``.

**Checksums.** ``load`` checks every file against the manifest first and raises
``ChecksumError`` naming the file that differs. A damaged, truncated or empty
``plan.json``, ``meta.json`` or weights file raises ``PlanFileError``,
``MetaFileError`` or ``WeightsFileError`` (all ``CorruptFileError``, in
:mod:`fxprune.file_errors`), naming the file and the fix.

**Trust.** ``load`` never imports or calls anything a file names. The model factory
read from ``meta.json`` may only be a registry model by name with literal keyword
arguments: a torchvision name (``resnet18``), ``timm:NAME`` or ``cifar:NAME``
(:func:`fxprune.specs.registry_factory`); any other spec (``pkg.mod:fn``,
``os:system``, ``torch.hub:load``) raises ``UntrustedFactoryError``. Pass
``model_factory=`` yourself (a callable, or a spec string, which is yours and may
import), or ``trust_factory=True`` for a directory you trust.

**Writing.** Every file is written to a temporary file, fsynced and renamed into
place; the directory is staged whole and swapped in by :func:`fxprune.savedir.atomic_dir`,
which replaces only an fxprune save (its files exactly the manifest's, unchanged),
refuses a directory holding anything else (``NotASaveError``,
``UnexpectedFilesError`` listing the files: they are never deleted nor carried
over), follows a symlinked ``DIR`` (the link's target is replaced, the link kept),
swaps atomically (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames,
recovered on the next save or load), and cleans staging directories a killed save
left behind.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import FxPruneError, PlanMismatchError
from .file_errors import MetaFileError, UntrustedFactoryError
from .savedir import (
    KNOWN_FILES,
    MANIFEST,
    atomic_dir,
    atomic_path,
    check_files,
    read_manifest,
    recover,
    write_manifest,
)
from .specs import SpecError, registry_factory, resolve_factory
from .tensor_files import read_state_dict, write_state_dict

__all__ = ["FORMAT", "SpecError", "UntrustedFactoryError", "atomic_dir", "atomic_path", "load",
           "read_meta", "resolve_factory", "save", "saved_factory"]

FORMAT = "fxprune-save/2"
_FORMATS = ("fxprune-save/1", FORMAT)
WEIGHTS = "model.safetensors"
PathLike = str | os.PathLike
_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
           "uint8", "bool", "complex64")
_MAX_ELEMENTS = 1 << 30  # example inputs rebuilt from meta.json: refuse absurd sizes


def _as_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if example_inputs is None:
        return ()
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def _meta(result: Any, inputs: tuple[torch.Tensor, ...], factory: str | None,
          files: list[str]) -> dict[str, Any]:
    from . import __version__

    meta: dict[str, Any] = {
        "format": FORMAT,
        "fxprune_version": __version__,
        "torch_version": torch.__version__,
        "model_factory": factory,
        "input_shapes": [list(t.shape) for t in inputs],
        "input_dtypes": [str(t.dtype).removeprefix("torch.") for t in inputs],
        "files": files,
    }
    if inputs:
        import fxprune

        c = fxprune.count(result.module, inputs)
        meta["macs"], meta["params"] = int(c.macs), int(c.params)
    return meta


def save(path: PathLike, result: Any, *, onnx: bool = False, pt2: bool = False,
         example_inputs: Any = None, factory: str | None = None) -> Path:
    """Write ``result`` (a ``PruneResult``: ``.module`` and ``.plan``) to directory ``path``.

    ``factory`` is the model spec ``load`` rebuilds the unpruned model from
    (e.g. ``"resnet18"``, ``"cifar:resnet20(in_channels=1)"``; a ``"pkg.mod:fn"`` spec
    is recorded too, but loading it then needs ``trust_factory=True``).
    ``onnx``/``pt2`` also export the module, which needs ``example_inputs``.
    ``path`` must be absent, empty or an earlier fxprune save holding nothing else
    (see the module docstring); a symlink is followed.
    """
    inputs = _as_tuple(example_inputs)
    if (onnx or pt2) and not inputs:
        raise ValueError("save(onnx=True or pt2=True) needs example_inputs")
    module: nn.Module = result.module
    files = ["plan.json", WEIGHTS, "meta.json"]
    with atomic_dir(path) as stage:
        _write_text(stage / "plan.json", result.plan.to_json(indent=2) + "\n")
        with atomic_path(stage / WEIGHTS) as tmp:
            write_state_dict(tmp, module.state_dict())
        if onnx:
            from .export import to_onnx

            to_onnx(module, inputs, stage / "model.onnx")
        if pt2:
            from .export import to_pt2

            to_pt2(module, inputs, stage / "model.pt2")
        files += sorted(p.name for p in stage.iterdir() if p.name not in files)
        unknown = [n for n in files if n not in KNOWN_FILES]
        if unknown:  # the manifest may only list names a later save knows it may delete
            raise FxPruneError(f"saving {path}: an export wrote {unknown}, which fxprune does not "
                               "know as a save file (an fxprune bug: please report it)")
        _write_text(stage / "meta.json", json.dumps(
            _meta(result, inputs, factory, files + [MANIFEST]), indent=2) + "\n")
        write_manifest(stage, files)
    return Path(path)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()


# ----------------------------------------------------------------------- reading
def _bad_meta(file: Path, what: str) -> MetaFileError:
    return MetaFileError(f"{file}: {what}; save the model again, or repair that field of "
                         "meta.json by hand")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_meta(meta: Any, file: Path) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise _bad_meta(file, "is not a JSON object")
    if meta.get("format") not in _FORMATS:
        raise MetaFileError(f"{file} has format {meta.get('format')!r}; this fxprune reads "
                            f"{', '.join(_FORMATS)} (upgrade fxprune, or save the model again)")
    shapes, dtypes = meta.get("input_shapes"), meta.get("input_dtypes")
    if not isinstance(shapes, list) or not all(isinstance(s, list) for s in shapes):
        raise _bad_meta(file, "has no input_shapes list (e.g. [[1, 3, 224, 224]])")
    for i, s in enumerate(shapes):
        if not all(_is_int(d) and d >= 1 for d in s):
            raise _bad_meta(file, f"input_shapes[{i}] = {s} is not a list of positive ints")
        if math.prod(s) > _MAX_ELEMENTS:
            raise _bad_meta(file, f"input_shapes[{i}] = {s} has more than {_MAX_ELEMENTS} "
                            "elements")
    if not isinstance(dtypes, list) or len(dtypes) != len(shapes):
        raise _bad_meta(file, f"input_dtypes must list one dtype per input ({len(shapes)})")
    for i, d in enumerate(dtypes):
        if d not in _DTYPES:
            raise _bad_meta(file, f"input_dtypes[{i}] = {d!r} is not a dtype fxprune knows "
                            f"({', '.join(_DTYPES)})")
    spec = meta.get("model_factory")
    if spec is not None and not isinstance(spec, str):
        raise _bad_meta(file, f"model_factory = {spec!r} is not a string")
    return meta


def _meta_file(path: Path) -> Path:
    file = path / "meta.json"
    if not path.is_dir():
        raise MetaFileError(f"{path} is not a directory: not an fxprune save")
    if not file.is_file():
        raise MetaFileError(f"{path} is not an fxprune save: no meta.json")
    return file


def read_meta(path: PathLike) -> dict[str, Any]:
    """The ``meta.json`` of a saved model directory, checked against its manifest and
    validated (``MetaFileError`` / ``ChecksumError`` naming the file otherwise)."""
    path = Path(path)
    recover(path)
    file = _meta_file(path)
    manifest = read_manifest(path)
    if manifest is not None:
        check_files(path, {k: v for k, v in manifest.items() if k == "meta.json"})
    try:
        meta = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad_meta(file, f"is not valid JSON ({e})") from e
    return _check_meta(meta, file)


def _inputs_from_meta(meta: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(s, generator=gen).to(getattr(torch, d))
                 for s, d in zip(meta["input_shapes"], meta["input_dtypes"]))


def saved_factory(path: PathLike, *, trust_factory: bool = False,
                  meta: dict[str, Any] | None = None) -> Callable[[], nn.Module]:
    """The zero-argument model factory the save at ``path`` names in its meta.json: a
    registry model only, unless ``trust_factory`` (then any spec, imports included)."""
    path = Path(path)
    meta = meta if meta is not None else read_meta(path)
    spec = meta.get("model_factory")
    if not spec:
        raise FxPruneError(f"{path / 'meta.json'} names no model factory; pass model_factory "
                           "(a callable that builds the unpruned model)")
    if trust_factory:
        return resolve_factory(spec)
    return registry_factory(spec, source=str(path / "meta.json"))


def _weights_file(path: Path) -> Path:
    """Check the directory whole (manifest, checksums) and name its weights file."""
    manifest = read_manifest(path)
    if manifest is not None:
        check_files(path, manifest)
        names = (WEIGHTS, "plan.json", "meta.json")
    else:  # the first format: no manifest, a tensors-only torch.save file
        names = ("state_dict.pt", "plan.json")
    for name in names:
        if not (path / name).is_file() or (manifest is not None and name not in manifest):
            raise MetaFileError(f"{path} is incomplete: {name} is missing; save the model again")
    return path / names[0]


def load(path: PathLike, model_factory: Callable[[], nn.Module] | str | None = None,
         example_inputs: Any = None, *, trust_factory: bool = False) -> Any:
    """Rebuild a saved pruned model: replay ``plan.json`` on a fresh ``model_factory()``
    model with ``fxprune.apply_plan``, then load the weights strictly.

    ``model_factory`` is a callable or a model spec string of your own (it may import),
    or None for the spec in meta.json, which must be a registry model
    (``UntrustedFactoryError`` otherwise) unless ``trust_factory=True``.
    ``example_inputs`` default to random tensors of the saved shapes and dtypes.
    Returns the ``PruneResult`` (``.module`` is the pruned GraphModule, in eval mode).
    Raises ``ChecksumError`` / ``CorruptFileError`` naming a damaged file, and
    ``PlanMismatchError`` if the model is not the one the plan was made for.
    """
    import fxprune

    path = Path(path)
    recover(path)
    _meta_file(path)
    weights = _weights_file(path)
    meta = read_meta(path)
    if model_factory is None:
        model_factory = saved_factory(path, trust_factory=trust_factory, meta=meta)
    elif isinstance(model_factory, str):
        model_factory = resolve_factory(model_factory)
    inputs = _as_tuple(example_inputs) or _inputs_from_meta(meta)
    plan_file = path / "plan.json"
    plan = fxprune.PruningPlan.from_json(plan_file.read_bytes(), source=str(plan_file))
    model = model_factory().eval()
    result = fxprune.apply_plan(model, inputs, plan)
    state = read_state_dict(weights)
    try:
        result.module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise PlanMismatchError(f"the weights in {weights} do not fit the model "
                                f"rebuilt from the plan: {first[1] if len(first) > 1 else e}"
                                ) from e
    result.module.eval()
    return result
