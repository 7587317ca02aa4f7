"""Rules for ops that keep channels where they are: elementwise maths,
activations, dropout, reductions, softmax, pooling and resampling."""
from __future__ import annotations

from typing import Any

from .base import RuleContext, norm_dim

__all__ = [
    "elementwise",
    "softmax_like",
    "reduction",
    "vector_norm",
    "normalize",
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


def reduction(ctx: RuleContext, inert_zero: bool, dim_pos: int = 1) -> None:
    """mean/amax/var (inert_zero=False: reduced dims frozen) or sum (True: reduced dims are
    sinks); ``dim`` at ``dim_pos``. keepdim is read off the shapes, not the arguments
    (``var(x, dim, unbiased, keepdim)`` puts another flag where ``mean`` has keepdim)."""
    x, out = ctx.arg(0), ctx.out()
    if x is None or out is None:
        return
    reduced = _reduced_dims(ctx, x.ndim, dim_pos)
    keepdim = out.ndim == x.ndim
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


def _zero_is_inert(order: Any) -> bool:
    """A p-norm ignores zero entries for p >= 0 (p = inf: max |x|; 'fro': p = 2); p < 0 and
    -inf (min |x|) do not."""
    return order == "fro" or (isinstance(order, (int, float)) and order >= 0)


def vector_norm(ctx: RuleContext, order_name: str = "ord") -> None:
    """linalg.vector_norm / norm(x, ord, dim, keepdim): a reduction; dead (zero) entries leave
    a norm of order >= 0 unchanged, so its reduced dims are sinks, as for sum."""
    reduction(ctx, inert_zero=_zero_is_inert(ctx.value(1, order_name, 2)), dim_pos=2)


def normalize(ctx: RuleContext) -> None:
    """F.normalize(x, p, dim): x / max(||x||_p over dim, eps), same shape; zero entries leave
    the norm unchanged (p >= 0), so every dim, the normalised one too, is kept one to one."""
    x, out = ctx.arg(0), ctx.out()
    if x is None or out is None:
        return
    d = norm_dim(ctx.value(2, "dim", 1), x.ndim)
    inert = _zero_is_inert(ctx.value(1, "p", 2.0))
    for k in range(x.ndim):
        if k == d and not inert:
            ctx.freeze(x, k, f"normalize with p < 0 over dim {k}: zero entries change the norm")
            ctx.freeze(out, k, f"normalize with p < 0 over dim {k}")
        else:
            ctx.couple(x, k, out, k)


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
