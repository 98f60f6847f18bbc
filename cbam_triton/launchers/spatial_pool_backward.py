"""Launcher of the spatial-pool backward
(:func:`~cbam_triton.kernels.spatial_pool_backward.spatial_pool_backward_kernel`)."""

from __future__ import annotations

import torch

from cbam_triton.kernels.spatial_pool_backward import spatial_pool_backward_kernel
from cbam_triton.launchers._common import (
    Launch,
    acc_is_fp64,
    as_ncp,
    compute_dtype,
    nbytes,
    plan_walk,
    sum_partials,
)


def plan_spatial_pool_backward(x: torch.Tensor, mc: torch.Tensor, pmax: torch.Tensor, a: torch.Tensor,
                               b: torch.Tensor, split: int | None = None) -> tuple[Launch, torch.Tensor]:
    """Plan the spatial-pool backward; returns the launch and its (N, K, C) d_mc partials."""
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    walk = plan_walk(n, c, p, sc, sp, x.device, split)
    acc = compute_dtype(x)
    dmc = torch.empty((n, walk.num_blocks if walk.walk_c else walk.num_splits, c), dtype=acc, device=x.device)
    mc = mc.to(acc).contiguous()
    pmax, a, b = (t.to(acc).reshape(n, p).contiguous() for t in (pmax, a, b))
    launch = Launch(
        kernel=spatial_pool_backward_kernel,
        grid=walk.grid,
        args=(x, mc, pmax, a, b, dmc, c, p, walk.per_split, sn, sc, sp),
        meta=dict(WALK_C=walk.walk_c, BLOCK_C=walk.block_c, BLOCK_P=walk.block_p, ACC_FP64=acc_is_fp64(x)),
        name="spatial_pool_backward",
        bytes_read=nbytes(x, mc, pmax, a, b),
        bytes_written=nbytes(dmc),
    )
    return launch, dmc


def spatial_pool_backward(x: torch.Tensor, mc: torch.Tensor, pmax: torch.Tensor, a: torch.Tensor,
                          b: torch.Tensor, split: int | None = None) -> torch.Tensor:
    """``d_mc[n, c] = sum_p x * (a * [x * mc == pmax] + b)``: the channel map's gradient through the
    spatial pool, with ``a = d_max / ties`` and ``b = d_mean / C`` per pixel ((N, H*W) or (N, H, W)).
    (N, C) in fp32 (fp64); one read of x."""
    launch, dmc = plan_spatial_pool_backward(x, mc, pmax, a, b, split)
    launch()
    return sum_partials(dmc)
