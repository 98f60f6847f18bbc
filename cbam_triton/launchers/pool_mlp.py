"""Launcher of stage 1 of the fused forward (:func:`~cbam_triton.kernels.pool_mlp.channel_pool_mlp_kernel`)."""

from __future__ import annotations

import torch

from cbam_triton.fusion import ACTIVATIONS, POOL_MODES, ChannelMLP
from cbam_triton.kernels.pool_mlp import channel_pool_mlp_kernel
from cbam_triton.launchers._common import (
    Launch,
    acc_is_fp64,
    as_ncp,
    compute_dtype,
    counter_buffer,
    nbytes,
    plan_fused,
)


def _matrix_strides(w: torch.Tensor) -> tuple[int, int]:
    """(row, column) strides of a Linear weight or a 1x1 conv weight viewed as a matrix."""
    return w.stride(0), w.stride(1)


def plan_channel_pool_mlp(x: torch.Tensor, mlp: ChannelMLP, hints: bool = False, split: int | None = None,
                          counters: torch.Tensor | None = None) -> tuple[Launch, torch.Tensor, torch.Tensor]:
    """Plan stage 1 + MLP; returns the launch, Mc (N, C) and the pooled (N, 2, C) [avg, max]
    (fp32, fp64 for fp64 x). ``hints``: evict_last loads (the L2-resident schedule)."""
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    plan = plan_fused(n, c, p, sc, sp, x.element_size(), "p", x.device, split)
    block_c, block_p, base = plan.block_c, plan.block_p, plan.base
    num_splits, per_split = plan.num_splits, plan.per_split
    acc = compute_dtype(x)
    hidden = mlp.hidden
    sums = torch.empty((n, num_splits, c), dtype=acc, device=x.device)
    maxs = torch.empty((n, num_splits, c), dtype=acc, device=x.device)
    pooled = torch.empty((n, 2, c), dtype=acc, device=x.device)
    mc = torch.empty((n, c), dtype=acc, device=x.device)
    has_fc2 = mlp.fc2_weight is not None
    hid = torch.empty((n, hidden), dtype=acc, device=x.device) if has_fc2 else mc
    counters = counter_buffer(x.device, n) if counters is None else counters
    w1 = mlp.fc1_weight
    w2 = mlp.fc2_weight if has_fc2 else w1
    weights = (w1, mlp.fc1_bias, mlp.fc2_weight, mlp.fc2_bias)
    launch = Launch(
        kernel=channel_pool_mlp_kernel,
        grid=(base, num_splits),
        args=(x, sums, maxs, counters, pooled, hid, mc,
              w1, mlp.fc1_bias if mlp.fc1_bias is not None else w1, w2,
              mlp.fc2_bias if mlp.fc2_bias is not None else w1,
              c, p, hidden, per_split, sn, sc, sp, *_matrix_strides(w1), *_matrix_strides(w2)),
        meta=dict(POOLS=POOL_MODES[mlp.pools], ACT=ACTIVATIONS[mlp.act], HAS_B1=mlp.fc1_bias is not None,
                  HAS_FC2=has_fc2, HAS_B2=has_fc2 and mlp.fc2_bias is not None, HINTS=hints,
                  BLOCK_C=block_c, BLOCK_P=block_p, ACC_FP64=acc_is_fp64(x)),
        name="channel_pool_mlp",
        bytes_read=nbytes(x, *weights),
        bytes_written=nbytes(sums, maxs, pooled, mc) + (nbytes(hid) if has_fc2 else 0),
    )
    return launch, mc, pooled
