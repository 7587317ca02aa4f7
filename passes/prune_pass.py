"""PrunePass: structured pruning as one step of a ``torch.fx`` pass pipeline.

    pm = PassManager([FuseConvBN(), PrunePass((x,), ratio=0.5, ignore=["fc"])])
    out = pm(torch.fx.symbolic_trace(model.eval()))
    out.graph_module                      # fused, then physically pruned

``call(gm)`` runs ``fxprune.prune`` (analysis, criterion, shrink) on the graph module
and returns ``PassResult(pruned_gm, modified)``. The input graph module is left
alone: the result is a new, smaller module. ``modified`` is True exactly when some
parameter or buffer changed shape; when nothing is pruned (ratio 0, every group
frozen or ignored) the *input* module is returned with ``modified=False``.

``requires`` checks that the input is a linted ``GraphModule`` and records its output
shapes on the example inputs; ``ensures`` checks that the pruned graph lints and still
produces those shapes. Unlike ``PassBase.__call__``, which runs ``ensures`` on the
input, this pass checks the module it returns. ``self.result`` keeps the last
``PruneResult`` (with the plan) for saving or ``fxprune.verify``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.fx import GraphModule
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxprune.errors import FxPruneError, ShrinkError

__all__ = ["PrunePass"]


def _output_shapes(gm: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    """Output shapes of one eval-mode forward (so BatchNorm statistics are not touched)."""
    flags = [m.training for m in gm.modules()]
    gm.eval()
    try:
        with torch.no_grad():
            out = gm(*inputs)
    finally:
        for m, f in zip(gm.modules(), flags):
            m.training = f
    leaves = out if isinstance(out, (tuple, list)) else [out]
    return [tuple(t.shape) for t in leaves if isinstance(t, torch.Tensor)]


def _signature(gm: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in gm.state_dict().items()}


class PrunePass(PassBase):
    """Prune a GraphModule with ``fxprune.prune(gm, example_inputs, ratio, criterion, **kw)``.

    ``kw`` goes to ``fxprune.prune`` (``ignore`` as qualified names, since module
    objects do not survive earlier passes; ``global_ranking``, ``round_to`` …).
    """

    def __init__(self, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                 ratio: float = 0.5, criterion: str = "l1", check_shapes: bool = True,
                 **prune_kwargs: Any) -> None:
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"PrunePass: ratio must be in [0, 1), got {ratio}")
        self.example_inputs = ((example_inputs,) if isinstance(example_inputs, torch.Tensor)
                               else tuple(example_inputs))
        self.ratio, self.criterion = ratio, criterion
        self.check_shapes = check_shapes
        self.prune_kwargs = prune_kwargs
        self.result: Any = None
        self._expected: list[tuple[int, ...]] | None = None

    def __call__(self, graph_module: GraphModule) -> PassResult:
        self.requires(graph_module)
        res = self.call(graph_module)
        self.ensures(res.graph_module)
        return res

    def requires(self, graph_module: GraphModule) -> None:
        if not isinstance(graph_module, GraphModule):
            raise FxPruneError(f"PrunePass needs a torch.fx.GraphModule, got "
                               f"{type(graph_module).__name__}; trace it first "
                               "(torch.fx.symbolic_trace or fxprune.trace)")
        graph_module.graph.lint()
        if self.check_shapes:
            self._expected = _output_shapes(graph_module, self.example_inputs)

    def call(self, graph_module: GraphModule) -> PassResult:
        import fxprune

        before = _signature(graph_module)
        self.result = fxprune.prune(graph_module, self.example_inputs, ratio=self.ratio,
                                    criterion=self.criterion, **self.prune_kwargs)
        pruned = self.result.module
        if _signature(pruned) == before:
            return PassResult(graph_module, False)
        pruned.train(graph_module.training)
        return PassResult(pruned, True)

    def ensures(self, graph_module: GraphModule) -> None:
        graph_module.graph.lint()
        if not self.check_shapes or self._expected is None:
            return
        got = _output_shapes(graph_module, self.example_inputs)
        if got != self._expected:
            raise ShrinkError(f"PrunePass changed the output shapes: {self._expected} -> {got}")
