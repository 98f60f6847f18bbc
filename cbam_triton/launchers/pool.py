"""Launcher of stage 1 (:func:`~cbam_triton.kernels.pool.channel_pool_kernel`)."""

from __future__ import annotations

import torch

from cbam_triton.kernels.pool import channel_pool_kernel
from cbam_triton.launchers._common import (
    Launch,
    acc_is_fp64,
    as_ncp,
    choose_split,
    combine_max_counts,
    compute_dtype,
    nbytes,
    sum_partials,
    target_programs,
    tile_for,
    unit_axis,
)


def plan_channel_pool(x: torch.Tensor, split: int | None = None, count: bool = False
                      ) -> tuple[Launch, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Plan stage 1 for a 4-D x: returns the launch and its (N, SPLIT, C) sum / max workspaces
    (and, with ``count``, the int32 (N, SPLIT, C) counts of elements equal to each max)."""
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    block_c, block_p = tile_for(unit_axis(sc, sp, c, p), c, p)
    base = n * -(-c // block_c)
    num_splits, per_split = choose_split(base, p, block_p, target_programs(x.device), split)
    acc = compute_dtype(x)
    sums = torch.empty((n, num_splits, c), dtype=acc, device=x.device)
    maxs = torch.empty((n, num_splits, c), dtype=acc, device=x.device)
    cnts = torch.empty((n, num_splits, c), dtype=torch.int32, device=x.device) if count else None
    launch = Launch(
        kernel=channel_pool_kernel,
        grid=(base, num_splits),
        args=(x, sums, maxs, cnts if count else maxs, c, p, per_split, sn, sc, sp),
        meta=dict(COUNT=count, BLOCK_C=block_c, BLOCK_P=block_p, ACC_FP64=acc_is_fp64(x)),
        name="channel_pool",
        bytes_read=nbytes(x),
        bytes_written=nbytes(sums, maxs, cnts),
    )
    return launch, sums, maxs, cnts


def channel_pool(x: torch.Tensor, split: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Global (avg, max) over H*W per (n, c): two (N, C) tensors in fp32 (fp64 for fp64 x).

    Reads x once, with its own strides (NCHW, channels_last and any view whose H and W dims can
    be merged); other views are copied to NCHW first. NaN propagates like ``torch.amax``.
    """
    n, c, h, w = x.shape
    launch, sums, maxs, _ = plan_channel_pool(x, split)
    launch()
    # fixed-order combine of the partials: deterministic
    return sum_partials(sums) / (h * w), (maxs[:, 0] if maxs.shape[1] == 1 else maxs.amax(dim=1))


def channel_pool_counts(x: torch.Tensor, split: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`channel_pool` plus the int32 (N, C) number of elements equal to each max (training
    forward: the backward splits the max's gradient evenly among ties, as ``torch.amax``)."""
    n, c, h, w = x.shape
    launch, sums, maxs, cnts = plan_channel_pool(x, split, count=True)
    launch()
    peak, cnt = (maxs[:, 0], cnts[:, 0]) if maxs.shape[1] == 1 else combine_max_counts(maxs, cnts)
    return sum_partials(sums) / (h * w), peak, cnt
