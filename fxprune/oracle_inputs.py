"""The smaller copy of the example inputs that prune()'s self-check compares on first.

The self-check runs two forwards (the dead-unit oracle and the pruned module), and on
a torchvision classifier those cost more than the whole analysis and rewrite: resnet50
at 224x224 spends 60 + 28 ms in them against 80 ms for the rest of ``prune``. What the
oracle proves is channel bookkeeping (which input and output entries of which tensor
were kept), and no op's channel index map depends on the batch size or on the
spatial size. So the check first compares on one sample, cropped to at most
``REDUCED_SIDE`` pixels a side (32: 72 of torchvision's 80 classifiers run there, and
a 224x224 resnet18 forward at batch 1 and 2 threads drops from 25 to 5 ms; below that,
reading the weights is most of the time).

Where the crop cannot run, one uncropped sample is tried next. These are fast paths,
never the verdict against the rewrite: the check falls back to the full example
inputs whenever the reduced comparisons fail, raise (a fixed-size
flatten -> linear, a positional embedding of the full length, a shape baked into the
graph) or prove nothing (an empty or all-zero output: a detector with no boxes on a
small crop). Only a reduced comparison within the tolerance ends the check early.
:func:`fxprune.verify` always compares on the inputs it is given.
"""
from __future__ import annotations

import torch

__all__ = ["REDUCED_SIDE", "reduced_inputs", "shapes_of"]

REDUCED_SIDE = 32  # the zoo's largest stride: a 1x1 map at the end, where it has a map at all
_SPATIAL_NDIM = 4  # (N, C, H, W) and up: the last two dims are cropped


def _batch(inputs: tuple) -> int | None:
    """The batch size all tensor inputs share in their first dim (None: no common one)."""
    sizes = {t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and t.ndim}
    return sizes.pop() if len(sizes) == 1 else None


def _crop(t: torch.Tensor, batch: bool, spatial: bool) -> torch.Tensor:
    if batch:
        t = t[:1]
    if spatial and t.is_floating_point() and t.ndim >= _SPATIAL_NDIM:
        for d in (-2, -1):
            if t.shape[d] > REDUCED_SIDE:
                t = t.narrow(d, 0, REDUCED_SIDE)
    return t.contiguous()


def reduced_inputs(inputs: tuple) -> list[tuple]:
    """Smaller copies of ``inputs`` to compare on before them, smallest first: one sample
    with image-like float tensors cropped to ``REDUCED_SIDE`` a side, then one sample
    uncropped (for a graph that fixes its spatial size). Copies that would change
    nothing are left out, and so is everything when an input nests tensors in a
    container (its sizes may be tied to the others' in ways a crop would break)."""
    if any(isinstance(v, (list, tuple, dict)) for v in inputs):
        return []
    batch = _batch(inputs)
    cut_batch = batch is not None and batch > 1
    found, seen = [], {shapes_of(inputs)}
    for spatial in (True, False):
        small = tuple(_crop(v, cut_batch, spatial) if isinstance(v, torch.Tensor) else v
                      for v in inputs)
        if shapes_of(small) not in seen:
            seen.add(shapes_of(small))
            found.append(small)
    return found


def shapes_of(inputs: tuple) -> tuple[tuple[int, ...], ...]:
    """The shapes of the tensor inputs: what a result records its check ran on."""
    return tuple(tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor))
