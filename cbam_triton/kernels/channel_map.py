"""The channel map ``Mc`` of every sample of a chunk from the MLP's last layer, in one small launch
between stage 1 and stage 2 of the fused forward (the streaming kernels then read Mc as a vector)."""

import triton
import triton.language as tl

from cbam_triton.kernels._common import sigmoid
from cbam_triton.kernels.mlp import MC_FC2, POOLS_AVG_MAX, _activate


@triton.jit
def channel_map_kernel(
    x_ptr, vec_ptr, w_ptr, b_ptr, mc_ptr,
    N, C, K, s_wc, s_wk,
    MC_MODE: tl.constexpr, POOLS: tl.constexpr, ACT: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, KB: tl.constexpr, ACC_FP64: tl.constexpr,
):
    # Writes mc[n, c] (N, C), x's compute dtype, for the BLOCK_N samples x BLOCK_C channels of this
    # program; x_ptr is not read (it names the chunk the map belongs to). Grid (cdiv(C, BLOCK_C),
    # cdiv(N, BLOCK_N)); the launcher makes BLOCK_N cover the whole chunk where it can, so each weight
    # is read once per chunk (not once per sample and pixel block, as when the streaming programs
    # computed their own tiles of Mc).
    # MC_FC2 (two layers): mc = sigmoid(W2[tile] @ z[n] + pools * b2[tile]) with z (N, K = hidden)
    # from stage 1: per k-chunk one [BLOCK_C, KB] weight tile and one [BLOCK_N, KB] tile of z,
    # multiplied as a [BLOCK_N, BLOCK_C, KB] product and summed over k (fixed order: deterministic).
    # MC_PART (one layer, fc1: C -> C): mc = sigmoid(sum over pools of act(sum_b part[n, b, pool,
    # tile] + b1[tile])) with part (N, K = blocks, pools, C) from stage 1: [BLOCK_N, KB, BLOCK_C]
    # tiles of the partials summed over the blocks in order.
    # Longest program: 2 * cdiv(K, KB) (+ 1 bias) tile loads (the launcher keeps them <= 32).
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    NPOOL: tl.constexpr = 1 + (POOLS == POOLS_AVG_MAX)
    cc = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    nn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_c = cc < C
    mask_n = nn < N
    offs_k = tl.arange(0, KB)
    acc_a = tl.zeros([BLOCK_N, BLOCK_C], dtype=acc_t)
    acc_m = tl.zeros([BLOCK_N, BLOCK_C], dtype=acc_t)
    for k0 in range(0, K, KB):
        kk = k0 + offs_k
        mk = kk < K
        if MC_MODE == MC_FC2:
            w = tl.load(w_ptr + cc[:, None] * s_wc + kk[None, :] * s_wk, mask=mask_c[:, None] & mk[None, :],
                        other=0.0).to(acc_t)
            z = tl.load(vec_ptr + nn.to(tl.int64)[:, None] * K + kk[None, :], mask=mask_n[:, None] & mk[None, :],
                        other=0.0, cache_modifier=".cg").to(acc_t)
            acc_a += tl.sum(z[:, None, :] * w[None, :, :], axis=2)
        else:
            rows = (nn.to(tl.int64)[:, None, None] * K + kk[None, :, None]) * NPOOL * C + cc[None, None, :]
            m = mask_n[:, None, None] & mk[None, :, None] & mask_c[None, None, :]
            acc_a += tl.sum(tl.load(vec_ptr + rows, mask=m, other=0.0, cache_modifier=".cg"), axis=1)
            if POOLS == POOLS_AVG_MAX:
                acc_m += tl.sum(tl.load(vec_ptr + rows + C, mask=m, other=0.0, cache_modifier=".cg"), axis=1)
    b = tl.zeros([BLOCK_C], dtype=acc_t)
    if HAS_B:
        b = tl.load(b_ptr + cc, mask=mask_c, other=0.0).to(acc_t)
    if MC_MODE == MC_FC2:  # fc2's bias once per pool (fc2 is linear: the pools' activations were summed)
        logit = acc_a + b[None, :]
        if POOLS == POOLS_AVG_MAX:
            logit += b[None, :]
    else:
        logit = _activate(acc_a + b[None, :], ACT)
        if POOLS == POOLS_AVG_MAX:
            logit += _activate(acc_m + b[None, :], ACT)
    dst = mc_ptr + nn.to(tl.int64)[:, None] * C + cc[None, :]
    tl.store(dst, sigmoid(logit), mask=mask_n[:, None] & mask_c[None, :])
