"""Save and load pruned models without pickling classes.

    fxprune.io.save("out/r18", res, example_inputs=(x,), factory="resnet18", onnx=True)
    res = fxprune.io.load("out/r18")                # factory from meta.json
    res = fxprune.io.load("out/r18", lambda: torchvision.models.resnet18())

A saved model is a directory:

| file | what |
| --- | --- |
| ``plan.json`` | the ``PruningPlan`` (which units of which group were removed) |
| ``state_dict.pt`` | the pruned weights, tensors only (``torch.load(weights_only=True)``) |
| ``meta.json`` | fxprune and torch versions, model factory spec, input shapes, counts |
| ``model.onnx`` / ``model.pt2`` | optional deployment artefacts |

Loading replays the plan on a fresh model from the factory (``fxprune.apply_plan``)
and loads the weights strictly, so no class is ever unpickled. Every file is written
to a temporary file, fsynced and renamed into place, and the directory as a whole is
staged as ``DIR.tmp-XXXX`` and swapped in only when complete: a crash or an exception
mid-save leaves any previous save at ``DIR`` intact and no partial file behind.
"""
from __future__ import annotations

import ast
import contextlib
import difflib
import functools
import importlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import FxPruneError, PlanMismatchError

__all__ = ["FORMAT", "SpecError", "atomic_dir", "atomic_path", "load", "read_meta",
           "resolve_factory", "save"]

FORMAT = "fxprune-save/1"
PathLike = str | os.PathLike


class SpecError(FxPruneError, ValueError):
    """A model spec string names no model fxprune can build."""


_SPEC = re.compile(r"^\s*(?P<head>[^()\s]+)\s*(?:\((?P<args>.*)\))?\s*$", re.S)


def _spec_kwargs(spec: str, args: str | None) -> dict[str, Any]:
    if not args or not args.strip():
        return {}
    try:
        call = ast.parse(f"f({args})", mode="eval").body
        assert isinstance(call, ast.Call) and not call.args
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except (SyntaxError, ValueError, AssertionError) as e:
        raise SpecError(f"model spec {spec!r}: arguments must be keyword=literal, "
                        f"e.g. 'resnet18(num_classes=10)'") from e


def _torchvision_factory(name: str) -> Callable[..., nn.Module]:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        near = difflib.get_close_matches(name, names, n=3)
        raise SpecError(f"unknown torchvision model {name!r}"
                        + (f"; did you mean {', '.join(near)}?" if near else "")
                        + " (other forms: timm:NAME, cifar:NAME, package.module:factory)")
    return functools.partial(torchvision.models.get_model, name, weights=None)


def _prefixed_factory(prefix: str, name: str) -> Callable[..., nn.Module]:
    if prefix in ("torchvision", "tv"):
        return _torchvision_factory(name)
    if prefix == "timm":
        try:
            import timm
        except ImportError as e:
            raise SpecError("timm:... models need timm: pip install timm") from e
        return functools.partial(timm.create_model, name, pretrained=False)
    if prefix == "cifar":
        from fxprune import models

        if name not in models.list_models():
            raise SpecError(f"unknown cifar model {name!r}; known: {models.list_models()}")
        return functools.partial(models.get_model, name)
    try:
        obj: Any = importlib.import_module(prefix)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise SpecError(f"cannot import {prefix}:{name}: {e}") from e
    if not callable(obj):
        raise SpecError(f"{prefix}:{name} is not callable")
    return obj


def resolve_factory(spec: str) -> Callable[[], nn.Module]:
    """A zero-argument factory for a model spec string.

    ``resnet18`` (torchvision, no weights), ``timm:resnet18``, ``cifar:resnet56``
    (``fxprune.models``), ``package.module:factory``; any of them may end with keyword
    arguments, e.g. ``cifar:resnet20(num_classes=10, in_channels=1)``.
    """
    m = _SPEC.match(spec)
    if not m:
        raise SpecError(f"cannot parse model spec {spec!r}")
    head, kwargs = m["head"], _spec_kwargs(spec, m["args"])
    if ":" in head:
        prefix, name = head.split(":", 1)
        fn = _prefixed_factory(prefix, name)
    else:
        fn = _torchvision_factory(head)
    return functools.partial(fn, **kwargs)


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


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()


def _is_save_dir(path: Path) -> bool:
    return (path / "meta.json").is_file() or (path / "plan.json").is_file()


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a staging directory ``path.tmp-XXXX``; on success swap it in for ``path``
    (the previous ``path`` is removed only after the new one is in place); on any
    exception remove the staging directory and leave ``path`` untouched."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FxPruneError(f"{path} exists and is not a directory; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not _is_save_dir(path):
        raise FxPruneError(f"{path} is a non-empty directory that is not an fxprune save; "
                           "refusing to overwrite it (choose another --out or remove it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{path.name}.tmp-", dir=path.parent))
    try:
        yield staging
        _fsync_dir(staging)
        old = path.with_name(f"{path.name}.old-{uuid.uuid4().hex[:8]}")
        if path.exists():
            os.rename(path, old)
        os.rename(staging, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
    (e.g. ``"resnet18"``, ``"cifar:resnet20(in_channels=1)"``, ``"pkg.mod:fn"``).
    ``onnx``/``pt2`` also export the module, which needs ``example_inputs``.
    """
    inputs = _as_tuple(example_inputs)
    if (onnx or pt2) and not inputs:
        raise ValueError("save(onnx=True or pt2=True) needs example_inputs")
    module: nn.Module = result.module
    files = ["plan.json", "state_dict.pt", "meta.json"]
    with atomic_dir(path) as stage:
        _write_text(stage / "plan.json", result.plan.to_json(indent=2) + "\n")
        with atomic_path(stage / "state_dict.pt") as tmp:
            torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, tmp)
        if onnx:
            from .export import to_onnx

            to_onnx(module, inputs, stage / "model.onnx")
            files.append("model.onnx")
        if pt2:
            from .export import to_pt2

            to_pt2(module, inputs, stage / "model.pt2")
            files.append("model.pt2")
        _write_text(stage / "meta.json",
                    json.dumps(_meta(result, inputs, factory, files), indent=2) + "\n")
    return Path(path)


def read_meta(path: PathLike) -> dict[str, Any]:
    """The ``meta.json`` of a saved model directory."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise FxPruneError(f"{path} is not an fxprune save: no meta.json")
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise FxPruneError(f"{path}/meta.json has format {meta.get('format')!r}, "
                           f"this fxprune reads {FORMAT!r}")
    return meta


def _inputs_from_meta(meta: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(s, generator=gen).to(getattr(torch, d))
                 for s, d in zip(meta["input_shapes"], meta["input_dtypes"]))


def load(path: PathLike, model_factory: Callable[[], nn.Module] | str | None = None,
         example_inputs: Any = None) -> Any:
    """Rebuild a saved pruned model: replay ``plan.json`` on a fresh ``model_factory()``
    model with ``fxprune.apply_plan``, then load ``state_dict.pt`` strictly.

    ``model_factory`` is a callable, a model spec string, or None for the spec in
    meta.json; ``example_inputs`` default to random tensors of the saved shapes.
    Returns the ``PruneResult`` (``.module`` is the pruned GraphModule, in eval mode).
    Raises ``PlanMismatchError`` if the model is not the one the plan was made for.
    """
    import fxprune

    path = Path(path)
    meta = read_meta(path)
    for name in ("plan.json", "state_dict.pt"):
        if not (path / name).is_file():
            raise FxPruneError(f"{path} is incomplete: {name} is missing")
    if model_factory is None:
        if not meta.get("model_factory"):
            raise FxPruneError(f"{path}/meta.json names no model factory; pass model_factory")
        model_factory = meta["model_factory"]
    if isinstance(model_factory, str):
        model_factory = resolve_factory(model_factory)
    inputs = _as_tuple(example_inputs) or _inputs_from_meta(meta)
    plan = fxprune.PruningPlan.from_json((path / "plan.json").read_text(encoding="utf-8"))
    model = model_factory().eval()
    result = fxprune.apply_plan(model, inputs, plan)
    state = torch.load(path / "state_dict.pt", map_location="cpu", weights_only=True)
    try:
        result.module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise PlanMismatchError(f"the weights in {path}/state_dict.pt do not fit the model "
                                f"rebuilt from the plan: {first[1] if len(first) > 1 else e}"
                                ) from e
    result.module.eval()
    return result
