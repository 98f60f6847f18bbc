"""Launcher of stage 1 of the fused forward (:func:`~cbam_triton.kernels.pool_mlp.channel_pool_mlp_kernel`),
and the arguments with which the later stages compute Mc from the MLP's last layer."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from cbam_triton.fusion import ACTIVATIONS, POOL_MODES, ChannelMLP
from cbam_triton.kernels.pool_mlp import channel_pool_mlp_kernel
from cbam_triton.launchers._common import (
    PROGRAM_SMALL_BYTES,
    SMALL_TILE,
    WORKSPACE_FRACTION,
    Launch,
    ProgramModel,
    acc_is_fp64,
    as_ncp,
    compute_dtype,
    counter_buffer,
    nbytes,
    next_pow2,
    plan_fused,
    small_tile_rows,
)

#: ``MC_MODE`` of the streaming kernels (must match :mod:`cbam_triton.kernels.mlp`)
MC_NONE, MC_LOAD, MC_FC2, MC_FC1 = 0, 1, 2, 3


class ChannelState(NamedTuple):
    """What stage 1 leaves for the stages that compute Mc: the MLP, the pooled (N, 2, C) [avg, max]
    vectors and, for a two-layer MLP, the hidden vectors z (N, hidden) (None for one layer)."""

    mlp: ChannelMLP
    pooled: torch.Tensor
    z: torch.Tensor | None

    @property
    def last_weight(self) -> torch.Tensor:
        """The weight whose rows give Mc: fc2's (C, hidden), or fc1's (C, C) for a one-layer MLP."""
        return self.mlp.fc2_weight if self.z is not None else self.mlp.fc1_weight

    @property
    def map_weight_bytes(self) -> int:
        """Bytes of the weights (and bias) read to compute one sample's whole Mc."""
        w = self.last_weight
        return w.shape[0] * w.shape[1] * w.element_size()


def _matrix_strides(w: torch.Tensor) -> tuple[int, int]:
    """(row, column) strides of a Linear weight or a 1x1 conv weight viewed as a matrix."""
    return w.stride(0), w.stride(1)


def channel_map_args(state: ChannelState | None, mc: torch.Tensor | None, block_c: int,
                     filler: torch.Tensor) -> tuple[tuple[Any, ...], tuple[int, ...], dict[str, Any]]:
    """The Mc arguments of a streaming kernel: ``(tensors (w, b, vec), (K, s_wc, s_wk), meta)``.

    ``state`` (fused forward): Mc computed in-kernel per channel tile from the MLP's last layer;
    else ``mc`` (N, C) loaded, or no channel map. ``filler`` stands in for absent tensors."""
    if state is None:
        meta = dict(MC_MODE=MC_LOAD if mc is not None else MC_NONE, POOLS=0, ACT=0, HAS_MCB=False, KB=1, Z_ONCE=False)
        return (filler, filler, filler), (1, 0, 0), meta
    mlp = state.mlp
    w = state.last_weight
    two = state.z is not None
    b = mlp.fc2_bias if two else mlp.fc1_bias
    k = w.shape[1]
    kb = small_tile_rows(block_c, k)
    meta = dict(MC_MODE=MC_FC2 if two else MC_FC1, POOLS=POOL_MODES[mlp.pools], ACT=ACTIVATIONS[mlp.act],
                HAS_MCB=b is not None, KB=kb, Z_ONCE=two and kb >= k)
    return (w, b if b is not None else w, state.z if two else state.pooled), (k, *_matrix_strides(w)), meta


def map_tile_loads(meta: dict[str, Any], block_c: int, k: int, wsize: int, acc: int) -> tuple[int, int]:
    """(loads, bytes) of one Mc tile of ``block_c`` channels (:func:`channel_map_args`' meta)."""
    mode = meta["MC_MODE"]
    if mode == MC_NONE:
        return 0, 0
    if mode == MC_LOAD:
        return 1, block_c * acc
    chunks = -(-k // meta["KB"])
    vec = 0 if meta.get("Z_ONCE") else chunks * (1 if mode == MC_FC2 else 2)
    bias = 1 if meta["HAS_MCB"] else 0
    return chunks + vec + bias, block_c * k * wsize + (vec * meta["KB"] * acc) + bias * block_c * wsize


def map_split_min(state: ChannelState | None, c: int) -> int:
    """Fewest splits of the channel walk that keep each program's slice of the MLP's last layer
    (``c_range * K`` weights) within :data:`PROGRAM_SMALL_BYTES`."""
    if state is None:
        return 1
    return max(1, -(-state.map_weight_bytes // PROGRAM_SMALL_BYTES))


def plan_channel_pool_mlp(x: torch.Tensor, mlp: ChannelMLP, hints: bool = False, split: int | None = None,
                          counters: torch.Tensor | None = None) -> tuple[Launch, ChannelState]:
    """Plan stage 1 (pooling, split combine, MLP layer 1); returns the launch and the
    :class:`ChannelState` the later stages compute Mc from (fp32, fp64 for fp64 x).
    ``hints``: evict_last loads (the L2-resident schedule)."""
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    hidden = mlp.hidden
    two = mlp.fc2_weight is not None
    w1 = mlp.fc1_weight
    wsize = w1.element_size()
    if two:
        # a program's slice of W1, W1[:, block], stays within PROGRAM_SMALL_BYTES; the sample's
        # (blocks, 2, hidden) fp32 layer-1 partials within that too (the last block sums them) and
        # within 1/WORKSPACE_FRACTION of the sample's x bytes (their traffic)
        hi = max(1, PROGRAM_SMALL_BYTES // (hidden * wsize))
        lo = max(-(-c * hidden * 8 // PROGRAM_SMALL_BYTES),
                 -(-c * hidden * 8 * WORKSPACE_FRACTION // max(1, c * p * x.element_size())))
        block_c_range = (min(lo, hi), hi)
    else:
        block_c_range = (1, 1 << 30)
    plan = plan_fused(n, c, p, sc, sp, x.element_size(), "p", x.device, split, block_c_range=block_c_range)
    block_c, block_p, base = plan.block_c, plan.block_p, plan.base
    num_splits, per_split = plan.num_splits, plan.per_split
    num_cblocks = -(-c // block_c)
    acc = compute_dtype(x)
    sums = torch.empty((n, num_splits, c), dtype=acc, device=x.device) if num_splits > 1 else None
    maxs = torch.empty((n, num_splits, c), dtype=acc, device=x.device) if num_splits > 1 else None
    pooled = torch.empty((n, 2, c), dtype=acc, device=x.device)
    parts = torch.empty((n, num_cblocks, 2, hidden), dtype=acc, device=x.device) if two else None
    z = torch.empty((n, hidden), dtype=acc, device=x.device) if two else None
    if counters is None:
        counters = counter_buffer(x.device, n * num_cblocks + n)
    split_counters, sample_counters = counters[: n * num_cblocks], counters[n * num_cblocks: n * num_cblocks + n]
    hb = small_tile_rows(block_c, hidden)
    zb = min(next_pow2(hidden), 128)
    cbb = max(1, min(next_pow2(num_cblocks), SMALL_TILE // zb))
    launch = Launch(
        kernel=channel_pool_mlp_kernel,
        grid=(base, num_splits),
        args=(x, sums if sums is not None else pooled, maxs if maxs is not None else pooled, split_counters,
              sample_counters, pooled, parts if two else pooled, z if two else pooled,
              w1, mlp.fc1_bias if mlp.fc1_bias is not None else w1,
              c, p, hidden, per_split, sn, sc, sp, *_matrix_strides(w1)),
        meta=dict(POOLS=POOL_MODES[mlp.pools], ACT=ACTIVATIONS[mlp.act], HAS_B1=mlp.fc1_bias is not None,
                  LAYER1=two, SPLIT=num_splits > 1, HINTS=hints, BLOCK_C=block_c, BLOCK_P=block_p,
                  SB=small_tile_rows(block_c, num_splits), HB=hb, CBB=cbb, ZB=zb, ACC_FP64=acc_is_fp64(x)),
        name="channel_pool_mlp",
        bytes_read=nbytes(x, w1 if two else None, mlp.fc1_bias if two else None),
        bytes_written=nbytes(sums, maxs, pooled, parts, z),
    )
    launch.longest = _stage1_longest(launch, x, c, p, hidden, num_splits, per_split, num_cblocks, two, wsize)
    return launch, ChannelState(mlp, pooled, z)


def _stage1_longest(launch: Launch, x: torch.Tensor, c: int, p: int, hidden: int, splits: int, per_split: int,
                    blocks: int, two: bool, wsize: int) -> ProgramModel:
    """Stage 1's longest program: the last of a sample (its x tiles, the split combine, its W1
    slice, the sample's layer-1 partials)."""
    m = launch.meta
    bc, bp, acc = m["BLOCK_C"], m["BLOCK_P"], 8 if m["ACC_FP64"] else 4
    span = min(per_split, p)
    loads = nbytes_ = 0
    if splits > 1:
        loads += 2 * -(-splits // m["SB"])
        nbytes_ += 2 * splits * bc * acc
    if two:
        pools = 2 if m["POOLS"] == 0 else 1
        loads += -(-hidden // m["HB"]) + pools * -(-hidden // m["ZB"]) * -(-blocks // m["CBB"])
        nbytes_ += hidden * bc * wsize + pools * blocks * hidden * acc
        if m["HAS_B1"]:
            loads += -(-hidden // m["ZB"])
            nbytes_ += hidden * wsize
    return ProgramModel(-(-span // bp), bc * span * x.element_size(), loads, nbytes_)
