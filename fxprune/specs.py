"""Model spec strings: ``resnet18``, ``timm:NAME``, ``cifar:NAME``, ``package.module:factory``,
each with optional literal keyword arguments (``cifar:resnet20(num_classes=10)``).

Two entry points, for two kinds of trust:

- :func:`resolve_factory` is for specs a *person typed* (the CLI's MODEL argument, a
  ``factory=`` string in code): any of the forms, ``package.module:factory`` included,
  which imports that module.
- :func:`registry_factory` is for specs *read from a file* (a saved directory's
  ``meta.json``): only models of the known registries (torchvision, timm, the
  project's ``cifar:`` models) by name, with literal keyword arguments and none that
  loads a file or downloads weights. Nothing is imported that the file names;
  anything else raises :class:`~fxprune.file_errors.UntrustedFactoryError`.
"""
from __future__ import annotations

import ast
import difflib
import functools
import importlib
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from .errors import FxPruneError
from .file_errors import UntrustedFactoryError

__all__ = ["REGISTRIES", "SpecError", "registry_factory", "resolve_factory"]


class SpecError(FxPruneError, ValueError):
    """A model spec string names no model fxprune can build."""


REGISTRIES = ("torchvision", "tv", "timm", "cifar")
_SPEC = re.compile(r"^\s*(?P<head>[^()\s]+)\s*(?:\((?P<args>.*)\))?\s*$", re.S)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)?$")  # timm allows NAME.TAG
# keyword arguments that make a registry read a file or fetch weights
_LOADS_SOMETHING = re.compile(r"pretrain|^weights|checkpoint|file|path|url|hub|dir|"
                              r"cache|download", re.I)


def _spec_kwargs(spec: str, args: str | None) -> dict[str, Any]:
    if not args or not args.strip():
        return {}
    try:
        call = ast.parse(f"f({args})", mode="eval").body
        assert isinstance(call, ast.Call) and not call.args
        assert all(kw.arg for kw in call.keywords)  # no **kwargs
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError, AssertionError, TypeError, MemoryError,
            RecursionError) as e:
        raise SpecError(f"model spec {spec!r}: arguments must be keyword=literal, "
                        f"e.g. 'resnet18(num_classes=10)'") from e


def _parse(spec: str) -> tuple[str, str, dict[str, Any]]:
    """(prefix or '', name, kwargs)."""
    m = _SPEC.match(spec) if isinstance(spec, str) else None
    if not m:
        raise SpecError(f"cannot parse model spec {spec!r}")
    prefix, name = m["head"].split(":", 1) if ":" in m["head"] else ("", m["head"])
    return prefix, name, _spec_kwargs(spec, m["args"])


def _torchvision_factory(name: str) -> Callable[..., nn.Module]:
    import torchvision

    names = torchvision.models.list_models()
    if name not in names:
        near = difflib.get_close_matches(name, names, n=3)
        raise SpecError(f"unknown torchvision model {name!r}"
                        + (f"; did you mean {', '.join(near)}?" if near else "")
                        + " (other forms: timm:NAME, cifar:NAME, package.module:factory)")
    return functools.partial(torchvision.models.get_model, name, weights=None)


def _timm_factory(name: str, *, registered_only: bool) -> Callable[..., nn.Module]:
    try:
        import timm
    except ImportError as e:
        raise SpecError("timm:... models need timm: pip install timm") from e
    if registered_only and not (_NAME.match(name)
                                and name.split(".")[0] in timm.list_models()):
        raise SpecError(f"unknown timm model {name!r} (expected a name from timm.list_models())")
    return functools.partial(timm.create_model, name, pretrained=False)


def _cifar_factory(name: str) -> Callable[..., nn.Module]:
    from fxprune import models

    if name not in models.list_models():
        raise SpecError(f"unknown cifar model {name!r}; known: {models.list_models()}")
    return functools.partial(models.get_model, name)


def _registry(prefix: str, name: str, *, registered_only: bool) -> Callable[..., nn.Module]:
    if prefix in ("", "torchvision", "tv"):
        return _torchvision_factory(name)
    if prefix == "timm":
        return _timm_factory(name, registered_only=registered_only)
    return _cifar_factory(name)


def _import_factory(prefix: str, name: str) -> Callable[..., nn.Module]:
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
    """A zero-argument factory for a model spec string a person typed.

    ``resnet18`` (torchvision, no weights), ``timm:resnet18``, ``cifar:resnet56``
    (``fxprune.models``), ``package.module:factory`` (imported); any of them may end
    with keyword arguments, e.g. ``cifar:resnet20(num_classes=10, in_channels=1)``.
    For a spec read from a file use :func:`registry_factory`.
    """
    prefix, name, kwargs = _parse(spec)
    if prefix in REGISTRIES or not prefix:
        fn = _registry(prefix, name, registered_only=False)
    else:
        fn = _import_factory(prefix, name)
    return functools.partial(fn, **kwargs)


def registry_factory(spec: Any, source: str = "the file") -> Callable[[], nn.Module]:
    """A zero-argument factory for a spec read from ``source`` (a file): a registry model
    by name with literal keyword arguments, never an import. Raises
    ``UntrustedFactoryError`` for anything else."""
    how = ("pass model_factory= (a callable or spec you trust) or trust_factory=True "
           "(CLI: --trust-factory) if you trust this directory")
    try:
        prefix, name, kwargs = _parse(spec)
    except SpecError as e:
        raise UntrustedFactoryError(f"{source} names the model factory {spec!r}, which is not "
                                    f"a registry model spec ({e}); {how}") from e
    if prefix and prefix not in REGISTRIES:
        raise UntrustedFactoryError(
            f"{source} names the model factory {spec!r}: loading never imports or calls "
            f"code a file names, only registry models (torchvision NAME, timm:NAME, "
            f"cifar:NAME); {how}")
    bad = sorted(k for k in kwargs if _LOADS_SOMETHING.search(k))
    if bad:
        raise UntrustedFactoryError(f"{source}: model factory {spec!r} passes {bad}, which "
                                    f"would load a file or download weights; {how}")
    try:
        fn = _registry(prefix, name, registered_only=True)
    except SpecError as e:
        raise UntrustedFactoryError(f"{source}: {e}; {how}") from e
    return functools.partial(fn, **kwargs)
