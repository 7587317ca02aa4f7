"""The ``jackpot`` criterion name, for discoverability through ``prune()``.

Lottery Jackpots finds an *unstructured* mask (single weights, not channels), so
it cannot go through the structured planner, which removes whole units of the
ChannelGraph. Asking ``fxprune.prune(model, x, criterion="jackpot")`` therefore
raises an :class:`~fxprune.errors.FxPruneError` that names the API to use
instead: :func:`fxprune.search.jackpot.search`, which returns a
:class:`~fxprune.passes.unstructured.MaskPlan` for the unstructured path
(``apply_masks`` → retrain → ``fold`` → export).
"""
from __future__ import annotations

from fxprune.criteria import register
from fxprune.errors import FxPruneError

__all__ = ["jackpot_scores"]

_HOW = (
    "criterion 'jackpot' (Lottery Jackpots) finds an unstructured weight mask, which the "
    "structured planner behind prune() cannot express (it removes whole channels).\n"
    "  fix: plan = fxprune.search.jackpot.search(model, train_data, sparsity=0.9)  # MaskPlan\n"
    "       fxprune.passes.unstructured.apply_masks(model, plan); ...; fold(model)\n"
    "  (fxprune.search.jackpot.run(...) also returns the masked model with the BatchNorm "
    "statistics the search re-estimated)"
)


@register("jackpot")
def jackpot_scores(cg, **_kw):
    """Always raises: Lottery Jackpots is unstructured; use fxprune.search.jackpot.search."""
    raise FxPruneError(_HOW)
