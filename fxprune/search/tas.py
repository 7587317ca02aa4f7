"""TAS, Transformable Architecture Search (Dong & Yang, 2019): search the width of
every prunable group (and the depth of residual stages) under a MACs budget, then
prune to the found architecture and train it with distillation.

    res = tas.search(model, x, train_set, target=0.461, epochs=600)  # PruningPlan
    pruned = tas.apply_arch(model, x, res.plan)                      # shrink + drop blocks
    distill(pruned, model, train_set, test_set, cfg, alpha=0.9, T=4)

Search space: for every group of ``fxprune.analyze(model, x)`` of ``C`` units the
widths ``int(C*r)``, ``r`` in 0.3, 0.4 .. 1.0 (de-duplicated); for every stage of
identity-shortcut residual blocks (CIFAR / torchvision ResNets) the depths
1, 3, 5 .. n. Each has a learnable logit vector. The supernet and its
approximation (CWI to the full width at each BatchNorm, one BN per width) are
described in :mod:`fxprune.search.tas_modules`.

Training alternates on two halves of the training set: a weight step (SGD,
Nesterov, cosine) on one half, an architecture step (Adam lr 1e-3, betas
(0.5, 0.999), wd 1e-3) on the other, both with two widths per group drawn by
Gumbel-softmax at temperature ``tau``, which decays linearly from 10 to 0.1 over
the search's steps.
The architecture loss is ``CE + lam * flops_loss(F, E, R, t)`` (:func:`flops_loss`).
MACs are fractions of the unpruned model's; ``E`` is exact for one-hot
distributions (per conv/linear: base MACs x kept-out/out x kept-in/in x P(block kept)).

The plan keeps, in each group, the ``w`` units of highest L1 magnitude
(``w`` = argmax width) and lists the blocks beyond each stage's argmax depth in
``plan.removed_blocks``. With ``fit=True`` (default) the argmax is then nudged one
candidate at a time, cheapest logit loss per MAC first, until ``R - t <= F <= R``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from fxprune.analysis import analyze
from fxprune.channel_graph import ChannelGraph
from fxprune.count import _module_macs, macs_of_graph
from fxprune.errors import FxPruneError
from fxprune.passes.magnitude import group_norm_scores
from fxprune.plan import PruningPlan
from fxprune.select import make_plan

from .tas_modules import Supernet, branch_ends, find_stages, remove_blocks

__all__ = ["TASResult", "TASSpace", "Supernet", "apply_arch", "build_space", "depth_candidates",
           "derive_plan", "fit_to_target", "flops_loss", "search", "tau_at", "width_candidates"]

_RATIOS = tuple(range(3, 11))  # r = k / 10


def width_candidates(size: int) -> list[int]:
    """``int(size * r)`` for r = 0.3 .. 1.0, de-duplicated, ascending, zeros dropped."""
    return sorted({size * k // 10 for k in _RATIOS} - {0})


def depth_candidates(n: int) -> list[int]:
    """1, 3, 5, ..., n (n always included)."""
    return sorted(set(range(1, n + 1, 2)) | {n})


def flops_loss(F_cur: float, E: torch.Tensor, R: float, t: float = 0.05) -> torch.Tensor:
    """TAS's MACs loss: ``-log E`` if the argmax architecture is too small
    (``F < R - t``), ``+log E`` if too large (``F > R``), else 0."""
    if F_cur < R - t:
        return -torch.log(E)
    if F_cur > R:
        return torch.log(E)
    return E * 0.0


def tau_at(step: int, total: int, hi: float = 10.0, lo: float = 0.1) -> float:
    """Linear decay from ``hi`` (first step) to ``lo`` (last of ``total`` steps)."""
    return hi - (hi - lo) * min(step / max(total - 1, 1), 1.0)


@dataclass
class _Term:
    """One conv/linear layer of the MACs model."""

    base: float
    dims: list[tuple[int, int, list[tuple[int, torch.Tensor]]]]  # (L, const, [(g, kept[K])])
    block: tuple[int, int] | None  # (stage, block index)


@dataclass
class TASSpace:
    """The search space of one model: groups with >= 2 widths, their importance order,
    the stages with >= 2 depths, and the MACs model."""

    cg: ChannelGraph
    gids: list[str]
    widths: list[list[int]]
    ranks: list[np.ndarray]  # per group: unit -> importance rank (0 = most important)
    stages: list[tuple[str, int]]
    depths: list[list[int]]
    terms: list[_Term] = field(default_factory=list)
    const_macs: float = 0.0
    total_macs: float = 1.0

    def macs(self, wprobs: list[torch.Tensor], dprobs: list[torch.Tensor]) -> torch.Tensor:
        """Expected MACs (fraction of the unpruned model) under the given distributions."""
        total = torch.tensor(self.const_macs, dtype=torch.float64)
        for t in self.terms:
            f = torch.tensor(t.base, dtype=torch.float64)
            for L, const, parts in t.dims:
                kept = const + sum((wprobs[g].double() * tab).sum() for g, tab in parts)
                f = f * kept / L
            if t.block is not None:
                s, i = t.block
                alive = torch.tensor([d > i for d in self.depths[s]], dtype=torch.float64)
                f = f * (dprobs[s].double() * alive).sum()
            total = total + f
        return total / self.total_macs

    def macs_of(self, w_idx: list[int], d_idx: list[int]) -> float:
        """MACs fraction of one architecture (candidate index per group and per stage)."""
        one = [F.one_hot(torch.tensor(j), len(c)).double() for j, c in zip(w_idx, self.widths)]
        dn = [F.one_hot(torch.tensor(j), len(c)).double() for j, c in zip(d_idx, self.depths)]
        return float(self.macs(one, dn))


def _kept_table(member, rank: np.ndarray, widths: list[int]) -> torch.Tensor:
    r = rank[member.unit]
    return torch.tensor([float((r < w).sum()) for w in widths], dtype=torch.float64)


def _mac_terms(space: TASSpace) -> None:
    cg, gm = space.cg, space.cg.gm
    where: dict[tuple[str, int], list] = {}
    for gi, gid in enumerate(space.gids):
        for m in cg.group(gid).params():
            where.setdefault((m.key, m.dim), []).append((gi, m))
    total = macs_of_graph(gm)
    kept = 0.0
    for node in gm.graph.nodes:
        mod = gm.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        base = _module_macs(mod, node)
        key = next((k for k, names in cg.tensor_names.items() if f"{node.target}.weight" in names),
                   f"p:{node.target}.weight")
        dims = []
        for d in (0, 1):
            parts = where.get((key, d), [])
            L = mod.weight.shape[d]
            covered = sum(m.unit.size for _, m in parts)
            dims.append((L, L - covered, [(g, _kept_table(m, space.ranks[g], space.widths[g]))
                                          for g, m in parts]))
        block = next(((s, i) for s, (name, n) in enumerate(space.stages) for i in range(n)
                      if node.target.startswith(f"{name}.{i}.")), None)
        space.terms.append(_Term(float(base), dims, block))
        kept += base
    space.const_macs, space.total_macs = float(total - kept), float(total)


def build_space(model: nn.Module, example_inputs: Any, *, depth: bool = True,
                cg: ChannelGraph | None = None) -> TASSpace:
    """Analyse ``model`` and enumerate its width and depth candidates."""
    cg = cg or analyze(model, example_inputs, warn=False)
    gids, widths, ranks = [], [], []
    for g in cg.groups:
        cands = width_candidates(g.size)
        if len(cands) < 2:
            continue
        order = np.argsort(-group_norm_scores(cg, g, 1), kind="stable")
        rank = np.empty(g.size, dtype=np.int64)
        rank[order] = np.arange(g.size)
        gids.append(g.id), widths.append(cands), ranks.append(rank)
    stages = [(n, k) for n, k in find_stages(model) if len(depth_candidates(k)) >= 2] if depth else []
    space = TASSpace(cg, gids, widths, ranks, stages, [depth_candidates(k) for _, k in stages])
    _mac_terms(space)
    return space


def _log_probs(logits: nn.ParameterList) -> list[list[float]]:
    return [lg.detach().log_softmax(-1).tolist() for lg in logits]


def _best_move(space, idx, lps, F_cur, step, target, floor):
    """The one-candidate move (step -1 or +1) with the least log-prob lost per MAC moved;
    moves that stay inside ``[floor, target]`` (or above ``floor`` going down) first."""
    found = []
    for kind, (sel, cands, lp) in enumerate(((idx[0], space.widths, lps[0]),
                                             (idx[1], space.depths, lps[1]))):
        for i, j in enumerate(sel):
            if not 0 <= j + step < len(cands[i]):
                continue
            trial = [list(idx[0]), list(idx[1])]
            trial[kind][i] = j + step
            F_new = space.macs_of(*trial)
            gain = (F_cur - F_new) if step < 0 else (F_new - F_cur)
            if gain <= 1e-12 or (step > 0 and F_new > target):
                continue
            found.append((F_new < floor, (lp[i][j] - lp[i][j + step]) / gain, trial, F_new))
    return min(found, key=lambda m: m[:2])[1:] if found else None


def fit_to_target(space: TASSpace, supernet: Supernet, w_idx: list[int], d_idx: list[int],
                  target: float, tolerance: float = 0.05) -> tuple[list[int], list[int], float]:
    """Move the argmax architecture one candidate at a time (least log-probability lost
    per MAC first) until ``target - tolerance <= MACs <= target``; returns it and its MACs."""
    lps = (_log_probs(supernet.width_logits), _log_probs(supernet.depth_logits))
    idx, F_cur = [list(w_idx), list(d_idx)], space.macs_of(w_idx, d_idx)
    while F_cur > target:
        move = _best_move(space, idx, lps, F_cur, -1, target, target - tolerance)
        if move is None:
            raise FxPruneError(f"cannot reach target {target:.3f} of the MACs: the smallest "
                               f"architecture in the search space keeps {F_cur:.3f}")
        _, idx, F_cur = move
    while F_cur < target - tolerance:
        move = _best_move(space, idx, lps, F_cur, +1, target, target - tolerance)
        if move is None:
            break
        _, idx, F_cur = move
    return idx[0], idx[1], F_cur


def derive_plan(space: TASSpace, w_idx: list[int], d_idx: list[int],
                settings: dict | None = None) -> PruningPlan:
    """Keep the ``w`` most important (L1) units of each group; list the blocks beyond each
    stage's depth in ``removed_blocks``."""
    import dataclasses

    removed = {}
    for gi, gid in enumerate(space.gids):
        gone = np.nonzero(space.ranks[gi] >= space.widths[gi][w_idx[gi]])[0]
        if gone.size:
            removed[gid] = sorted(int(u) for u in gone)
    blocks = tuple(f"{name}.{i}" for s, (name, n) in enumerate(space.stages)
                   for i in range(space.depths[s][d_idx[s]], n))
    plan = make_plan(space.cg, removed, "tas", settings or {})
    return dataclasses.replace(plan, removed_blocks=blocks)


def _drop_blocks(gm: fx.GraphModule, blocks: tuple[str, ...]) -> fx.GraphModule:
    try:  # prefer the shared depth-pruning pass when it is installed
        from fxprune.passes.remove_branches import remove_branches
    except ImportError:
        return remove_blocks(gm, blocks)
    return remove_branches(gm, branch_ends(gm, blocks))


def apply_arch(model: nn.Module, example_inputs: Any, plan: PruningPlan) -> fx.GraphModule:
    """The pruned module: ``plan`` shrunk into ``model`` (not modified), then the blocks of
    ``plan.removed_blocks`` replaced by their shortcuts; re-traced for a shape check."""
    from fxprune.api import _shrink
    from fxprune.trace import trace

    cg = analyze(model, example_inputs, warn=False)
    gm = _shrink(cg, plan)
    if plan.removed_blocks:
        gm = trace(_drop_blocks(gm, plan.removed_blocks), example_inputs)
    return gm


@dataclass
class TASResult:
    """The plan, the chosen width per group and depth per stage, the MACs fraction of
    the plan (MACs model), and the per-epoch search history."""

    plan: PruningPlan
    widths: dict[str, int]
    depths: dict[str, int]
    macs: float
    history: list[dict]
    supernet: Supernet = field(repr=False)


def _halves(data: Dataset, batch_size: int, seed: int):
    from fxprune.data import ImageTensorDataset, loader

    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    parts = (perm[: len(data) // 2], perm[len(data) // 2:])
    if isinstance(data, ImageTensorDataset):
        subsets = [data.subset(p) for p in parts]
    else:
        subsets = [torch.utils.data.Subset(data, p.tolist()) for p in parts]
    return [loader(s, batch_size, shuffle=True, seed=seed + i, drop_last=True)
            for i, s in enumerate(subsets)]


def _step(net: Supernet, opt, other, x, y, extra=None) -> tuple[float, int]:
    out = net(x)
    loss = F.cross_entropy(out, y)
    total = loss if extra is None else loss + extra
    opt.zero_grad(set_to_none=True)
    other.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return float(loss.detach()), int((out.argmax(1) == y).sum())


def _search_epoch(net: Supernet, opts, loaders, epoch: int, s: dict) -> dict:
    w_opt, a_opt = opts
    per_epoch = min(len(ld) for ld in loaders)
    if per_epoch == 0:
        raise FxPruneError(f"batch_size={s['batch_size']} is larger than half the training set")
    tau = s["tau"][0]
    lr = 0.5 * s["w_lr"] * (1 + math.cos(math.pi * epoch / s["epochs"]))
    for group in w_opt.param_groups:
        group["lr"] = lr
    for ld in loaders:
        if hasattr(ld, "set_epoch"):
            ld.set_epoch(epoch)
    gen = torch.Generator().manual_seed(s["seed"] * 100_003 + epoch)
    net.train()
    acc = [0.0, 0.0, 0, 0]  # loss_w sum, loss_a sum, correct_w, n
    trace, every = [], max(1, per_epoch // 20)
    for b, ((xa, ya), (xb, yb)) in enumerate(zip(*loaders)):
        xa, ya, xb, yb = (t.to(s["device"]) for t in (xa, ya, xb, yb))
        tau = tau_at(epoch * per_epoch + b, s["epochs"] * per_epoch, *s["tau"])
        net.sample(tau, gen)
        lw, cw = _step(net, w_opt, a_opt, xa, ya)
        net.sample(tau, gen)
        F_cur = net.space.macs_of(*net.argmax())
        fl = s["lam"] * flops_loss(F_cur, net.expected_macs(), s["target"], s["tolerance"])
        la, _ = _step(net, a_opt, w_opt, xb, yb, fl.float().to(s["device"]))
        acc = [acc[0] + lw * len(ya), acc[1] + la * len(yb), acc[2] + cw, acc[3] + len(ya)]
        if b % every == 0:  # a few points per epoch for plots: (epoch fraction, tau, E, F)
            trace.append([epoch + b / per_epoch, tau, float(net.expected_macs().detach()), F_cur])
    n = max(acc[3], 1)
    return {"epoch": epoch, "tau": tau, "lr": lr, "loss_w": acc[0] / n, "loss_a": acc[1] / n,
            "acc_w": acc[2] / n, "expected_macs": float(net.expected_macs().detach()),
            "argmax_macs": net.space.macs_of(*net.argmax()), "trace": trace}


_CHECKPOINT = "tas_search.safetensors"  # tensors + JSON, checksummed (tensor_files.write_tree)


def _checkpoint(out_dir, resume, net, opts) -> tuple[int, list[dict]]:
    if out_dir is None:
        return 0, []
    from fxprune.tensor_files import read_tree

    pickled = Path(out_dir) / "tas_search.pt"
    if pickled.exists():
        raise FxPruneError(f"{pickled} is a pickled checkpoint of an older fxprune, which is "
                           "no longer unpickled (a pickle can run code): "
                           "delete it to start the search over, or choose another out_dir")
    path = Path(out_dir) / _CHECKPOINT
    if not path.exists():
        return 0, []
    if not resume:
        raise FxPruneError(f"{path} exists: pass resume=True to continue it, or another out_dir")
    ck = read_tree(path)
    try:
        net.load_state_dict(ck["net"])
        for opt, state in zip(opts, ck["opts"], strict=True):
            opt.load_state_dict(state)
        return int(ck["epoch"]), list(ck["history"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise FxPruneError(f"cannot resume from {path}: it does not fit this search ({e}); "
                           "delete it to start over, or use the model and settings it was "
                           "made with") from e


def _save_checkpoint(out_dir, epoch: int, net, opts, history) -> None:
    from fxprune.savedir import atomic_path
    from fxprune.tensor_files import write_tree

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(out_dir) / _CHECKPOINT) as tmp:
        write_tree(tmp, {"epoch": epoch, "net": dict(net.state_dict()), "history": history,
                         "opts": [o.state_dict() for o in opts]})


def search(model: nn.Module, example_inputs: Any, train_data: Dataset, *, target: float = 0.461,
           epochs: int = 10, batch_size: int = 64, w_lr: float = 0.1, w_wd: float = 5e-4,
           a_lr: float = 1e-3, a_wd: float = 1e-3, lam: float = 2.0, tolerance: float = 0.05,
           tau: tuple[float, float] = (10.0, 0.1), depth: bool = True, fit: bool = True,
           seed: int = 0, device: str = "cpu", out_dir: str | Path | None = None,
           resume: bool = False, on_epoch_end=None) -> TASResult:
    """Search widths/depths of ``model`` (not modified) for ``target`` x its MACs.

    ``out_dir``: a checkpoint after every epoch (``resume=True`` continues it);
    ``on_epoch_end(record)`` is called with each epoch's metrics.
    """
    if not 0 < target <= 1:
        raise FxPruneError(f"target must be a fraction of the MACs in (0, 1], got {target!r}")
    torch.manual_seed(seed)
    space = build_space(model, example_inputs, depth=depth)
    net = Supernet(model, space, seed).to(device)
    opts = (torch.optim.SGD(net.weight_parameters(), lr=w_lr, momentum=0.9, nesterov=True,
                            weight_decay=w_wd),
            torch.optim.Adam(net.arch_parameters(), lr=a_lr, betas=(0.5, 0.999), weight_decay=a_wd))
    start, history = _checkpoint(out_dir, resume, net, opts)
    loaders = _halves(train_data, batch_size, seed)
    s = {"epochs": epochs, "tau": tau, "w_lr": w_lr, "seed": seed, "device": device, "lam": lam,
         "batch_size": batch_size, "target": target, "tolerance": tolerance}
    for epoch in range(start, epochs):
        history.append(_search_epoch(net, opts, loaders, epoch, s))
        if out_dir is not None:
            _save_checkpoint(out_dir, epoch + 1, net, opts, history)
        if on_epoch_end is not None:
            on_epoch_end(history[-1])
    w_idx, d_idx = net.argmax()
    macs = space.macs_of(w_idx, d_idx)
    if fit:
        w_idx, d_idx, macs = fit_to_target(space, net, w_idx, d_idx, target, tolerance)
    settings = {k: v for k, v in s.items() if k not in ("device", "tau")}
    settings.update(tau=list(tau), depth=depth, fit=fit)
    plan = derive_plan(space, w_idx, d_idx, settings)
    return TASResult(plan, {g: space.widths[i][w_idx[i]] for i, g in enumerate(space.gids)},
                     {n: space.depths[i][d_idx[i]] for i, (n, _) in enumerate(space.stages)},
                     macs, history, net)
