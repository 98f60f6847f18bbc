"""Launcher of the input gradient (:func:`~cbam_triton.kernels.input_grad.input_grad_kernel`)."""

from __future__ import annotations

import torch

from cbam_triton.kernels.input_grad import input_grad_kernel
from cbam_triton.launchers._common import (
    Launch,
    acc_is_fp64,
    as_ncp,
    compute_dtype,
    empty_output,
    nbytes,
    tile_for,
    unit_axis,
)


def plan_input_grad(g: torch.Tensor | None, x: torch.Tensor, *, mc: torch.Tensor | None = None,
                    ms: torch.Tensor | None = None, pmax: torch.Tensor | None = None,
                    a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                    cmax: torch.Tensor | None = None, avg_g: torch.Tensor | None = None,
                    max_g: torch.Tensor | None = None) -> tuple[Launch, torch.Tensor]:
    """Plan the input gradient; returns the launch and dx (x's dtype and memory format)."""
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    dx, (dn, dc, dp) = empty_output(x)
    gn = gc = gp = 0
    if g is not None:
        g, (gn, gc, gp) = as_ncp(g)
    if pmax is not None and (a is None or b is None):
        raise ValueError("input_grad: pmax, a and b go together")
    if max_g is not None and cmax is None:
        raise ValueError("input_grad: max_g needs cmax")
    block_c, block_p = tile_for(unit_axis(sc, sp, c, p), c, p)
    acc = compute_dtype(x)
    per_c = [t.to(acc).reshape(n, c).contiguous() if t is not None else None for t in (mc, cmax, avg_g, max_g)]
    per_p = [t.to(acc).reshape(n, p).contiguous() if t is not None else None for t in (ms, pmax, a, b)]
    mc, cmax, avg_g, max_g = per_c
    ms, pmax, a, b = per_p
    has_spool = pmax is not None
    d = dx  # stands in for absent pointers (never read: their flags are off)
    pick = lambda t: t if t is not None else d  # noqa: E731
    launch = Launch(
        kernel=input_grad_kernel,
        grid=(n * -(-c // block_c) * -(-p // block_p),),
        args=(pick(g), x, dx, pick(mc), pick(ms), pick(pmax), pick(a), pick(b), pick(cmax), pick(avg_g),
              pick(max_g), c, p, gn, gc, gp, sn, sc, sp, dn, dc, dp),
        meta=dict(HAS_G=g is not None, HAS_MC=mc is not None, HAS_MS=ms is not None, HAS_SPOOL=has_spool,
                  HAS_AVG=avg_g is not None, HAS_MAX=max_g is not None,
                  BLOCK_C=block_c, BLOCK_P=block_p, ACC_FP64=acc_is_fp64(x)),
        name="input_grad",
        bytes_read=nbytes(g, x, mc, ms, pmax, a, b, cmax, avg_g, max_g),
        bytes_written=nbytes(dx),
    )
    return launch, dx


def input_grad(g: torch.Tensor | None, x: torch.Tensor, **maps: torch.Tensor | None) -> torch.Tensor:
    """The whole block's input gradient in one read of g and x and one write of dx:
    ``dx = (g * ms + a * [x * mc == pmax] + b) * mc + avg_g + max_g * [x == cmax]``; absent maps
    (None) drop their term (mc/ms: factor 1). Keyword maps: ``mc, cmax, avg_g, max_g`` per channel
    (N, C); ``ms, pmax, a, b`` per pixel (N, H*W). dx has x's dtype and memory format."""
    launch, dx = plan_input_grad(g, x, **maps)
    launch()
    return dx
