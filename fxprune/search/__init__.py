"""Search-based pruning: methods that learn what to keep by training something other
than (or besides) the weights.

- :mod:`fxprune.search.jackpot`: Lottery Jackpots, an unstructured mask found by
  training scores over frozen pre-trained weights (returns a ``MaskPlan``).
- :mod:`fxprune.search.tas`: Transformable Architecture Search, widths (and depths)
  searched with a differentiable supernet, returned as a ``PruningPlan``.
"""
from __future__ import annotations

from fxprune.passes import jackpot_criterion as _jackpot_criterion  # noqa: F401  registers 'jackpot'

__all__ = ["jackpot", "tas"]
