"""Registers the criterion passes with ``fxprune.criteria`` (imported by ``_load_builtin``).

    fxprune.prune(model, x, criterion=NAME, calibration=loader, **kw)

| name      | module     | needs data | picks the units itself          |
| --------- | ---------- | ---------- | ------------------------------- |
| l1-filter | .l1_filter | no         | with ``preset``/``layer_ratios`` |
| slimming  | .slimming  | no         | with ``percent``                |
| sss       | .sss       | no         | blocks (depth pruning)          |
| thinet    | .thinet    | yes        | no (scores + rescaling)         |
| lasso     | .lasso     | yes        | no (scores + refit)             |
| taylor    | .taylor    | yes        | no                              |

``l1``, ``l2`` and ``random`` come from :mod:`.magnitude`; ``jackpot``
(:mod:`.jackpot_criterion`) only raises, pointing to the unstructured search.
Criteria that need no data ignore ``calibration``; the data-driven ones take
``num_batches`` (default 10) and ``progress``. A criterion's options are the
keyword parameters of its function (``fxprune.criteria.criterion_options(name)``);
``prune()`` rejects any other keyword, naming the closest option.
"""
from __future__ import annotations

from fxprune.criteria import register

from .l1_filter import l1_filter_criterion
from .lasso import lasso_criterion
from .slimming import slimming_criterion
from .sss import sss_criterion
from .taylor import taylor_criterion
from .thinet import thinet_criterion

__all__ = ["l1_filter", "lasso", "slimming", "sss", "taylor", "thinet"]

try:  # Lottery Jackpots is unstructured: its entry only points to fxprune.search.jackpot
    from . import jackpot_criterion  # noqa: F401  registers 'jackpot'
except ImportError:  # pragma: no cover - the pass is optional here
    pass

l1_filter = register("l1-filter")(l1_filter_criterion)
slimming = register("slimming")(slimming_criterion)
sss = register("sss")(sss_criterion)
thinet = register("thinet")(thinet_criterion)
lasso = register("lasso")(lasso_criterion)
taylor = register("taylor")(taylor_criterion)
