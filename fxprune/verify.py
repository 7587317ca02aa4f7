"""verify(): the equivalence oracle for a rewrite, and the self-check prune() runs.

The original model with every removed unit's parameter entries zeroed must
compute what the pruned module computes. Exact up to float rounding wherever no
channel-mixing normalisation (LayerNorm) sits in a pruned group.

The tolerance follows the dtype (:func:`tolerance`): ``max(1e-5, 8 * eps)`` of
the least precise floating dtype among the example inputs and the parameters,
relative to the largest output magnitude. Measured on torchvision resnet18 at
224x224, l1 ratio 0.5: a correct rewrite differs by 2.4e-7 in fp32 (limit 1e-5),
3.5e-4 in fp16 (limit 7.8e-3) and 5.6e-3 in bf16 (limit 6.3e-2); a wrong index
map differs by O(0.1..1).

Some models amplify rounding far beyond that: RAFT refines its flow 12 times
through a correlation volume, and a one-ulp nudge of its fp32 inputs already
moves the outputs by ~3e-5 (relative). When the fp32 difference exceeds the
tolerance, :func:`rounding_recheck` asks whether it is rounding: it redoes the
comparison in float64 throughout (a dispatch mode turns the model's own casts to
float32 into casts to float64; a correct rewrite then differs by ~1e-15), and
where that cannot run, measures the reference's own rounding noise, the change
of its outputs under a one-ulp nudge of its float inputs; the difference passes
when it is within ``NOISE_FACTOR`` times that floor.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from .channel_graph import ChannelGraph
from .errors import VerificationError
from .module_state import restore_attributes, snapshot_attributes, torch_own
from .oracle_inputs import reduced_inputs, shapes_of
from .plan import PruningPlan
from .rewrite import copy_module, replace_tensor
from .trace import as_tuple

__all__ = ["verify", "check_rewrite", "OracleCheck", "tolerance", "zero_removed",
           "max_relative_diff", "rounding_recheck"]

FP32_RTOL = 1e-5  # the floor: fp32 rewrites of the zoo stay below it
EPS_FACTOR = 8  # fp16/bf16: rounding of a few layers' outputs, with a margin of ~10x
NOISE_FACTOR = 4  # RAFT: oracle diff / 1-ulp noise floor = 1.06; a wrong index map: >1e3


def _lowest_precision(*tensor_sources: Any) -> torch.dtype:
    worst = torch.float32
    for ts in tensor_sources:
        for t in ts:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and \
                    torch.finfo(t.dtype).eps > torch.finfo(worst).eps:
                worst = t.dtype
    return worst


def tolerance(model: torch.nn.Module | None = None, example_inputs: Any = ()) -> float:
    """Relative tolerance of the oracle for this model and input dtype:
    ``max(1e-5, 8 * torch.finfo(dtype).eps)`` of the least precise floating dtype."""
    params = model.parameters() if model is not None else ()
    dtype = _lowest_precision(params, _flat(example_inputs))
    return max(FP32_RTOL, EPS_FACTOR * torch.finfo(dtype).eps)


def zero_removed(model: torch.nn.Module, cg: ChannelGraph, plan: PruningPlan, *,
                 share_weights: bool = False) -> torch.nn.Module:
    """A copy of ``model`` with the parameter entries of every removed unit set to zero
    (the zeroed parameters are built from the originals, not copied twice). Every name
    the model gives a zeroed tensor is pointed at the zeroed copy: the export frontend
    keeps one name per tied tensor (GPT-2's ``lm_head.weight`` is ``wte.weight``).

    ``share_weights``: the parameters with nothing zeroed, and the buffers of torch's own
    layers (BatchNorm's statistics, read-only in eval mode), are the model's own objects,
    not copies (the self-check's oracle only reads them: copying the weights was a third
    of its cost on resnet18). Other buffers, containers and caches are still copied."""
    dims_of: dict[str, list[tuple[int, np.ndarray]]] = {}
    for (key, d), mask in cg.removed_masks(plan.removed).items():
        if key[0] == "p":
            dims_of.setdefault(key, []).append((d, np.flatnonzero(mask)))
    names_of: dict[int, list[str]] = {}
    for name, t in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(t), []).append(name)
    aliases = {key: tuple(dict.fromkeys([*cg.tensor_names[key], *names_of.get(
        id(model.get_parameter(cg.tensor_names[key][0])), ())])) for key in dims_of}
    zeroed = {n for names in aliases.values() for n in names}
    shared = [*(t for n, t in model.named_parameters(remove_duplicate=False) if n not in zeroed),
              *(t for m in model.modules() if torch_own(type(m)) for t in m._buffers.values()
                if t is not None)] if share_weights else ()
    dead = copy_module(model, skip=zeroed, share=shared)
    with torch.no_grad():
        for key, dims in dims_of.items():
            t = model.get_parameter(aliases[key][0]).detach()
            zero = torch.zeros((), dtype=t.dtype, device=t.device)
            replace_tensor(dead, aliases[key], torch.where(_removed_mask(t, dims), zero, t))
    return dead


def _removed_mask(t: torch.Tensor, dims: list[tuple[int, np.ndarray]]) -> torch.Tensor:
    """True at the entries of ``t`` some removed unit owns: one broadcast mask, so the zeroed
    copy is written in one ``torch.where`` (a clone and an index_fill_ per dim took 1.3x as
    long, masked_fill with a broadcast mask 2.5x)."""
    mask = torch.zeros((), dtype=torch.bool, device=t.device)
    for d, idx in dims:
        hit = torch.zeros(t.shape[d], dtype=torch.bool, device=t.device)
        hit[torch.as_tensor(idx, dtype=torch.long, device=t.device)] = True
        mask = mask | hit.view([-1 if i == d else 1 for i in range(t.ndim)])
    return mask


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat(o)]
    return []


def max_relative_diff(a: Any, b: Any) -> float:
    worst = 0.0
    for x, y in zip(_flat(a), _flat(b), strict=True):
        if x.shape != y.shape:
            return float("inf")
        scale = x.abs().max().item() + 1e-12
        worst = max(worst, (x.double() - y.double()).abs().max().item() / scale)
    return worst


def _oracle_diff(model: torch.nn.Module, cg: ChannelGraph, plan: PruningPlan,
                 pruned: torch.nn.Module, inputs: tuple, stacklevel: int = 3,
                 rtol: float | None = None, first: Iterable[tuple] = ()) -> tuple[float, tuple]:
    """Two eval-mode forwards: of a zeroed copy of ``model``, and of ``pruned`` (whose
    submodules get their training flags back afterwards). With ``rtol``, a difference
    above it that :func:`rounding_recheck` explains as rounding is returned as the
    float64 difference, or as 0 when only the noise floor could explain it. With
    ``rtol``, the inputs in ``first`` (oracle_inputs.reduced_inputs) are compared first,
    in order, and the first difference within ``rtol`` is the answer. Returns the
    difference and the input shapes it was measured on."""
    dead = zero_removed(model, cg, plan, share_weights=True).eval()
    versions = {name: (t, t._version) for name, t in model.named_parameters()}
    flags = [(m, m.training) for m in pruned.modules()]
    try:
        with torch.no_grad():
            for small in first if rtol is not None else ():
                quick = _quick_diff(dead, pruned.eval(), small)
                if quick is not None and quick <= rtol:
                    return quick, shapes_of(small)
            reference = dead(*inputs)
            diff = max_relative_diff(reference, pruned.eval()(*inputs))
            if rtol is not None and diff > rtol:
                diff = rounding_recheck(dead, pruned, inputs, reference, diff, rtol)
    finally:
        for m, flag in flags:
            m.training = flag
        _warn_if_written(versions, stacklevel + 1)
    if all(not t.any() for t in _flat(reference)):
        warnings.warn("verify: the model's output is all zeros on these inputs (a zero-initialised "
                      "head?), so the comparison proves nothing; re-initialise the head or compare "
                      "on a trained model", stacklevel=stacklevel)
    return diff, shapes_of(inputs)


def _quick_diff(dead: torch.nn.Module, pruned: torch.nn.Module, inputs: tuple) -> float | None:
    """The difference on reduced inputs, or None where it proves nothing: either module
    raised (a size baked into the graph), or an output is empty or all zeros. Whatever
    either forward cached in module attributes is put back: the pruned module is the
    user's next, and the oracle runs on the full inputs next if this proves nothing."""
    state = snapshot_attributes(dead) + snapshot_attributes(pruned)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # size warnings of a crop the user never asked for
            reference, out = dead(*inputs), pruned(*inputs)
        flat = _flat(reference)
        if not flat or any(t.numel() == 0 or not t.any() for t in flat):
            return None
        return max_relative_diff(reference, out)
    except Exception:  # noqa: BLE001  any failure here only sends the check to the full inputs
        return None
    finally:
        restore_attributes(state)


def _warn_if_written(versions: dict[str, tuple[torch.Tensor, int]], stacklevel: int) -> None:
    """The oracle shares the model's parameters: say so if a forward wrote into one."""
    written = [name for name, (t, v) in versions.items() if t._version != v]
    if written:
        warnings.warn(f"verify: the model's forward wrote into its parameter(s) "
                      f"{', '.join(written[:3])} in place while the oracle ran (in eval mode, "
                      "under no_grad); the self-check ran on shared weights, so the model holds "
                      "what that forward wrote. Pass check=False and call fxprune.verify on a "
                      "copy to check such a model", stacklevel=stacklevel)


_NARROW = (torch.float32, torch.float16, torch.bfloat16)


def _widen(v: Any) -> Any:
    """float32/16 dtypes and tensors (constants a module keeps outside its buffers) as float64."""
    if isinstance(v, torch.dtype) and v in _NARROW:
        return torch.float64
    if isinstance(v, torch.Tensor) and v.dtype in _NARROW:
        return v.double()
    return v


class _Float64Mode(TorchDispatchMode):
    """Every op runs in float64: a cast to float32 (RAFT's ``coords.float()``, an exported
    ``_to_copy(dtype=float32)``) casts to float64, and float32 constants are widened."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        args, kwargs = tree_map(_widen, (args, kwargs or {}))
        return func(*args, **kwargs)


def _float64(module: torch.nn.Module, inputs: tuple) -> Any:
    """A float64 copy of ``module`` run on float64 copies of the inputs, in float64 throughout."""
    wide = copy_module(module).double()
    with _Float64Mode():
        return wide(*tree_map(_widen, inputs))


def _nudged(inputs: tuple) -> tuple:
    """The inputs with every float entry moved one ulp up (integer inputs as they are)."""
    def nudge(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return torch.nextafter(v, torch.full_like(v, float("inf")))
        if isinstance(v, (list, tuple)):
            return type(v)(nudge(x) for x in v)
        return v
    return nudge(inputs)


def rounding_recheck(dead: torch.nn.Module, pruned: torch.nn.Module, inputs: tuple,
                     reference: Any, diff: float, rtol: float) -> float:
    """Is a difference ``diff`` above ``rtol`` float rounding? Returns the difference to
    hold against ``rtol`` instead: the float64 one where both modules run in float64
    (and it is within ``rtol``);
    else 0.0 when ``diff`` is within ``NOISE_FACTOR`` times the reference's own change
    under a one-ulp nudge of its inputs (its rounding noise); else ``diff`` unchanged.
    Runs under ``no_grad`` on modules already in eval mode."""
    try:
        diff64 = max_relative_diff(_float64(dead, inputs), _float64(pruned, inputs))
    except Exception:  # noqa: BLE001  an op without a float64 kernel: measure the noise floor
        diff64 = None
    if diff64 is not None and diff64 <= rtol:
        return diff64
    floor = max_relative_diff(reference, dead(*_nudged(inputs)))
    if diff <= NOISE_FACTOR * floor:
        warnings.warn(f"verify: the pruned module differs from the dead-unit oracle by {diff:.3g} "
                      f"(above {rtol:g}), within {NOISE_FACTOR}x this model's own rounding noise "
                      f"({floor:.3g}: its outputs' change when its inputs move by one ulp); "
                      "counted as rounding", stacklevel=3)
        return 0.0
    return diff


def verify(model: torch.nn.Module, result: Any, example_inputs: Any, *, rtol: float | None = None,
           raise_on_fail: bool = False) -> float:
    """Max relative difference between the pruned module and the dead-unit oracle.

    Both run in eval mode. ``result`` is a PruneResult. Raises VerificationError
    when ``raise_on_fail`` and the difference exceeds ``rtol`` (default: the
    dtype's :func:`tolerance`). When a criterion re-fitted weights after the
    rewrite (ThiNet, LASSO), the rewrite itself is what is verified.
    """
    inputs = as_tuple(example_inputs)
    structural = getattr(result, "structural_module", None)
    pruned = structural() if structural else result.module
    rtol = tolerance(model, inputs) if rtol is None else rtol
    diff, _ = _oracle_diff(model, result.graph, result.plan, pruned, inputs, rtol=rtol)
    if raise_on_fail and diff > rtol:
        mixing = [g.id for g in result.graph.groups if g.mixing and result.plan.removed.get(g.id)]
        hint = f" (groups with LayerNorm are not exact: {mixing[:3]})" if mixing else ""
        raise VerificationError(f"pruned module differs from the dead-unit oracle by {diff:.3g} "
                                f"(relative), above {rtol:g}{hint}")
    return diff


def _sub_plan(plan: PruningPlan, gids: Iterable[str]) -> PruningPlan:
    keep = set(gids)
    return dataclasses.replace(plan, removed={k: v for k, v in plan.removed.items() if k in keep})


class OracleCheck(NamedTuple):
    """What prune()'s self-check measured: the relative difference, and the shapes of the
    inputs it compared on (a reduced copy of the example inputs, or the inputs themselves)."""

    diff: float
    input_shapes: tuple[tuple[int, ...], ...]


def check_rewrite(model: torch.nn.Module, cg: ChannelGraph, plan: PruningPlan,
                  pruned: torch.nn.Module, example_inputs: Any,
                  shrink: Callable[[ChannelGraph, PruningPlan], torch.nn.Module],
                  rtol: float | None = None) -> OracleCheck | None:
    """The self-check of ``prune()``: raise VerificationError naming the groups whose
    rewrite is not exact; return the measured difference and the input shapes it was
    measured on (None: nothing exact to check).

    It compares on one sample cropped to at most 32x32 first, then on one uncropped sample
    (oracle_inputs.py: channel index maps do not depend on batch or spatial size), and on
    the full ``example_inputs`` whenever those comparisons fail, raise or prove nothing;
    a verdict against the rewrite is only ever given on the full inputs.

    Groups marked ``mixing`` (LayerNorm and the like) are not exact by design, so
    when the plan touches one, the oracle is run on the sub-plan of the plan's
    exact groups instead (one extra shrink); the mixing groups themselves are
    checked only by shrink's shape check. On a failure the culprit groups are
    found by bisection over the exact groups (shrink + two forwards per step).
    """
    inputs = as_tuple(example_inputs)
    rtol = tolerance(model, inputs) if rtol is None else rtol
    mixing = {g.id for g in cg.groups if g.mixing}
    exact = [gid for gid in plan.removed if gid not in mixing]
    touched_mixing = len(exact) < len(plan.removed)
    if touched_mixing and not exact and not plan.removed_blocks:
        return None
    sub = _sub_plan(plan, exact) if touched_mixing else plan
    diff, shapes = _oracle_diff(model, cg, sub, shrink(cg, sub) if touched_mixing else pruned,
                                inputs, stacklevel=4, rtol=rtol, first=reduced_inputs(inputs))
    if diff <= rtol:
        return OracleCheck(diff, shapes)

    def fails(gids: list[str]) -> bool:
        p = _sub_plan(plan, gids)
        return _oracle_diff(model, cg, p, shrink(cg, p), inputs, rtol=rtol)[0] > rtol

    culprits = _bisect(exact, fails) if len(exact) > 1 else exact
    if culprits:
        shown = ", ".join(culprits[:5]) + (f" and {len(culprits) - 5} more" if len(culprits) > 5
                                           else "")
        where = (f"in group(s) {shown}: the rewrite is wrong there; report it as an fxprune bug, "
                 "and add those layers to ignore= to prune around them meanwhile")
    else:  # nothing exact removed: the rewrite changed the model by itself
        what = "deleting removed_blocks" if plan.removed_blocks else "an empty plan"
        where = (f"with {what}: the rewrite changes the model by itself (an op it drops or "
                 "misreads); report it as an fxprune bug with the model")
    raise VerificationError(
        f"the pruned module differs from the dead-unit oracle by {diff:.3g} (relative, tolerance "
        f"{rtol:.1g}) {where}")


def _bisect(gids: list[str], fails: Callable[[list[str]], bool]) -> list[str]:
    """The groups of ``gids`` whose removal alone breaks exactness (both halves of a
    split are kept when only their union fails)."""
    if len(gids) == 1:
        return gids
    half = len(gids) // 2
    a, b = gids[:half], gids[half:]
    fa, fb = fails(a), fails(b)
    if not fa and not fb:
        return gids
    return (_bisect(a, fails) if fa else []) + (_bisect(b, fails) if fb else [])
