"""Backward of stage 2 (``[max_C, mean_C]`` of ``x * Mc``): the gradient of the channel map."""

import triton
import triton.language as tl

from cbam_triton.kernels._common import tile_ptrs, walk_program


@triton.jit
def spatial_pool_backward_kernel(
    x_ptr, mc_ptr, pmax_ptr, a_ptr, b_ptr, dmc_ptr,
    C, P, walk_per_split,
    stride_xn, stride_xc, stride_xp,
    WALK_C: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC_FP64: tl.constexpr,
):
    # Reads x once (|x| bytes) and small per-pixel maps; writes small fp32 (fp64) partials of
    #   d_mc[n, c] = sum_p x * dy,   dy = a[n, p] * (x * mc == pmax[n, p]) + b[n, p]
    # where a = d_max / (number of channels at the max) and b = d_mean / C: the gradient reaching
    # y = x * mc through max_C (split evenly among ties, as torch.amax) and mean_C. y is recomputed
    # in registers exactly as the forward formed it, so the tie test matches the forward's max.
    # WALK_C (NCHW): program (n, p-block) walks its c-range; each tile's sum over its pixels goes to
    # dmc[n, p-block, c]. Else (channels_last): program (n, c-block) walks its p-range and writes
    # dmc[n, split, c]. The launcher sums dim 1 in a fixed order (deterministic, no atomics).
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    if WALK_C:
        n, blk, num_blocks, offs_p, mask_p, c_start, c_end = walk_program(P, C, walk_per_split, BLOCK_P)
        offs_c = tl.arange(0, BLOCK_C)
        pm = tl.load(pmax_ptr + n * P + offs_p, mask=mask_p, other=0.0).to(acc_t)
        a = tl.load(a_ptr + n * P + offs_p, mask=mask_p, other=0.0).to(acc_t)
        b = tl.load(b_ptr + n * P + offs_p, mask=mask_p, other=0.0).to(acc_t)
        x_ptrs = tile_ptrs(x_ptr, n, c_start + offs_c, offs_p, stride_xn, stride_xc, stride_xp)
        x_step = tl.full([], BLOCK_C, tl.int64) * stride_xc
        for c0 in range(c_start, c_end, BLOCK_C):
            cc = c0 + offs_c
            mask_c = cc < c_end
            mask = mask_c[:, None] & mask_p[None, :]
            xv = tl.load(x_ptrs, mask=mask, other=0.0).to(acc_t)
            m = tl.load(mc_ptr + n * C + cc, mask=mask_c, other=0.0).to(acc_t)
            tie = ((xv * m[:, None]) == pm[None, :]).to(acc_t)
            dy = a[None, :] * tie + b[None, :]
            part = tl.sum(tl.where(mask, xv * dy, 0.0), axis=1)
            tl.store(dmc_ptr + (n * num_blocks + blk) * C + cc, part, mask=mask_c)
            x_ptrs += x_step
    else:
        n, blk, num_blocks, offs_c, mask_c, p_start, p_end = walk_program(C, P, walk_per_split, BLOCK_C)
        offs_p = tl.arange(0, BLOCK_P)
        m = tl.load(mc_ptr + n * C + offs_c, mask=mask_c, other=0.0).to(acc_t)
        x_ptrs = tile_ptrs(x_ptr, n, offs_c, p_start + offs_p, stride_xn, stride_xc, stride_xp)
        x_step = tl.full([], BLOCK_P, tl.int64) * stride_xp
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
        for p0 in range(p_start, p_end, BLOCK_P):
            pp = p0 + offs_p
            mask_p = pp < p_end
            mask = mask_c[:, None] & mask_p[None, :]
            xv = tl.load(x_ptrs, mask=mask, other=0.0).to(acc_t)
            pm = tl.load(pmax_ptr + n * P + pp, mask=mask_p, other=0.0).to(acc_t)
            a = tl.load(a_ptr + n * P + pp, mask=mask_p, other=0.0).to(acc_t)
            b = tl.load(b_ptr + n * P + pp, mask=mask_p, other=0.0).to(acc_t)
            tie = ((xv * m[:, None]) == pm[None, :]).to(acc_t)
            dy = a[None, :] * tie + b[None, :]
            acc += tl.where(mask, xv * dy, 0.0)
            x_ptrs += x_step
        tl.store(dmc_ptr + (n * num_splits + split) * C + offs_c, tl.sum(acc, axis=1), mask=mask_c)
