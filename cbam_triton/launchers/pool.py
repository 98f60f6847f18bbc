"""Launcher of stage 1 (:func:`~cbam_triton.kernels.pool.channel_pool_kernel`)."""

from __future__ import annotations

import torch

from cbam_triton.kernels.pool import channel_pool_kernel
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


def plan_channel_pool(x: torch.Tensor, split: int | None = None) -> tuple[Launch, torch.Tensor, torch.Tensor]:
    """Plan stage 1 for a 4-D x: returns the launch and its (N, SPLIT, C) sum / max workspaces."""
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    block_c, block_p = tile_for(unit_axis(sc, sp, c, p), c, p)
    base = n * -(-c // block_c)
    num_splits, per_split = choose_split(base, p, block_p, target_programs(x.device), split)
    acc = compute_dtype(x)
    sums = torch.empty((n, num_splits, c), dtype=acc, device=x.device)
    maxs = torch.empty((n, num_splits, c), dtype=acc, device=x.device)
    launch = Launch(
        kernel=channel_pool_kernel,
        grid=(base, num_splits),
        args=(x, sums, maxs, c, p, per_split, sn, sc, sp),
        meta=dict(BLOCK_C=block_c, BLOCK_P=block_p, ACC_FP64=acc_is_fp64(x)),
        name="channel_pool",
        bytes_read=nbytes(x),
        bytes_written=nbytes(sums, maxs),
    )
    return launch, sums, maxs


def channel_pool(x: torch.Tensor, split: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Global (avg, max) over H*W per (n, c): two (N, C) tensors in fp32 (fp64 for fp64 x).

    Reads x once, with its own strides (NCHW, channels_last and any view whose H and W dims can
    be merged); other views are copied to NCHW first. NaN propagates like ``torch.amax``.
    """
    n, c, h, w = x.shape
    launch, sums, maxs = plan_channel_pool(x, split)
    launch()
    if sums.shape[1] == 1:
        total, peak = sums[:, 0], maxs[:, 0]
    else:  # fixed-order combine of the partials: deterministic
        total, peak = sums.sum(dim=1), maxs.amax(dim=1)
    return total / (h * w), peak
