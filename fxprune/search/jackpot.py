"""Lottery Jackpots (Zhang et al., 2021/2023): find a sparse subnetwork of a
pre-trained model by training real-valued scores, never the weights.

    plan = jackpot.search(model, train_set, sparsity=0.9, cfg=TrainConfig(epochs=30))
    res = jackpot.run(model, train_set, test_set, sparsity=0.9)   # plan + masked model
    fold(res.model)                                               # plain weights, for export

What is trained and what is frozen:

- Every prunable weight (conv and linear weights, except the classifier, which
  stays dense) gets a score tensor of its own shape. The forward pass uses
  ``w * (mask + s - s.detach())``: the value is ``w * mask`` and the gradient
  reaching ``s`` is ``dL/d(w*mask) * w`` (straight-through estimator).
- Weights and BatchNorm affine parameters are frozen (``requires_grad=False``);
  BatchNorm running statistics keep updating (the search runs in train mode).
- Layer sparsities come from one global magnitude threshold over all prunable
  weights (:func:`fxprune.passes.unstructured.magnitude_masks`, ``scope="global"``),
  so the whole model reaches ``sparsity`` exactly.
- Scores start at 0.99 for the weights that magnitude pruning removes and 1.0 for
  the rest, so the mask at step 0 *is* the magnitude mask.
- Scores are trained with SGD (lr 0.1, momentum 0.9, weight decay 5e-4, cosine),
  through :func:`fxprune.train.train` (progress, per-epoch checkpoint, resume).

Short restriction (after every optimiser step, per layer; as in the authors'
``final_pop_up``). Let ``P`` be the layer's pruned count and ``theta`` the
``P``-th smallest score (so the top-k set is "score > theta" when there are no ties):

- *revived* = masked weights with score ``> theta`` (now in the top-k, masked before);
- *dropped* = kept weights with score ``<= theta`` (kept before, now among the
  ``P`` lowest scores: the kept weights with the lowest scores).

Only when both sets are non-empty and of equal size, the ``n`` highest-scoring
revived weights swap with the ``n`` lowest-scoring dropped ones, where
``n = ceil(swap_fraction * |revived|)`` (``swap_fraction=1`` swaps them all; the
authors' schedule ``ceil((1 - epoch/E)**4)`` is 1 for every epoch, i.e. all).
Otherwise (ties at ``theta`` make the sizes differ) the mask is left alone for
that step. Swaps come in pairs, so the kept count never changes.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import Dataset

from fxprune.errors import FxPruneError
from fxprune.passes.unstructured import MaskPlan, apply_masks, magnitude_masks
from fxprune.train import TrainConfig, train

__all__ = [
    "JackpotResult", "ScoreMask", "attach_scores", "classifier_name", "current_plan",
    "default_config", "detach_scores", "recalibrate_bn", "run", "search", "short_restriction",
]


class ScoreMask(nn.Module):
    """Parametrization ``w -> w * (mask + s - s.detach())`` with trainable scores ``s``.

    ``mask`` (bool buffer) is the current top-k mask, maintained by
    :func:`short_restriction`; its kept count is fixed at construction.
    """

    def __init__(self, keep: torch.Tensor, low: float = 0.99, high: float = 1.0) -> None:
        super().__init__()
        keep = keep.detach().to(torch.bool)
        self.scores = nn.Parameter(torch.where(keep, high, low).to(torch.float32))
        self.register_buffer("mask", keep.clone())
        self.n_pruned = int((~keep).sum())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        s = self.scores.to(weight.dtype)
        return weight * (self.mask.to(weight.dtype) + s - s.detach())


def classifier_name(model: nn.Module) -> str:
    """The weight of the last Linear module (the classifier), e.g. ``"fc.weight"``."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise FxPruneError("the model has no nn.Linear to treat as the classifier; "
                           "pass classifier=<module name> (or '' to prune every layer)")
    return f"{names[-1]}.weight"


def attach_scores(model: nn.Module, sparsity: float, *, classifier: str | None = None,
                  exclude: Iterable[str] = ()) -> dict[str, ScoreMask]:
    """Install a :class:`ScoreMask` on every prunable weight of ``model`` (in place) and
    freeze every other parameter. Returns ``{weight qualified name: ScoreMask}``."""
    cls = classifier_name(model) if classifier is None else classifier
    excl = [*exclude, *([cls] if cls else [])]
    init = magnitude_masks(model, sparsity, scope="global", layers="conv+linear", exclude=excl)
    out = {}
    for name, keep in init.masks.items():
        mpath, _, tname = name.rpartition(".")
        module = model.get_submodule(mpath)
        sm = ScoreMask(keep.to(getattr(module, tname).device))
        parametrize.register_parametrization(module, tname, sm)
        out[name] = sm
    score_ids = {id(sm.scores) for sm in out.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in score_ids)
    return out


@torch.no_grad()
def short_restriction(sm: ScoreMask, swap_fraction: float = 1.0) -> int:
    """Update ``sm.mask`` from the scores under the short restriction; returns the number
    of swapped pairs (module docstring: how the revived and dropped sets are formed)."""
    P = sm.n_pruned
    mask = sm.mask.view(-1)
    s = sm.scores.detach().view(-1).float()
    if P == 0 or P == s.numel():
        return 0
    theta = torch.kthvalue(s, P).values
    revived = (~mask & (s > theta)).nonzero().flatten()
    dropped = (mask & (s <= theta)).nonzero().flatten()
    if revived.numel() == 0 or revived.numel() != dropped.numel():
        return 0
    n = math.ceil(revived.numel() * min(max(swap_fraction, 0.0), 1.0))
    up = revived[torch.sort(s[revived], descending=True, stable=True).indices[:n]]
    down = dropped[torch.sort(s[dropped], stable=True).indices[:n]]
    mask[up] = True
    mask[down] = False
    return n


def current_plan(scores: dict[str, ScoreMask], settings: dict | None = None) -> MaskPlan:
    """The masks the scores select now, as a :class:`MaskPlan` (criterion ``jackpot``)."""
    return MaskPlan({k: sm.mask for k, sm in scores.items()}, "jackpot", settings or {})


def detach_scores(model: nn.Module) -> nn.Module:
    """Remove every :class:`ScoreMask` (in place), restoring the plain weights."""
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for tname, plist in list(module.parametrizations.items()):
            if any(isinstance(p, ScoreMask) for p in plist):
                parametrize.remove_parametrizations(module, tname, leave_parametrized=False)
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Dataset, batches: int = 20, batch_size: int = 128,
                   device: str | torch.device = "cpu") -> nn.Module:
    """Re-estimate BatchNorm running statistics (cumulative average over ``batches``
    batches of ``data``) in place: for a mask applied to a model whose statistics
    came from the dense network."""
    from fxprune.data import loader

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.to(device).train()
    for i, (x, _) in enumerate(loader(data, batch_size, shuffle=True, seed=0)):
        if i >= batches:
            break
        model(x.to(device))
    for m, mom in saved:
        m.momentum = mom
    model.train(was)
    return model


def default_config(**changes) -> TrainConfig:
    """The paper's search schedule: SGD lr 0.1, momentum 0.9, wd 5e-4, cosine, 30 epochs."""
    base = TrainConfig(epochs=30, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                       batch_size=256)
    return base.replace(**changes)


@dataclass
class JackpotResult:
    """The found mask, the masked model (BN statistics from the search, weights
    tuned if ``tune_cfg`` was given), and the per-epoch history of both phases."""

    plan: MaskPlan
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    tune_history: list[dict] = field(default_factory=list)
    swaps: int = 0


def _check(sparsity: float, swap_fraction: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise FxPruneError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if not 0.0 < swap_fraction <= 1.0:
        raise FxPruneError(f"swap_fraction must be in (0, 1], got {swap_fraction!r}")


def run(model: nn.Module, train_data: Dataset, test_data: Dataset | None = None, *,
        sparsity: float = 0.9, cfg: TrainConfig | None = None, classifier: str | None = None,
        exclude: Iterable[str] = (), swap_fraction: float = 1.0,
        tune_cfg: TrainConfig | None = None, resume: bool = False) -> JackpotResult:
    """Search a jackpot mask of ``model`` (not modified: a deep copy is searched).

    ``cfg`` schedules the score training (default :func:`default_config`; its
    ``out_dir`` holds the checkpoint, ``resume=True`` continues it). ``tune_cfg``
    (optional) trains the kept weights afterwards, masks fixed (its ``out_dir`` must
    differ). ``classifier``: weight left dense (default: the last Linear's).
    """
    _check(sparsity, swap_fraction)
    cfg = cfg or default_config()
    net = copy.deepcopy(model)
    scores = attach_scores(net, sparsity, classifier=classifier, exclude=exclude)
    counter = {"swaps": 0}

    def after_step(_m: nn.Module) -> None:
        for sm in scores.values():
            counter["swaps"] += short_restriction(sm, swap_fraction)

    res = train(net, train_data, test_data, cfg, after_step=after_step, resume=resume)
    settings = {"sparsity": sparsity, "epochs": cfg.epochs, "lr": cfg.lr,
                "swap_fraction": swap_fraction, "classifier": classifier or classifier_name(model)}
    plan = current_plan(scores, settings)
    detach_scores(net)
    for p in net.parameters():
        p.requires_grad_(True)
    apply_masks(net, plan)
    tune_hist: list[dict] = []
    if tune_cfg is not None and tune_cfg.epochs > 0:
        if cfg.out_dir is not None and tune_cfg.out_dir == cfg.out_dir:
            raise FxPruneError("tune_cfg.out_dir must differ from cfg.out_dir (the search's run)")
        tune_hist = train(net, train_data, test_data, tune_cfg, resume=resume).history
    return JackpotResult(plan, net, res.history, tune_hist, counter["swaps"])


def search(model: nn.Module, train_data: Dataset, *, sparsity: float = 0.9,
           cfg: TrainConfig | None = None, **kw) -> MaskPlan:
    """The main API: the jackpot :class:`MaskPlan` of ``model`` at ``sparsity``.

    The mask was found with BatchNorm statistics that the search re-estimated;
    to evaluate it, take ``run(...).model`` or ``apply_masks`` the plan to a copy
    and :func:`recalibrate_bn` it. Keyword arguments go to :func:`run`.
    """
    return run(model, train_data, kw.pop("test_data", None), sparsity=sparsity, cfg=cfg,
               **kw).plan
