"""fxprune.passes: one file per transformation or criterion pass.

Criterion passes only score units (or pick them) and produce a plan; ``shrink``
is the only pass that rewrites a graph. ``PrunePass`` wraps the whole
pipeline as a torch.fx ``PassBase`` for use in a ``PassManager``.
"""
from .prune_pass import PrunePass
from .shrink import shrink

__all__ = ["PrunePass", "shrink"]
