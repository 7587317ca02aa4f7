"""Retraining recipes for pruned models, each a thin layer over `train`.

    res = train_original(model, tr, te, cfg)                  # keeps rewind weights
    fine_tune(pruned, tr, te, cfg)                            # inherited weights, LR 1e-3
    scratch_e(pruned, tr, te, cfg)                            # re-init, E epochs
    scratch_b(pruned, tr, te, cfg, macs_full=.., macs_pruned=..)
    weight_rewind(pruned, tr, te, cfg2, original_dir=cfg.out_dir, t=20, rewind_weights=fn)
    lr_rewind(pruned, tr, te, cfg2, t=20)
    distill(pruned, teacher, tr, te, cfg2, alpha=0.9, T=4.0)
    iterative(model, prune_step, retrain_step, rounds=5)

`cfg` is always the *original* run's config (epochs E, schedule); a recipe
derives its own from it. Every recipe trains a deep copy and returns it as
`TrainResult.model`; the model passed in is left untouched. Extra keyword
arguments (`grad_hook`, `after_step`, `on_epoch_end`, `resume`, ...) go to `train`.
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import FxPruneError
from .checkpoint import load_rewind_weights
from .config import TrainConfig, TrainResult
from .loop import train

__all__ = [
    "RewindFn", "PruneStep", "RetrainStep",
    "train_original", "fine_tune", "reinitialize", "scratch_e", "scratch_b_epochs", "scratch_b",
    "load_matching", "apply_rewind", "weight_rewind", "lr_rewind", "distill", "iterative",
    "remaining_fraction_schedule",
]

#: Maps a full checkpoint into a pruned model: load in place and return None, or
#: return a state dict shaped like `pruned_model.state_dict()` (loaded with `load_matching`).
RewindFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], "Mapping[str, torch.Tensor] | None"]
#: `prune_step(model, round) -> pruned model` (round is 0-based).
PruneStep = Callable[[nn.Module, int], nn.Module]
#: `retrain_step(model, round) -> retrained model`.
RetrainStep = Callable[[nn.Module, int], nn.Module]


def train_original(model: nn.Module, train_data: Dataset, test_data: Dataset | None,
                   cfg: TrainConfig, *, rewind_epochs: Iterable[int] | None = None,
                   **train_kwargs: Any) -> TrainResult:
    """Train the unpruned model, keeping weights for later rewinding in `cfg.out_dir`.

    `rewind_epochs=None` keeps the weights after *every* epoch count 0..E
    (`out_dir/weights/epoch_XXXX.pt`, E+1 state dicts: budget the disk for large
    models); otherwise only the listed epoch counts plus the final one, E.
    """
    if cfg.out_dir is None:
        raise FxPruneError("train_original needs cfg.out_dir: rewind weights are kept there.")
    keep: Any = "all" if rewind_epochs is None else {*map(int, rewind_epochs), cfg.epochs}
    return train(copy.deepcopy(model), train_data, test_data, cfg, save_weights_at=keep,
                 **train_kwargs)


def fine_tune(model: nn.Module, train_data: Dataset, test_data: Dataset | None,
              cfg: TrainConfig, *, lr: float = 1e-3, epochs: int = 40,
              **train_kwargs: Any) -> TrainResult:
    """Fine-tune the inherited weights at a constant LR (Liu et al. 2019: 1e-3, 40 epochs)."""
    ft = cfg.replace(lr=lr, epochs=epochs, schedule="constant")
    return train(copy.deepcopy(model), train_data, test_data, ft, **train_kwargs)


def reinitialize(model: nn.Module, *, seed: int | None = None,
                 init: Callable[[nn.Module], Any] | None = None) -> nn.Module:
    """Re-initialise `model` in place with each module's own `reset_parameters()`, then
    with `init(model)` if given (a model family's own scheme, e.g.
    `fxprune.models.init_weights`: Kaiming-normal convs as in the papers' Scratch runs).

    BatchNorm running statistics are reset too. Weights pruned with
    `torch.nn.utils.prune` (`weight_orig` + `weight_mask`) get fresh values in
    `weight_orig`; the mask stays. A parameter owned by a module without
    `reset_parameters` is an error (raised before anything is changed).
    """
    orphans = [f"{name or '<root>'}.{p}" for name, m in model.named_modules()
               for p, _ in m.named_parameters(recurse=False) if _reset_fn(m) is None]
    if orphans:
        raise FxPruneError(
            f"cannot re-initialise {orphans}: their modules have no reset_parameters(). "
            "Give those modules a reset_parameters() method (or re-create the model)."
        )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            for m in model.modules():
                reset = _reset_fn(m)
                if reset is not None:
                    reset()
                    _sync_pruned_orig(m)
                if callable(getattr(m, "reset_running_stats", None)):
                    m.reset_running_stats()
            if init is not None:
                init(model)
                for m in model.modules():
                    _sync_pruned_orig(m)
    return model


def _reset_fn(m: nn.Module) -> Callable[[], None] | None:
    # nn.MultiheadAttention spells it `_reset_parameters`.
    for name in ("reset_parameters", "_reset_parameters"):
        fn = getattr(m, name, None)
        if callable(fn):
            return fn
    return None


def _sync_pruned_orig(m: nn.Module) -> None:
    # torch.nn.utils.prune keeps `X` as a plain tensor computed from `X_orig`; the
    # module's reset_parameters() wrote into that tensor, so carry it into `X_orig`.
    for pname, p in m.named_parameters(recurse=False):
        base = pname[: -len("_orig")]
        if pname.endswith("_orig") and hasattr(m, base + "_mask"):
            p.copy_(getattr(m, base))


def scratch_e(model: nn.Module, train_data: Dataset, test_data: Dataset | None,
              cfg: TrainConfig, *, init: Callable[[nn.Module], Any] | None = None,
              **train_kwargs: Any) -> TrainResult:
    """Scratch-E: the pruned architecture, re-initialised (see `reinitialize` for `init`),
    trained for the original's E epochs."""
    net = reinitialize(copy.deepcopy(model), seed=cfg.seed, init=init)
    return train(net, train_data, test_data, cfg, **train_kwargs)


def scratch_b_epochs(epochs: int, macs_full: float, macs_pruned: float, *,
                     max_factor: float | None = None) -> int:
    """Scratch-B budget: `round(epochs * macs_full / macs_pruned)` (half rounds up).

    Liu et al. cap the factor at 2 (`max_factor=2`); by default it is uncapped.
    """
    if macs_full <= 0 or macs_pruned <= 0:
        raise FxPruneError(f"MAC counts must be > 0 (macs_full={macs_full}, "
                           f"macs_pruned={macs_pruned}).")
    factor = macs_full / macs_pruned
    if max_factor is not None:
        factor = min(factor, max_factor)
    return max(1, math.floor(epochs * factor + 0.5))


def scratch_b(model: nn.Module, train_data: Dataset, test_data: Dataset | None,
              cfg: TrainConfig, *, macs_full: float, macs_pruned: float,
              max_factor: float | None = None, init: Callable[[nn.Module], Any] | None = None,
              **train_kwargs: Any) -> TrainResult:
    """Scratch-B: re-initialise (see `reinitialize` for `init`) and train for the
    original's compute budget in epochs, with the LR dropping by `cfg.gamma` at 50% and
    75% of them."""
    epochs = scratch_b_epochs(cfg.epochs, macs_full, macs_pruned, max_factor=max_factor)
    b = cfg.replace(epochs=epochs, schedule="step", milestones=(0.5, 0.75))
    net = reinitialize(copy.deepcopy(model), seed=cfg.seed, init=init)
    return train(net, train_data, test_data, b, **train_kwargs)


def load_matching(pruned_model: nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    """Default rewind mapping: copy `saved` into `pruned_model` when every shape matches.

    Works for unstructured pruning: a `torch.nn.utils.prune` parameter `X_orig`
    takes the saved `X`, and the model's own `X_mask` buffers are kept. Any
    missing, unexpected or differently shaped entry is an error: structured
    pruning needs a mapping that index-selects the kept channels.
    """
    target = pruned_model.state_dict()
    pairs, missing, bad = {}, [], []
    for k, t in target.items():
        src = k if k in saved else k[: -len("_orig")] if k.endswith("_orig") else None
        if src is None or src not in saved:
            if not k.endswith("_mask"):
                missing.append(k)
        elif saved[src].shape != t.shape:
            bad.append(f"{k}: saved {tuple(saved[src].shape)} vs model {tuple(t.shape)}")
        else:
            pairs[k] = src
    unexpected = sorted(set(saved) - set(pairs.values()))
    if missing or bad or unexpected:
        raise FxPruneError(
            f"saved weights do not fit the pruned model (missing {missing[:5]}, shape "
            f"mismatch {bad[:5]}, unexpected {unexpected[:5]}). For structured pruning pass "
            "rewind_weights=fn(pruned_model, saved) that index-selects the kept channels."
        )
    with torch.no_grad():
        for k, src in pairs.items():
            target[k].copy_(saved[src])


def apply_rewind(model: nn.Module, saved: Mapping[str, torch.Tensor],
                 rewind_weights: RewindFn | None = None) -> nn.Module:
    """Load `saved` into `model` through `rewind_weights` (default `load_matching`)."""
    fn = rewind_weights or load_matching
    mapped = fn(model, saved)
    if mapped is not None:
        load_matching(model, mapped)
    return model


def _check_t(t: int, epochs: int) -> None:
    if not (isinstance(t, int) and 1 <= t <= epochs):
        raise FxPruneError(f"t={t!r} is invalid: rewinding replays t epochs, 1 <= t <= {epochs}.")


def weight_rewind(model: nn.Module, train_data: Dataset, test_data: Dataset | None,
                  cfg: TrainConfig, *, original_dir: str | Path, t: int,
                  rewind_weights: RewindFn | None = None, **train_kwargs: Any) -> TrainResult:
    """Weight rewinding: load the original run's weights from epoch E-t into the pruned
    architecture and replay epochs E-t..E-1 at the original learning rates.

    `cfg` is the original config (its `out_dir` must differ from `original_dir`).
    The optimizer starts afresh (zero momentum), as in Renda et al. 2020.
    """
    _check_t(t, cfg.epochs)
    if cfg.out_dir is not None and Path(cfg.out_dir).resolve() == Path(original_dir).resolve():
        raise FxPruneError("weight_rewind: cfg.out_dir is the original run's directory; "
                           "choose a new out_dir so the original checkpoints survive.")
    saved = load_rewind_weights(original_dir, cfg.epochs - t)
    net = apply_rewind(copy.deepcopy(model), saved, rewind_weights)
    return train(net, train_data, test_data, cfg, start_epoch=cfg.epochs - t, **train_kwargs)


def lr_rewind(model: nn.Module, train_data: Dataset, test_data: Dataset | None,
              cfg: TrainConfig, *, t: int, **train_kwargs: Any) -> TrainResult:
    """LR rewinding: keep the final weights, replay the original LRs of epochs E-t..E-1."""
    _check_t(t, cfg.epochs)
    return train(copy.deepcopy(model), train_data, test_data, cfg, start_epoch=cfg.epochs - t,
                 **train_kwargs)


def distill(student: nn.Module, teacher: nn.Module, train_data: Dataset,
            test_data: Dataset | None, cfg: TrainConfig, *, alpha: float = 0.9,
            T: float = 4.0, **train_kwargs: Any) -> TrainResult:
    """Knowledge distillation from the unpruned `teacher` (see `losses.kd_loss`).

    The teacher is moved to the training device and run in eval mode; its weights
    never change and its train/eval mode is restored afterwards.
    """
    return train(copy.deepcopy(student), train_data, test_data, cfg, teacher=teacher,
                 kd_alpha=alpha, kd_T=T, **train_kwargs)


def remaining_fraction_schedule(per_round: float = 0.2, *, rounds: int) -> list[float]:
    """Cumulative sparsity after each round when every round prunes `per_round` of what
    remains: `[1 - (1 - per_round)**k for k in 1..rounds]` (0.2 -> 0.2, 0.36, 0.488, ...).
    The fraction of weights remaining after round k is `1 - schedule[k-1]`."""
    if not 0 < per_round < 1:
        raise FxPruneError(f"per_round={per_round!r} is invalid: expected a value in (0, 1).")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise FxPruneError(f"rounds={rounds!r} is invalid: expected an int >= 1.")
    return [1.0 - (1.0 - per_round) ** k for k in range(1, rounds + 1)]


_ROUND_RE = re.compile(r"round_(\d+)\.safetensors$")
_PICKLED_ROUND_RE = re.compile(r"round_(\d+)\.pt$")


def iterative(model: nn.Module, prune_step: PruneStep, retrain_step: RetrainStep,
              rounds: int, *, out_dir: str | Path | None = None,
              resume: bool = False) -> nn.Module:
    """Iterative pruning: `rounds` x (prune_step(model, r) -> retrain_step(model, r)).

    Returns the final model. With `out_dir`, the weights after each round are saved
    (tensors only, checksummed, atomically) as `round_XX.safetensors`, and
    `resume=True` restarts after the last saved round. Nothing is unpickled: the
    module of each saved round is rebuilt by replaying `prune_step` on the previous
    round's module (the model passed in for round 0) and loading that round's
    weights into it strictly, so `prune_step` must give the same architecture again
    for the same weights (a deterministic criterion does); retraining is not
    replayed. To resume *inside* a round, give retrain_step a per-round
    `cfg.out_dir` and `resume=True`.
    """
    if not (isinstance(rounds, int) and rounds >= 1):
        raise FxPruneError(f"rounds={rounds!r} is invalid: expected an int >= 1.")
    _refuse_pickled_rounds(out_dir)
    done = _saved_rounds(out_dir)
    if done and not resume:
        raise FxPruneError(f"{out_dir} already holds rounds {done}; pass resume=True to "
                           "continue, or choose another out_dir.")
    if done and done != list(range(len(done))):
        raise FxPruneError(f"{out_dir} holds rounds {done}, not 0..{done[-1]}: resuming rebuilds "
                           "every round in turn; restore the missing files or start over.")
    current, start = model, 0
    for r in done:
        current = _rebuild_round(prune_step, current, r, Path(out_dir))
        start = r + 1
    for r in range(start, rounds):
        current = retrain_step(prune_step(current, r), r)
        if out_dir is not None:
            _save_round(current, r, Path(out_dir))
    return current


def _round_path(out_dir: Path, r: int) -> Path:
    return out_dir / f"round_{r:02d}.safetensors"


def _save_round(module: nn.Module, r: int, out_dir: Path) -> None:
    from ..savedir import atomic_path
    from ..tensor_files import write_tree

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(_round_path(out_dir, r)) as tmp:
        write_tree(tmp, {"round": r, "state": dict(module.state_dict())})


def _rebuild_round(prune_step: PruneStep, previous: nn.Module, r: int, out_dir: Path) -> nn.Module:
    from ..tensor_files import read_tree

    path = _round_path(out_dir, r)
    saved = read_tree(path)
    module = prune_step(previous, r)
    try:
        module.load_state_dict(saved["state"], strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()
        raise FxPruneError(
            f"cannot resume from {path}: its weights do not fit the module prune_step(model, {r}) "
            f"rebuilds ({first[1].strip() if len(first) > 1 else e}). Resuming replays "
            "prune_step on the previous round's weights; make it deterministic, or start over "
            "with another out_dir.") from e
    return module


def _refuse_pickled_rounds(out_dir: str | Path | None) -> None:
    if out_dir is None or not Path(out_dir).is_dir():
        return
    old = sorted(p.name for p in Path(out_dir).iterdir() if _PICKLED_ROUND_RE.match(p.name))
    if old:
        raise FxPruneError(f"{out_dir} holds {old}, pickled modules written by an older fxprune; "
                           "fxprune no longer unpickles (a pickle can run code). Delete them and "
                           "start over, or choose another out_dir.")


def _saved_rounds(out_dir: str | Path | None) -> list[int]:
    if out_dir is None or not Path(out_dir).is_dir():
        return []
    return sorted(int(m.group(1)) for p in Path(out_dir).iterdir()
                  if (m := _ROUND_RE.match(p.name)))
