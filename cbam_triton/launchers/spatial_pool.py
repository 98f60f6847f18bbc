"""Launcher of stage 2 (:func:`~cbam_triton.kernels.spatial_pool.spatial_pool_kernel`)."""

from __future__ import annotations

import torch

from cbam_triton.kernels.spatial_pool import spatial_pool_kernel
from cbam_triton.launchers._common import (
    Launch,
    acc_is_fp64,
    as_ncp,
    choose_split,
    compute_dtype,
    nbytes,
    target_programs,
    tile_for,
    unit_axis,
)


def plan_spatial_pool(x: torch.Tensor, mc: torch.Tensor | None,
                      split: int | None = None) -> tuple[Launch, torch.Tensor]:
    """Plan stage 2; returns the launch and its (N, SPLIT, 2, H, W) output (max, sum-or-mean)."""
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    block_c, block_p = tile_for(unit_axis(sc, sp, c, p), c, p)
    base = n * -(-p // block_p)
    num_splits, per_split = choose_split(base, c, block_c, target_programs(x.device), split)
    acc = compute_dtype(x)
    out = torch.empty((n, num_splits, 2, h, w), dtype=acc, device=x.device)
    if mc is not None:
        mc = mc.to(acc).contiguous()
    launch = Launch(
        kernel=spatial_pool_kernel,
        grid=(base, num_splits),
        args=(x, mc if mc is not None else out, out, c, p, per_split, sn, sc, sp),
        meta=dict(HAS_MC=mc is not None, FINALIZE=num_splits == 1,
                  BLOCK_C=block_c, BLOCK_P=block_p, ACC_FP64=acc_is_fp64(x)),
        name="spatial_pool",
        bytes_read=nbytes(x, mc),
        bytes_written=nbytes(out),
    )
    return launch, out


def spatial_pool(x: torch.Tensor, mc: torch.Tensor | None = None,
                 split: int | None = None) -> torch.Tensor:
    """``cat([max_C(x * mc), mean_C(x * mc)], 1)`` as an (N, 2, H, W) fp32 (fp64) tensor.

    ``mc`` is the (N, C) channel map or None (plain x). ``x * mc`` is never materialised: x is read
    once. NaN propagates like ``torch.amax``/``mean``.
    """
    c = x.shape[1]
    launch, out = plan_spatial_pool(x, mc, split)
    launch()
    if out.shape[1] == 1:
        return out[:, 0]
    return torch.stack([out[:, :, 0].amax(dim=1), out[:, :, 1].sum(dim=1) / c], dim=1)
