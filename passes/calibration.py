"""Calibration data for the data-driven criteria (ThiNet, LASSO, Taylor).

``calibration`` is any iterable of batches (a list, a DataLoader, a generator).
A batch is an input tensor, a tuple of input tensors, or an ``(input, target)``
pair (what a classification DataLoader yields); :func:`split_batch` says which.
:func:`iter_batches` walks at most ``num_batches`` of them behind a rich
progress bar (on stderr, gone when done) and moves them to the model's device.

While :func:`batch_cursor` is active (``fxprune.prune`` holds one around the
criterion), :func:`iter_batches` records which batch is being consumed, so a
forward that fails on a batch of the wrong shape, or a loss on labels out of
range, becomes a :class:`~fxprune.errors.CalibrationError` naming that batch
and the expected shapes (:func:`calibration_error`).

Criteria run the model in eval mode (:func:`eval_mode` restores every
submodule's flag afterwards) and never change it: :func:`capture_inputs`
removes its forward hooks even when the forward fails.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fxprune.errors import CalibrationError, FxPruneError

__all__ = ["Batch", "split_batch", "require_calibration", "iter_batches", "eval_mode",
           "module_device", "capture_inputs", "batch_cursor", "calibration_error"]


@dataclass(frozen=True)
class Batch:
    """Positional inputs of one forward, and the target when the data has one."""

    inputs: tuple[Tensor, ...]
    target: Tensor | None = None


def split_batch(batch: Any) -> Batch:
    """A tensor is an input; a 2-sequence ``(input, target)`` is a labelled batch
    (its input may itself be a tuple of tensors); a dict is an error."""
    if isinstance(batch, Tensor):
        return Batch((batch,))
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        inputs = (x,) if isinstance(x, Tensor) else tuple(x)
        return Batch(inputs, y if isinstance(y, Tensor) else None)
    if isinstance(batch, (tuple, list)) and batch and all(isinstance(t, Tensor) for t in batch):
        return Batch(tuple(batch))
    raise FxPruneError(
        f"calibration batch of type {type(batch).__name__} is not understood; yield an input "
        "tensor or an (input, target) pair per batch")


@dataclass
class _Cursor:
    """The batch an iter_batches consumer holds (``batch`` is None between walks)."""

    index: int = -1
    batch: Batch | None = None


_CURSORS: list[_Cursor] = []


@contextmanager
def batch_cursor() -> Iterator[_Cursor]:
    """Record, while active, the calibration batch being consumed (see calibration_error)."""
    cursor = _Cursor()
    _CURSORS.append(cursor)
    try:
        yield cursor
    finally:
        _CURSORS.remove(cursor)


def _mark(index: int, batch: Batch | None) -> None:
    if _CURSORS:
        _CURSORS[-1].index, _CURSORS[-1].batch = index, batch


def _shape(t: Any) -> str:
    return "x".join(map(str, t.shape)) if isinstance(t, Tensor) else type(t).__name__


def calibration_error(cursor: _Cursor, cause: BaseException, expected: Sequence[Sequence[int]],
                      num_classes: int | None = None) -> CalibrationError | None:
    """The CalibrationError for ``cause`` raised while batch ``cursor.index`` was in use
    (None when no batch was): the batch, the shapes it had, the shapes expected
    (``expected`` are the example inputs' shapes; any batch size) and the label range."""
    b = cursor.batch
    if b is None:
        return None
    want = ", ".join("Nx" + "x".join(map(str, s[1:])) for s in expected)
    got = ", ".join(_shape(t) for t in b.inputs)
    labels = ""
    if isinstance(b.target, Tensor) and not b.target.is_floating_point() and b.target.numel():
        labels = f", labels {int(b.target.min())}..{int(b.target.max())}"
    classes = f" and labels in [0, {num_classes})" if labels and num_classes else ""
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return CalibrationError(
        f"calibration batch {cursor.index} (0-based) failed in the criterion's forward: "
        f"{type(cause).__name__}: {text}; expected inputs shaped {want}{classes}, "
        f"got {got}{labels}; "
        "fix: make calibration= yield batches shaped like example_inputs (input, or (input, "
        "target) pairs)")


def require_calibration(calibration: Iterable | None, criterion: str) -> Iterable:
    if calibration is None:
        raise FxPruneError(
            f"criterion {criterion!r} needs calibration data; pass calibration= to "
            "fxprune.prune (a DataLoader or a list of input batches / (input, target) pairs)")
    return calibration


def _to(t: Tensor | None, device: torch.device) -> Tensor | None:
    return t.to(device) if isinstance(t, Tensor) else t


def iter_batches(calibration: Iterable, num_batches: int = 10, *,
                 device: torch.device | None = None, description: str = "calibrating",
                 progress: bool = True) -> Iterator[Batch]:
    """Up to ``num_batches`` batches of ``calibration`` as :class:`Batch`, with a progress bar."""
    from rich.console import Console
    from rich.progress import Progress

    if num_batches < 1:
        raise FxPruneError(f"num_batches must be >= 1, got {num_batches}")
    try:
        total = min(num_batches, len(calibration))  # type: ignore[arg-type]
    except TypeError:  # a generator: no length
        total = num_batches
    seen = 0
    with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task(description, total=total)
        for raw in itertools.islice(calibration, num_batches):  # never draws one too many
            b = split_batch(raw)
            if device is not None:
                b = Batch(tuple(_to(t, device) for t in b.inputs), _to(b.target, device))
            _mark(seen, b)
            yield b
            seen += 1
            bar.advance(task)
    _mark(-1, None)
    if seen == 0:
        raise FxPruneError("calibration data yielded no batch; pass at least one input batch")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode, then restore each submodule's own training flag."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def module_device(module: nn.Module) -> torch.device:
    t = next(iter(module.parameters()), None)
    return t.device if t is not None else torch.device("cpu")


@torch.no_grad()
def capture_inputs(module: nn.Module, names: Sequence[str], calibration: Iterable,
                   num_batches: int = 10, *, on_input: Callable[[str, Tensor], None] | None = None,
                   progress: bool = True, description: str = "capturing layer inputs"
                   ) -> dict[str, Tensor]:
    """Run ``module`` (eval mode) on the calibration batches and return the first
    positional input of every submodule in ``names``, concatenated over batches
    (float32, on the CPU). With ``on_input(name, x)`` each batch's input is handed
    over instead of kept (streaming statistics; the result is then empty).
    The hooks are removed afterwards."""
    store: dict[str, list[Tensor]] = {n: [] for n in names}

    def hook_for(name: str):
        def hook(_mod: nn.Module, args: tuple) -> None:
            x = args[0].detach().float().cpu()
            if on_input is not None:
                on_input(name, x)
                x = x[:0]
            store[name].append(x)
        return hook

    handles = []
    try:
        for n in names:
            try:
                sub = module.get_submodule(n)
            except AttributeError as e:
                raise FxPruneError(f"capture_inputs: no submodule {n!r} in "
                                   f"{type(module).__name__}") from e
            handles.append(sub.register_forward_pre_hook(hook_for(n)))
        with eval_mode(module):
            for b in iter_batches(calibration, num_batches, device=module_device(module),
                                  description=description, progress=progress):
                module(*b.inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, v in store.items() if not v]
    if missing:
        raise FxPruneError(f"capture_inputs: module(s) {missing[:3]} never ran on the calibration "
                           "data; check that the batches reach them")
    return {} if on_input is not None else {n: torch.cat(v) for n, v in store.items()}
