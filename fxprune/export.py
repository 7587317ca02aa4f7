"""Export a (pruned) module for deployment: ONNX and torch.export ``.pt2``.

    fxprune.export.to_onnx(res.module, (x,), "model.onnx")     # batch dim dynamic
    fxprune.export.to_pt2(res.module, (x,), "model.pt2")       # ExportedProgram
    fxprune.export.check_onnx(res.module, (x,), "model.onnx")  # ORT == torch, max diff

ONNX export uses the TorchScript-based exporter (``torch.onnx.export(dynamo=False)``)
by default: on torch 2.15 it honours ``opset=17``, writes one self-contained file and is
about 3x faster than the dynamo exporter, which forces opset 18 and writes the weights
as external data. ``exporter="dynamo"`` selects the torch.export-based one;
``exporter="auto"`` tries TorchScript and falls back to dynamo (for torch releases that
drop the legacy exporter). Both write atomically: a crash never leaves half a file.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .errors import FxPruneError
from .io import atomic_path as _atomic_path

__all__ = ["ExportError", "to_onnx", "to_pt2", "check_onnx", "onnx_session"]

PathLike = str | os.PathLike


class ExportError(FxPruneError):
    """The module could not be exported to ONNX or torch.export."""


def _as_tuple(example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def _export_torchscript(module: nn.Module, args: tuple, f: Path, opset: int, dynamic: bool) -> None:
    names = [f"input{i}" if len(args) > 1 else "input" for i in range(len(args))]
    axes = {n: {0: "batch"} for n in names} | {"output": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation + tracer notes
        torch.onnx.export(module, args, str(f), dynamo=False, opset_version=opset,
                          input_names=names, output_names=["output"], dynamic_axes=axes,
                          do_constant_folding=True)


def _export_dynamo(module: nn.Module, args: tuple, f: Path, opset: int, dynamic: bool) -> None:
    shapes = tuple({0: torch.export.Dim("batch", min=1)} for _ in args) if dynamic else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        # the dynamo exporter implements opset >= 18 only and down-converts noisily
        prog = torch.onnx.export(module, args, dynamo=True, opset_version=max(opset, 18),
                                 dynamic_shapes=shapes, verbose=False)
        prog.save(str(f), external_data=False)


def to_onnx(module: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
            path: PathLike, opset: int = 17, dynamic_batch: bool = True,
            exporter: str = "torchscript") -> Path:
    """Export ``module`` (in eval mode) to an ONNX file at ``path``; returns the path.

    ``dynamic_batch`` makes dim 0 of every input and of the output symbolic, so one
    file serves every batch size. ``exporter`` is "torchscript", "dynamo" or "auto".
    """
    if exporter not in ("torchscript", "dynamo", "auto"):
        raise ValueError(f"exporter must be 'torchscript', 'dynamo' or 'auto', got {exporter!r}")
    args = _as_tuple(example_inputs)
    was_training = module.training
    module.eval()
    try:
        with _atomic_path(path) as tmp:
            try:
                if exporter == "dynamo":
                    _export_dynamo(module, args, tmp, opset, dynamic_batch)
                else:
                    _export_torchscript(module, args, tmp, opset, dynamic_batch)
            except Exception as e:
                if exporter != "auto":
                    raise ExportError(f"ONNX export ({exporter}) of {type(module).__name__} "
                                      f"failed: {e}; try exporter='dynamo'") from e
                _export_dynamo(module, args, tmp, opset, dynamic_batch)
    finally:
        module.train(was_training)
    return Path(path)


def to_pt2(module: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
           path: PathLike, dynamic_batch: bool = False) -> Path:
    """Export ``module`` with ``torch.export`` and save the ExportedProgram to ``path``.

    Load it back with ``torch.export.load(path).module()``.
    """
    args = _as_tuple(example_inputs)
    shapes = (tuple({0: torch.export.Dim("batch", min=1)} for _ in args)
              if dynamic_batch else None)
    was_training = module.training
    module.eval()
    try:
        prog = torch.export.export(module, args, dynamic_shapes=shapes, strict=False)
    except Exception as e:
        raise ExportError(f"torch.export of {type(module).__name__} failed: {e}") from e
    finally:
        module.train(was_training)
    with _atomic_path(path) as tmp:
        torch.export.save(prog, str(tmp))
    return Path(path)


def onnx_session(path: PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on ``path`` with full graph optimisation."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError("onnxruntime is not installed: pip install onnxruntime (a core dependency of fxprune: reinstall it)") from e
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts,
                                providers=list(providers or ["CPUExecutionProvider"]))


def check_onnx(module: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
               path: PathLike, rtol: float = 1e-4, atol: float = 1e-4) -> float:
    """Run the ONNX file with ONNX Runtime and compare with ``module``; returns the max
    absolute difference, raises ``ExportError`` if outside ``atol + rtol * |ref|``."""
    args = _as_tuple(example_inputs)
    sess = onnx_session(path)
    feed = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
    got = torch.from_numpy(sess.run(None, feed)[0])
    was_training = module.training
    module.eval()
    with torch.inference_mode():
        ref = module(*args)
    module.train(was_training)
    ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    diff = (got - ref.float()).abs()
    if not torch.all(diff <= atol + rtol * ref.float().abs()):
        raise ExportError(f"ONNX Runtime output differs from torch: max abs diff "
                          f"{diff.max().item():.3g} (atol={atol}, rtol={rtol}) for {path}")
    return float(diff.max())
