"""Stage 1 of the fused forward: global avg + max pooling, then the channel MLP and its sigmoid,
in one launch (the last program of each sample computes that sample's Mc)."""

import triton
import triton.language as tl

from cbam_triton.kernels._common import last_arrival, relu, reset_counter, sigmoid
from cbam_triton.kernels.pool import pool_partials

#: channel-branch input modes (``POOLS``); must match :data:`cbam_triton.fusion.POOL_MODES`
POOLS_AVG_MAX = tl.constexpr(0)   # mlp(avg) + mlp(max)
POOLS_AVG = tl.constexpr(1)       # mlp(avg)
POOLS_MAX = tl.constexpr(2)       # mlp(max)
POOLS_LIGHT = tl.constexpr(3)     # mlp(0.5 * avg + 0.5 * max)
#: hidden activations (``ACT``); must match :data:`cbam_triton.fusion.ACTIVATIONS`
ACT_IDENTITY = tl.constexpr(0)
ACT_RELU = tl.constexpr(1)
#: tile of the matrix-vector products: [MLP_ROWS, MLP_COLS], the columns along the weight's rows
MLP_ROWS = tl.constexpr(32)
MLP_COLS = tl.constexpr(64)


@triton.jit
def _combine_pooled(n, C, P, num_splits, sum_ptr, max_ptr, pooled_ptr, acc_t: tl.constexpr):
    # pooled[n, 0, :] = avg, pooled[n, 1, :] = max over the SPLIT partials, in split order.
    # ".cg": the partials come from other programs (other SMs): read them from L2, not L1.
    offs = tl.arange(0, MLP_COLS)
    for c0 in range(0, C, MLP_COLS):
        cc = c0 + offs
        m = cc < C
        s = tl.zeros([MLP_COLS], dtype=acc_t)
        mx = tl.full([MLP_COLS], float("-inf"), dtype=acc_t)
        for sp in range(num_splits):
            src = (n * num_splits + sp) * C + cc
            s += tl.load(sum_ptr + src, mask=m, other=0.0, cache_modifier=".cg")
            mx = tl.maximum(mx, tl.load(max_ptr + src, mask=m, other=float("-inf"), cache_modifier=".cg"),
                            propagate_nan=tl.PropagateNan.ALL)
        tl.store(pooled_ptr + n * 2 * C + cc, s / P, mask=m)
        tl.store(pooled_ptr + n * 2 * C + C + cc, mx, mask=m)


@triton.jit
def channel_mlp(n, C, HID, pooled_ptr, hid_ptr, mc_ptr,
                w1_ptr, b1_ptr, w2_ptr, b2_ptr, s_w1h, s_w1c, s_w2c, s_w2h,
                POOLS: tl.constexpr, ACT: tl.constexpr, HAS_B1: tl.constexpr, HAS_FC2: tl.constexpr,
                HAS_B2: tl.constexpr, acc_t: tl.constexpr):
    """``Mc[n] = sigmoid(sum over pools of fc2(act(fc1(pool))))`` from ``pooled[n]`` (avg, max).

    One program: layer 1 into ``hid[n]`` (the activations summed over the pools, since fc2 is
    linear), a barrier, then layer 2 into ``mc[n]``. Without fc2 the layer-1 output (HID == C) is
    the logit. Weights in any float dtype, math in acc_t."""
    rows = tl.arange(0, MLP_ROWS)
    cols = tl.arange(0, MLP_COLS)
    base = pooled_ptr + n * 2 * C
    for h0 in range(0, HID, MLP_ROWS):
        hh = h0 + rows
        mh = hh < HID
        acc_a = tl.zeros([MLP_ROWS], dtype=acc_t)
        acc_m = tl.zeros([MLP_ROWS], dtype=acc_t)
        for c0 in range(0, C, MLP_COLS):
            cc = c0 + cols
            mk = cc < C
            w = tl.load(w1_ptr + hh[:, None] * s_w1h + cc[None, :] * s_w1c,
                        mask=mh[:, None] & mk[None, :], other=0.0).to(acc_t)
            if POOLS == POOLS_LIGHT:
                v = 0.5 * tl.load(base + cc, mask=mk, other=0.0) + 0.5 * tl.load(base + C + cc, mask=mk, other=0.0)
                acc_a += tl.sum(w * v[None, :], axis=1)
            else:
                if POOLS != POOLS_MAX:
                    acc_a += tl.sum(w * tl.load(base + cc, mask=mk, other=0.0)[None, :], axis=1)
                if POOLS != POOLS_AVG:
                    acc_m += tl.sum(w * tl.load(base + C + cc, mask=mk, other=0.0)[None, :], axis=1)
        if HAS_B1:
            b1 = tl.load(b1_ptr + hh, mask=mh, other=0.0).to(acc_t)
            acc_a += b1
            acc_m += b1
        if ACT == ACT_RELU:
            acc_a = relu(acc_a)
            acc_m = relu(acc_m)
        if POOLS == POOLS_AVG_MAX:
            z = acc_a + acc_m
        elif POOLS == POOLS_MAX:
            z = acc_m
        else:
            z = acc_a
        if HAS_FC2:
            tl.store(hid_ptr + n * HID + hh, z, mask=mh)
        else:
            tl.store(mc_ptr + n * C + hh, sigmoid(z), mask=mh)
    if HAS_FC2:
        tl.debug_barrier()  # layer 1's stores (other threads of this program) before layer 2's loads
        for c0 in range(0, C, MLP_ROWS):
            cc = c0 + rows
            mc_ = cc < C
            acc = tl.zeros([MLP_ROWS], dtype=acc_t)
            for h0 in range(0, HID, MLP_COLS):
                hh = h0 + cols
                mh = hh < HID
                w = tl.load(w2_ptr + cc[:, None] * s_w2c + hh[None, :] * s_w2h,
                            mask=mc_[:, None] & mh[None, :], other=0.0).to(acc_t)
                z = tl.load(hid_ptr + n * HID + hh, mask=mh, other=0.0)
                acc += tl.sum(w * z[None, :], axis=1)
            if HAS_B2:  # fc2's bias once per pool
                b2 = tl.load(b2_ptr + cc, mask=mc_, other=0.0).to(acc_t)
                if POOLS == POOLS_AVG_MAX:
                    acc += b2 + b2
                else:
                    acc += b2
            tl.store(mc_ptr + n * C + cc, sigmoid(acc), mask=mc_)


@triton.jit
def channel_pool_mlp_kernel(
    x_ptr, sum_ptr, max_ptr, counter_ptr, pooled_ptr, hid_ptr, mc_ptr,
    w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    C, P, HID, p_per_split,
    stride_xn, stride_xc, stride_xp,
    s_w1h, s_w1c, s_w2c, s_w2h,
    POOLS: tl.constexpr, ACT: tl.constexpr,
    HAS_B1: tl.constexpr, HAS_FC2: tl.constexpr, HAS_B2: tl.constexpr, HINTS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC_FP64: tl.constexpr,
):
    # Reads x[n, c-block, p-range] exactly once (HINTS: evict_last, so that x stays in L2 for
    # stages 2 and 3 of the L2-resident schedule) and writes its (sum, max) partials to the
    # (N, SPLIT, C) workspaces, like channel_pool_kernel: same grid (N * cdiv(C, BLOCK_C), SPLIT),
    # same tile rule. Then one integer atomic per program on counter[n]: the last of the sample's
    # cdiv(C, BLOCK_C) * SPLIT programs combines the partials in a fixed order into pooled[n] =
    # (avg, max) (N, 2, C) and computes the MLP and sigmoid into mc[n] (N, C), reading the weights
    # (O(C * hidden), from L2). Big-tensor traffic: |x| read, nothing written; the MLP costs no
    # launch of its own and no float atomics (deterministic).
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    pid_nc = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    num_cblocks = tl.cdiv(C, BLOCK_C)
    n = pid_nc // num_cblocks
    offs_c = (pid_nc % num_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    p_start = split * p_per_split
    vsum, vmax, _ = pool_partials(x_ptr, n, offs_c, mask_c, p_start, tl.minimum(p_start + p_per_split, P),
                                  stride_xn, stride_xc, stride_xp, False, HINTS, BLOCK_C, BLOCK_P, ACC_FP64)
    out = (n * num_splits + split).to(tl.int64) * C + offs_c
    tl.store(sum_ptr + out, vsum, mask=mask_c)
    tl.store(max_ptr + out, vmax, mask=mask_c)
    if last_arrival(counter_ptr + n, num_cblocks * num_splits):
        n64 = n.to(tl.int64)
        _combine_pooled(n64, C, P, num_splits, sum_ptr, max_ptr, pooled_ptr, acc_t)
        tl.debug_barrier()  # the combined vectors (stored by all threads) before the MLP reads them
        channel_mlp(n64, C, HID, pooled_ptr, hid_ptr, mc_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                    s_w1h, s_w1c, s_w2c, s_w2h, POOLS, ACT, HAS_B1, HAS_FC2, HAS_B2, acc_t)
        reset_counter(counter_ptr + n)
