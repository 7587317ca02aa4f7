"""``thinet``: ThiNet (Luo et al., 2017) -- prune a layer's channels by what the
*next* layer needs, then rescale the kept input channels by least squares.

For every group with exactly one consumer (the Conv2d (groups=1) or Linear
whose input channels are the group's units, called once) the pass captures
the consumer's input on the calibration batches (eval mode, hooks removed
afterwards) and accumulates the :class:`~.reconstruct.ChannelGram` of its
per-channel output contributions. ThiNet's greedy removes, one at a time, the
channel whose removal adds least reconstruction error; the **score** of a unit
is the step at which the greedy removes it, so the planner's lowest-``n`` pick
is exactly ThiNet's selection for that count (the greedy is nested), whatever
set ``ratio`` / ``global_ranking`` / ``target_macs`` asks for. After selection
the consumer's kept input columns are multiplied by the least-squares scales
(a ``weight_updates`` entry for the consumer's weight in the pruned module).

Groups with several consumers (residual streams) or an unsupported one
(grouped conv, ConvTranspose, attention) are skipped and stay unpruned, as in
the paper, which prunes only the first layer of each residual block;
``fallback="l1"`` scores them by group L1 instead (no reconstruction).

One-shot: every layer is scored and rescaled on the *unpruned* network's
activations. The paper prunes layer by layer with fine-tuning in between;
call ``fxprune.prune`` once per step for that.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fxprune.channel_graph import ChannelGraph, Group
from fxprune.criteria import CriterionOutput
from fxprune.errors import FxPruneError
from fxprune.plan import PruningPlan
from fxprune.rewrite import select

from .calibration import capture_inputs, require_calibration
from .magnitude import group_norm_scores
from .reconstruct import ChannelGram, channel_gram, least_squares_rescale

__all__ = ["Consumer", "single_consumer", "consumers", "accumulate_grams", "greedy_order",
           "pruned_tensor", "kept_channels", "thinet_criterion"]

_NORM = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class Consumer:
    """The one layer that reads a group's channels: ``unit_of[c]`` owns its input channel c."""

    group: Group
    module: str
    weight: str  # canonical name of the consumer's weight
    unit_of: np.ndarray


def _side(cg: ChannelGraph, member) -> str:
    """'consumer', 'ok' (producer / norm / pass-through) or 'unknown' for a param member."""
    mod_name, _, attr = member.name.rpartition(".")
    mod = cg.gm.get_submodule(mod_name) if mod_name else cg.gm
    if isinstance(mod, _NORM) or (attr == "bias" and member.dim == 0):
        return "ok"
    is_conv = isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed
    if attr == "weight" and (is_conv or isinstance(mod, nn.Linear)):
        if member.dim == 0:
            return "ok"
        if member.dim == 1 and (isinstance(mod, nn.Linear) or
                                (isinstance(mod, nn.Conv2d) and mod.groups == 1)):
            return "consumer"
    return "unknown"


def single_consumer(cg: ChannelGraph, group: Group) -> Consumer | None:
    """The group's only consumer, if it has exactly one that ThiNet/LASSO can fit."""
    found = []
    for m in group.params():
        side = _side(cg, m)
        if side == "unknown":
            return None
        if side == "consumer":
            found.append(m)
    if len(found) != 1:
        return None
    m = found[0]
    module = m.name.rpartition(".")[0]
    calls = sum(1 for n in cg.gm.graph.nodes if n.op == "call_module" and n.target == module)
    if calls != 1 or m.index.size != m.length or m.length != group.size or \
            np.unique(m.unit).size != group.size:
        return None  # partial input (concat), block-expanded (flatten), or a shared module
    unit_of = np.empty(m.length, dtype=np.int64)
    unit_of[m.index] = m.unit
    return Consumer(group, module, m.name, unit_of)


def consumers(cg: ChannelGraph) -> dict[str, Consumer]:
    """{group id: its single consumer} for every group ThiNet/LASSO can handle."""
    out = {}
    for g in cg.groups:
        c = single_consumer(cg, g)
        if c is not None:
            out[g.id] = c
    return out


def _add(a: ChannelGram | None, b: ChannelGram) -> ChannelGram:
    if a is None:
        return b
    return ChannelGram(a.gram + b.gram, a.cross + b.cross, a.target_sq + b.target_sq,
                       a.num_samples + b.num_samples)


def accumulate_grams(cg: ChannelGraph, cons: dict[str, Consumer], calibration: Iterable,
                     num_batches: int = 10, num_samples: int | None = None, *,
                     keep_inputs: bool = False, progress: bool = True,
                     description: str = "thinet"
                     ) -> tuple[dict[str, ChannelGram], dict[str, Tensor]]:
    """{module: ChannelGram} summed over batches (``num_samples`` positions per batch,
    all when None) and, with ``keep_inputs``, {module: all captured inputs}."""
    # CPU float32 copies: the statistics are float64 on the CPU whatever the model's device
    layers = {c.module: copy.deepcopy(cg.gm.get_submodule(c.module)).float().cpu()
              for c in cons.values()}
    grams: dict[str, ChannelGram | None] = dict.fromkeys(layers)
    kept: dict[str, list[Tensor]] = {n: [] for n in layers}
    batch = dict.fromkeys(layers, 0)

    def on_input(name: str, x: Tensor) -> None:
        g = channel_gram(layers[name], x, num_samples=num_samples, seed=batch[name])
        grams[name] = _add(grams[name], g)
        batch[name] += 1
        if keep_inputs:
            kept[name].append(x)

    if layers:
        capture_inputs(cg.gm, list(layers), calibration, num_batches, on_input=on_input,
                       progress=progress, description=description)
    inputs = {n: torch.cat(v) for n, v in kept.items()} if keep_inputs else {}
    return grams, inputs  # type: ignore[return-value]


def greedy_order(g: ChannelGram) -> np.ndarray:
    """``step[c]``: when ThiNet's greedy (:func:`~.reconstruct.thinet_select`, run down to
    no channel) removes channel c; removing the first ``n`` is ``thinet_select(g, C-n)``."""
    c = g.gram.shape[0]
    d_dot = g.gram.sum(1) - g.cross
    acc = torch.zeros(c, dtype=torch.float64)
    removed = torch.zeros(c, dtype=torch.bool)
    step = np.zeros(c)
    for k in range(c):
        cost = g.gram.diagonal() + 2 * acc - 2 * d_dot
        cost[removed] = float("inf")
        j = int(torch.argmin(cost))
        removed[j] = True
        step[j] = k
        acc += g.gram[:, j]
    return step


def kept_channels(cons: Consumer, plan: PruningPlan) -> np.ndarray | None:
    """The consumer's kept input channels, or None when the plan leaves the group whole."""
    gone = plan.removed.get(cons.group.id)
    if not gone:
        return None
    return np.flatnonzero(~np.isin(cons.unit_of, np.asarray(gone)))


def pruned_tensor(cg: ChannelGraph, plan: PruningPlan, name: str, full: Tensor,
                  skip_dims: tuple[int, ...] = ()) -> Tensor:
    """``full`` (shaped like parameter ``name`` before pruning) cut as shrink cuts it."""
    from .shrink import kept_indices

    key = next((k for k, names in cg.tensor_names.items() if name in names), f"p:{name}")
    dims = {d: idx for (k, d), idx in kept_indices(cg, plan).items()
            if k == key and d not in skip_dims}
    return select(full, dims) if dims else full.detach().clone()


def consumer_updates(cons: dict[str, Consumer], new_weight):
    """The ``weight_updates`` of a criterion that re-fits consumers: for a plan, the new
    weight ``new_weight(consumer, kept input channels, plan)`` of every consumer whose
    group the plan prunes."""
    def updates(plan: PruningPlan) -> dict[str, Tensor]:
        out = {}
        for c in cons.values():
            kept = kept_channels(c, plan)
            if kept is not None:
                out[c.weight] = new_weight(c, kept, plan)
        return out
    return updates


def _rescale_updates(cg: ChannelGraph, cons: dict[str, Consumer], grams: dict[str, ChannelGram]):
    def rescaled(c: Consumer, kept: np.ndarray, plan: PruningPlan) -> Tensor:
        w = cg.gm.get_parameter(c.weight).detach().clone()
        s = least_squares_rescale(grams[c.module], kept).to(w)
        w[:, kept] *= s.view(1, -1, *([1] * (w.ndim - 2)))
        return pruned_tensor(cg, plan, c.weight, w)
    return consumer_updates(cons, rescaled)


def score_consumers(name: str, cg: ChannelGraph, calibration, fallback: str | None,
                    score, num_batches: int, num_samples: int | None, progress: bool,
                    keep_inputs: bool = False):
    """The frame ThiNet and LASSO share: calibrate, score every single-consumer group
    with ``score(gram of the consumer's input)``, and give the other groups L1 scores
    if ``fallback="l1"``. Returns (consumers, grams, captured inputs, scores)."""
    if fallback not in (None, "l1"):
        raise FxPruneError(f"{name}: fallback must be None or 'l1', got {fallback!r}")
    calibration = require_calibration(calibration, name)
    cons = consumers(cg)
    grams, inputs = accumulate_grams(cg, cons, calibration, num_batches, num_samples,
                                     keep_inputs=keep_inputs, progress=progress,
                                     description=f"{name}: calibration")
    scores = {}
    for gid, c in cons.items():
        s = np.zeros(c.group.size)
        s[c.unit_of] = score(grams[c.module])
        scores[gid] = s
    if fallback == "l1":
        scores.update({g.id: group_norm_scores(cg, g, 1) for g in cg.groups if g.id not in cons})
    return cons, grams, inputs, scores


def thinet_criterion(cg: ChannelGraph, *, model: nn.Module | None = None, calibration=None,
                     num_batches: int = 10, num_samples: int | None = None,
                     fallback: str | None = None, progress: bool = True, **_) -> CriterionOutput:
    """Greedy-order scores for single-consumer groups, plus the rescaling of the consumers."""
    cons, grams, _, scores = score_consumers("thinet", cg, calibration, fallback, greedy_order,
                                             num_batches, num_samples, progress)
    return CriterionOutput(scores=scores, weight_updates=_rescale_updates(cg, cons, grams))
