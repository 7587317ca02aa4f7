"""Rules for ops that keep channels where they are: elementwise maths,
activations, dropout, reductions, softmax, pooling and resampling."""
from __future__ import annotations


from .base import RuleContext, norm_dim

__all__ = [
    "elementwise",
    "softmax_like",
    "reduction",
    "channel_first_spatial",
    "glu",
    "sink",
]


def elementwise(ctx: RuleContext) -> None:
    """out = f(a, b, ...) with broadcasting: equal-size dims aligned from the right are one dim."""
    out = ctx.out()
    if out is None:
        return
    for ref in ctx.tensor_inputs():
        for j in range(1, min(ref.ndim, out.ndim) + 1):
            if ref.shape[-j] == out.shape[-j]:
                ctx.couple(ref, -j, out, -j)
            # a size-1 dim broadcast against a larger one is left alone: it stays size 1


def softmax_like(ctx: RuleContext, dim: int | None = None) -> None:
    """softmax(x, dim): every other dim is kept; the normalised dim is frozen (dead inputs are not inert)."""
    x, out = ctx.arg(0), ctx.out()
    if x is None or out is None:
        return
    if dim is None:
        dim = ctx.value(1, "dim", -1)
        if dim is None:  # legacy implicit dim
            dim = 0 if x.ndim in (0, 1, 3) else 1
    d = norm_dim(dim, x.ndim)
    for k in range(x.ndim):
        if k == d:
            ctx.freeze(x, k, f"softmax normalises over dim {k}")
            ctx.freeze(out, k, f"softmax normalises over dim {k}")
        else:
            ctx.couple(x, k, out, k)


def _reduced_dims(ctx: RuleContext, ndim: int, dim_pos: int = 1) -> list[int]:
    dims = ctx.value(dim_pos, "dim", None)
    if dims is None:
        return list(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    return sorted(norm_dim(d, ndim) for d in dims)


def reduction(ctx: RuleContext, inert_zero: bool) -> None:
    """mean/amax (inert_zero=False: reduced dims frozen) or sum (True: reduced dims are sinks)."""
    x, out = ctx.arg(0), ctx.out()
    if x is None or out is None:
        return
    reduced = _reduced_dims(ctx, x.ndim)
    keepdim = bool(ctx.value(2, "keepdim", False))
    o = 0
    for k in range(x.ndim):
        if k in reduced:
            if not inert_zero:
                ctx.freeze(x, k, f"{ctx.node.target} reduces over dim {k}")
            # else: a sum ignores dead (zero) entries, so the reduced dim is a sink
            if keepdim:
                ctx.freeze(out, o, "reduced to size 1", "structural")
                o += 1
        else:
            ctx.couple(x, k, out, o)
            o += 1


def sink(ctx: RuleContext) -> None:
    """A tensor consumed only for its shape or a side effect: nothing to couple."""


def channel_first_spatial(ctx: RuleContext, spatial: int | None = None) -> None:
    """Pooling, interpolation, padding of spatial dims: leading dims kept, spatial dims frozen."""
    x, out = ctx.arg(0), ctx.out()
    if x is None or out is None:
        return
    if spatial is None:
        spatial = max(x.ndim - 2, 1)
    lead = x.ndim - spatial
    for k in range(lead):
        ctx.couple(x, k, out, k)
    for k in range(lead, x.ndim):
        ctx.freeze(x, k, "spatial dim", "structural")
    for k in range(lead, out.ndim):
        ctx.freeze(out, k, "spatial dim", "structural")


def glu(ctx: RuleContext) -> None:
    """glu(x, dim): out[i] = x[i] * sigmoid(x[i + C/2]): both halves share a unit."""
    x, out = ctx.arg(0), ctx.out()
    if x is None or out is None:
        return
    d = norm_dim(ctx.value(1, "dim", -1) if ctx.module is None else ctx.module.dim, x.ndim)
    half = out.shape[d]
    ctx.shift(x, d, 0, out, d, 0, half)
    ctx.shift(x, d, half, out, d, 0, half)
    for k in range(x.ndim):
        if k != d:
            ctx.couple(x, k, out, k)
