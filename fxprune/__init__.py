"""fxprune: structured pruning of PyTorch models as a torch.fx compiler pass.

    cg = fxprune.analyze(model, x)            # ChannelGraph: the pruning groups
    res = fxprune.prune(model, x, ratio=0.5)  # PruneResult: .module, .plan
    fxprune.verify(model, res, x)             # dead-channel equivalence oracle
"""
from __future__ import annotations

from pathlib import Path as _Path

# In a source checkout `passes/` and `models/` sit beside this package and are
# installed as fxprune.passes / fxprune.models (pyproject package-dir). When the
# checkout itself is on sys.path (pytest from the repo root), make them resolve.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").exists() and (_root / "passes" / "__init__.py").exists():
    __path__.append(str(_root))  # type: ignore[name-defined]  # noqa: F821

from .errors import (  # noqa: E402
    FxPruneError,
    PlanMismatchError,
    ShrinkError,
    TraceError,
    UnsupportedOpError,
    VerificationError,
)

from .analysis import analyze  # noqa: E402
from .api import PruneResult, apply_plan, dead_channel_plan, prune  # noqa: E402
from .channel_graph import ChannelGraph, FrozenGroup, Group  # noqa: E402
from .count import Counts, count  # noqa: E402
from .io import load, save  # noqa: E402
from .plan import PruningPlan  # noqa: E402
from .trace import trace  # noqa: E402
from .verify import verify  # noqa: E402

__all__ = [
    "analyze", "apply_plan", "count", "dead_channel_plan", "prune", "trace", "verify",
    "load", "save",
    "ChannelGraph", "Counts", "FrozenGroup", "Group", "PruneResult", "PruningPlan",
    "FxPruneError",
    "PlanMismatchError",
    "ShrinkError",
    "TraceError",
    "UnsupportedOpError",
    "VerificationError",
]
__version__ = "0.1.0"
