"""Per-layer latency lookup tables (HALP-style), measured on the deployment backend.

    table = LatencyTable("onnxruntime", threads=1, batch_size=1)
    spec = LayerSpec("conv", (("in", 64), ("out", 64)), (("kernel", (3, 3)), ...))
    table.ms(spec)                          # one standalone conv, measured once, cached
    table.ms(spec.at(out=48))               # the same layer at another width
    detect_alignment({w: table.ms(spec.at(out=w)) for w in range(1, 49)})

A layer is timed as a small standalone module (its weights random, its input of the
layer's real shape at ``batch_size``) on the backend, minus the backend's per-call
overhead (an empty model's latency). ONNX Runtime gets its one-node ONNX graph built
directly with ``onnx.helper`` (milliseconds, where exporting through torch costs
~0.2 s a layer); other backends time a torch module through ``Backend.prepare``.
Results live in one JSON file per (backend, version, device, threads) under
``$FXPRUNE_CACHE`` or ``~/.cache/fxprune``/latency, each entry keyed by batch size and
the layer's full spec (kind, widths, kernel, stride, input shape), so a second run
measures nothing (``table.measured`` counts real measurements).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .bench.backends import Backend, get_backend
from .bench.latency import time_runners
from .errors import FxPruneError
from .io import atomic_path

__all__ = ["LayerSpec", "LatencyTable", "cache_dir", "detect_alignment", "ALIGNMENTS"]

ALIGNMENTS = (2, 4, 8, 16)  # candidate channel alignments, tried largest first
KINDS = ("conv", "depthwise", "linear", "mha")


def cache_dir() -> Path:
    """``$FXPRUNE_CACHE`` (if set) or ``~/.cache/fxprune``, with a ``latency`` folder."""
    root = os.environ.get("FXPRUNE_CACHE") or Path.home() / ".cache" / "fxprune"
    return Path(root) / "latency"


@dataclass(frozen=True)
class LayerSpec:
    """One layer: its ``kind``, its prunable widths (``axes``) and everything else
    that sets its cost (``attrs``: kernel, stride, padding, spatial size, tokens...)."""

    kind: str
    axes: tuple[tuple[str, int], ...]
    attrs: tuple[tuple[str, Any], ...]

    def width(self, axis: str) -> int:
        return dict(self.axes)[axis]

    def attr(self, name: str) -> Any:
        return dict(self.attrs)[name]

    def at(self, **widths: int) -> LayerSpec:
        """The same layer with some axes at other widths."""
        return LayerSpec(self.kind, tuple((a, int(widths.get(a, w))) for a, w in self.axes),
                         self.attrs)

    def key(self) -> str:
        return f"{self.kind}{list(self.axes)}{list(self.attrs)}".replace(" ", "")


# ---------------------------------------------------------------- standalone layers
class _MHA(nn.Module):
    """Self-attention at any head count (fxprune's pruned MHA), batch first."""

    def __init__(self, s: LayerSpec):
        super().__init__()
        from .nn import PrunedMultiheadAttention

        self.attn = PrunedMultiheadAttention(s.width("in"), s.width("out"), s.width("heads"),
                                             s.attr("head_dim"), batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def torch_layer(s: LayerSpec, batch: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``s`` as a torch module and an input of its shape at ``batch``."""
    if s.kind in ("conv", "depthwise"):
        k = s.attr("kernel")
        cin = s.width("ch") if s.kind == "depthwise" else s.width("in")
        cout = s.width("ch") if s.kind == "depthwise" else s.width("out")
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(k)]
        m = conv(cin, cout, k, s.attr("stride"), s.attr("padding"), s.attr("dilation"),
                 groups=cin if s.kind == "depthwise" else 1, bias=s.attr("bias"))
        return m.eval(), (torch.randn(batch, cin, *s.attr("spatial")),)
    if s.kind == "linear":
        m = nn.Linear(s.width("in"), s.width("out"), bias=s.attr("bias"))
        return m.eval(), (torch.randn(batch, *s.attr("lead"), s.width("in")),)
    if s.kind == "mha":
        return _MHA(s).eval(), (torch.randn(batch, s.attr("tokens"), s.width("in")),)
    raise FxPruneError(f"no standalone layer for kind {s.kind!r}; kinds: {', '.join(KINDS)}")


def onnx_layer(s: LayerSpec, batch: int) -> bytes | None:
    """A one-node ONNX model of a conv/linear ``s`` (None for kinds built through torch)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if s.kind in ("conv", "depthwise"):
        k = tuple(s.attr("kernel"))
        cin = s.width("ch") if s.kind == "depthwise" else s.width("in")
        cout = s.width("ch") if s.kind == "depthwise" else s.width("out")
        group = cin if s.kind == "depthwise" else 1
        w = rng.standard_normal((cout, cin // group, *k), dtype=np.float32)
        shape = [batch, cin, *s.attr("spatial")]
        pads = list(s.attr("padding"))
        node = helper.make_node("Conv", ["x", "w"] + (["b"] if s.attr("bias") else []), ["y"],
                                kernel_shape=list(k), strides=list(s.attr("stride")),
                                pads=pads + pads, dilations=list(s.attr("dilation")), group=group)
        inits = [numpy_helper.from_array(w, "w")]
        if s.attr("bias"):
            inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
        nodes = [node]
    elif s.kind == "linear":
        w = rng.standard_normal((s.width("in"), s.width("out")), dtype=np.float32)
        shape = [batch, *s.attr("lead"), s.width("in")]
        inits = [numpy_helper.from_array(w, "w")]
        if len(shape) == 2:
            inits.append(numpy_helper.from_array(np.zeros(s.width("out"), np.float32), "b"))
            nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"])]
        else:  # what torch exports for a Linear on 3-D input
            inits.append(numpy_helper.from_array(np.zeros(s.width("out"), np.float32), "b"))
            nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
                     helper.make_node("Add", ["h", "b"], ["y"])]
    else:
        return None
    graph = helper.make_graph(nodes, s.kind, [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, shape)], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _empty_onnx() -> bytes:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


# ---------------------------------------------------------------- the table
class LatencyTable:
    """Measured milliseconds of standalone layers on one backend, cached on disk."""

    def __init__(self, backend: str | Backend = "onnxruntime", threads: int | None = 1,
                 batch_size: int = 1, cache: Path | str | None = None,
                 warmup: int = 2, repeats: int = 5):
        try:
            self.backend = (backend if isinstance(backend, Backend)
                            else get_backend(backend, threads))
        except ValueError as e:
            raise FxPruneError(f"backend: {e}") from e
        self.batch_size, self.warmup, self.repeats = int(batch_size), warmup, repeats
        be = self.backend
        ident = f"{be.name}|{be.version()}|{be.device()}|threads={be.threads}"
        digest = hashlib.sha1(ident.encode()).hexdigest()[:12]
        self.path = Path(cache) if cache else cache_dir() / f"{be.name}-{digest}.json"
        self.header = {"backend": be.name, "version": be.version(), "device": be.device(),
                       "threads": be.threads}
        self.entries: dict[str, float] = self._load()
        self.measured = 0  # real measurements this object made (cache misses)
        self._dirty = False
        self._overhead: float | None = None

    def _load(self) -> dict[str, float]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return dict(doc.get("entries", {})) if doc.get("header") == self.header else {}

    def save(self) -> None:
        """Write the table (atomically) if anything new was measured."""
        if not self._dirty:
            return
        doc = {"header": self.header, "entries": self.entries}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(doc, indent=0, sort_keys=True), encoding="utf-8")
        self._dirty = False

    def entry_key(self, spec: LayerSpec) -> str:
        return f"b{self.batch_size}|{spec.key()}"

    def _runner(self, spec: LayerSpec | None):
        be = self.backend
        if be.name == "onnxruntime":  # fast path: the one-node graph, no torch export
            model = _empty_onnx() if spec is None else onnx_layer(spec, self.batch_size)
            if model is not None:
                return _ort_runner(model, be.threads, spec, self.batch_size)
        if spec is None:
            return be.prepare(nn.Identity().eval(), (torch.zeros(1),))
        module, inputs = torch_layer(spec, self.batch_size)
        return be.prepare(module, inputs)

    def _time(self, spec: LayerSpec | None) -> float:
        run = self._runner(spec)
        (times,) = time_runners([run], self.warmup, self.repeats, min_seconds=0.0)
        self.measured += 1
        return float(np.min(times))  # the least-disturbed run: the machine may be busy

    def overhead_ms(self) -> float:
        """The backend's per-call cost (an empty model), subtracted from every layer."""
        if self._overhead is None:
            key = f"b{self.batch_size}|overhead"
            if key not in self.entries:
                self.entries[key] = self._time(None)
                self._dirty = True
            self._overhead = self.entries[key]
        return self._overhead

    def ms(self, spec: LayerSpec) -> float:
        """Milliseconds of ``spec`` at this batch size, per-call overhead removed."""
        key = self.entry_key(spec)
        if key not in self.entries:
            self.entries[key] = self._time(spec)
            self._dirty = True
        return max(self.entries[key] - self.overhead_ms(), 1e-6)

    def close(self) -> None:
        self.save()
        self.backend.close()


def _ort_runner(model: bytes, threads: int, spec: LayerSpec | None, batch: int):
    import time

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    feed = {"x": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}

    def run() -> float:
        t0 = time.perf_counter()
        sess.run(None, feed)
        return (time.perf_counter() - t0) * 1e3

    return run


# ---------------------------------------------------------------- alignment
def detect_alignment(table: Mapping[int, float], candidates: tuple[int, ...] = ALIGNMENTS,
                     eps: float = 0.03, min_share: float = 0.75) -> int:
    """The channel alignment a latency-vs-width table shows (1 if none): the larger of
    what its efficient widths and what its jumps show.

    A width is *efficient* when it is cheaper, by more than ``eps``, than every wider
    width in the table (the steps of a staircase, the aligned widths of a kernel that
    falls back to a slow path elsewhere). The alignment is the largest candidate that
    divides at least ``min_share`` of the efficient widths at or above it (two at
    least); the widest width of the table is left out, as it is efficient by default.

    A *jump* is a width one channel past which the cost rises far faster than the
    compute (:func:`_jumps`): ORT CPU's convs along their input channels ramp within a
    block of 16 and then jump by ~1.8x (resnet18's layer1 conv at batch 32: 20 ms at 16,
    36 ms at 20), so every width of a ramp is efficient and the first rule sees no
    alignment there. The alignment is then the largest candidate dividing at least
    ``min_share`` of the jumps (two at least).
    """
    widths = sorted(table)
    lat = np.array([table[w] for w in widths], dtype=np.float64)
    right_min = np.minimum.accumulate(lat[::-1])[::-1]  # cheapest at this width or wider
    efficient = [w for i, w in enumerate(widths[:-1]) if lat[i] < (1 - eps) * right_min[i + 1]]
    return max(_dividing(efficient, candidates, min_share),
               _dividing(_jumps(widths, lat), candidates, min_share))


def _dividing(widths: list[int], candidates: tuple[int, ...], min_share: float) -> int:
    """The largest candidate dividing at least ``min_share`` of ``widths`` at or above it
    (two at least); 1 if none does."""
    for a in sorted(candidates, reverse=True):
        pool = [w for w in widths if w >= a]
        hits = sum(1 for w in pool if w % a == 0)
        if hits >= 2 and hits >= min_share * len(pool):
            return a
    return 1


JUMP_MIN_WIDTH = 8  # below it one more channel is a large share of the compute anyway


def _jumps(widths: list[int], lat: np.ndarray) -> list[int]:
    """Widths ``w`` (of at least ``JUMP_MIN_WIDTH``) where ``w + 1`` and ``w + 2`` channels
    both cost more than ``1.1 + 2 / w`` times as much: one channel more adds ``1 / w`` of
    the compute, so such a rise is a kernel changing path, not arithmetic (and one that
    lasts, not a noisy reading)."""
    out = []
    for i in range(len(widths) - 2):
        w = widths[i]
        if w >= JUMP_MIN_WIDTH and widths[i + 2] == w + 2 and lat[i] > 0 and \
                min(lat[i + 1], lat[i + 2]) > (1.1 + 2 / w) * lat[i]:
            out.append(w)
    return out
