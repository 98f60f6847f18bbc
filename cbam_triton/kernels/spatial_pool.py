"""Stage 2: gated cross-channel max and mean of ``x * Mc`` per pixel (the spatial gate's input)."""

import triton
import triton.language as tl

from cbam_triton.kernels._common import count_at_max, last_arrival, max_propagate_nan, reset_counter, track_max_count


@triton.jit
def spatial_pool_kernel(
    x_ptr, mc_ptr, out_ptr, cnt_ptr, counter_ptr, final_ptr,
    C, P, c_per_split,
    stride_xn, stride_xc, stride_xp,
    HAS_MC: tl.constexpr, FINALIZE: tl.constexpr, COUNT: tl.constexpr,
    HINTS: tl.constexpr, COMBINE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC_FP64: tl.constexpr,
):
    # Reads x[n, c-range, p-block] once and the channel map mc[n, c] (fp32/fp64, N*C values);
    # x * mc lives only in registers, never in memory. Writes out[n, split, 0, p] = max_c and
    # out[n, split, 1, p] = sum_c over the c-range (FINALIZE, i.e. SPLIT == 1: the mean, so out is
    # directly the (N, 2, H, W) map [max, mean]). Grid: (N * cdiv(P, BLOCK_P), SPLIT).
    # Tile [BLOCK_C, BLOCK_P] walks the c-range; partials are combined afterwards in a fixed
    # order (deterministic, no atomics). COUNT (training forward): also cnt[n, split, p] = how many
    # channels reach the max (int32), for the backward's even split of the max's gradient among ties.
    # Fused forward: HINTS loads x with evict_last (stage 3 reads it again from L2); COMBINE (SPLIT
    # > 1): the last of the SPLIT programs of a (n, p-block), found with one integer atomic on
    # counter[n, p-block], combines the partials in split order into final[n] (N, 2, H, W), so no
    # PyTorch op runs between the stages.
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    pid_np = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    num_pblocks = tl.cdiv(P, BLOCK_P)
    n = pid_np // num_pblocks
    pb = pid_np % num_pblocks

    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    offs_c = tl.arange(0, BLOCK_C)
    c_start = split * c_per_split
    c_end = tl.minimum(c_start + c_per_split, C)

    ptrs = (x_ptr + n.to(tl.int64) * stride_xn
            + (c_start + offs_c).to(tl.int64)[:, None] * stride_xc
            + offs_p.to(tl.int64)[None, :] * stride_xp)
    step = tl.full([], BLOCK_C, tl.int64) * stride_xc  # int64: no overflow for huge strides
    mc_ptrs = mc_ptr + n.to(tl.int64) * C + c_start + offs_c
    acc_sum = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
    acc_max = tl.full([BLOCK_C, BLOCK_P], float("-inf"), dtype=acc_t)
    acc_cnt = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.int32)
    for c0 in range(c_start, c_end, BLOCK_C):
        mask_cc = (c0 + offs_c) < c_end
        mask = mask_cc[:, None] & mask_p[None, :]
        if HINTS:
            v = tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_last").to(acc_t)
        else:
            v = tl.load(ptrs, mask=mask, other=0.0).to(acc_t)
        if HAS_MC:
            g = tl.load(mc_ptrs, mask=mask_cc, other=0.0).to(acc_t)
            v = v * g[:, None]
        acc_sum += tl.where(mask, v, 0.0)
        vm = tl.where(mask, v, float("-inf"))
        if COUNT:
            acc_max, acc_cnt = track_max_count(acc_max, acc_cnt, vm, mask)
        else:
            acc_max = tl.maximum(acc_max, vm, propagate_nan=tl.PropagateNan.ALL)
        ptrs += step
        mc_ptrs += BLOCK_C

    vmax = max_propagate_nan(acc_max, 0)
    vsum = tl.sum(acc_sum, axis=0)
    if FINALIZE:
        vsum = vsum / C
    base = out_ptr + (n * num_splits + split).to(tl.int64) * 2 * P
    tl.store(base + offs_p, vmax, mask=mask_p)
    tl.store(base + P + offs_p, vsum, mask=mask_p)
    if COUNT:
        cnt_out = cnt_ptr + (n * num_splits + split).to(tl.int64) * P + offs_p
        tl.store(cnt_out, count_at_max(acc_max, acc_cnt, vmax, 0), mask=mask_p)
    if COMBINE:
        if last_arrival(counter_ptr + pid_np, num_splits):
            # ".cg": the other splits' partials were written by other SMs; read them from L2
            pmax = tl.full([BLOCK_P], float("-inf"), dtype=acc_t)
            psum = tl.zeros([BLOCK_P], dtype=acc_t)
            for s in range(num_splits):
                src = out_ptr + (n * num_splits + s).to(tl.int64) * 2 * P + offs_p
                pmax = tl.maximum(pmax, tl.load(src, mask=mask_p, other=float("-inf"), cache_modifier=".cg"),
                                  propagate_nan=tl.PropagateNan.ALL)
                psum += tl.load(src + P, mask=mask_p, other=0.0, cache_modifier=".cg")
            dst = final_ptr + n.to(tl.int64) * 2 * P + offs_p
            tl.store(dst, pmax, mask=mask_p)
            tl.store(dst + P, psum / C, mask=mask_p)
            reset_counter(counter_ptr + pid_np)
