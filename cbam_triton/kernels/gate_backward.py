"""Backward of stage 3 (``out = x * Mc * Ms``): the gradients of the two small maps."""

import triton
import triton.language as tl

from cbam_triton.kernels._common import tile_ptrs, walk_program


@triton.jit
def gate_backward_kernel(
    g_ptr, x_ptr, mc_ptr, ms_ptr, dms_ptr, dmc_ptr,
    C, P, walk_per_split,
    stride_gn, stride_gc, stride_gp,
    stride_xn, stride_xc, stride_xp,
    HAS_MC: tl.constexpr, HAS_MS: tl.constexpr, WALK_C: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC_FP64: tl.constexpr,
):
    # Reads the output gradient g and x once each (2*|x| bytes) and the small maps mc (N*C) and
    # ms (N*P); writes only small fp32 (fp64) partials:
    #   d_ms[n, p] = sum_c g * (x * mc)        d_mc[n, c] = sum_p (g * ms) * x
    # (the reference's product order; x * mc is never stored). Tile [BLOCK_C, BLOCK_P], the long
    # axis on the unit stride. A program owns one long-axis block and walks the other axis over
    # its split range, so one reduction is complete per program and the other per tile:
    #   WALK_C (p has unit stride, NCHW): program (n, p-block), walks c;
    #       dms[n, split, p] = sum over the split's channels, dmc[n, p-block, c] = sum over the block;
    #   else (channels_last): program (n, c-block), walks p;
    #       dmc[n, split, c] = sum over the split's pixels, dms[n, c-block, p] = sum over the block.
    # Each workspace element is written by exactly one program; the launcher sums dim 1 in a fixed
    # order: deterministic, no atomics. Workspaces are N * (#long blocks or #splits) * (C or P).
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    if WALK_C:
        n, blk, num_blocks, offs_p, mask_p, c_start, c_end = walk_program(P, C, walk_per_split, BLOCK_P)
        offs_c = tl.arange(0, BLOCK_C)
        if HAS_MS:
            s = tl.load(ms_ptr + n * P + offs_p, mask=mask_p, other=0.0).to(acc_t)
        g_ptrs = tile_ptrs(g_ptr, n, c_start + offs_c, offs_p, stride_gn, stride_gc, stride_gp)
        x_ptrs = tile_ptrs(x_ptr, n, c_start + offs_c, offs_p, stride_xn, stride_xc, stride_xp)
        g_step = tl.full([], BLOCK_C, tl.int64) * stride_gc
        x_step = tl.full([], BLOCK_C, tl.int64) * stride_xc
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
        for c0 in range(c_start, c_end, BLOCK_C):
            cc = c0 + offs_c
            mask_c = cc < c_end
            mask = mask_c[:, None] & mask_p[None, :]
            gv = tl.load(g_ptrs, mask=mask, other=0.0).to(acc_t)
            xv = tl.load(x_ptrs, mask=mask, other=0.0).to(acc_t)
            if HAS_MC:
                m = tl.load(mc_ptr + n * C + cc, mask=mask_c, other=0.0).to(acc_t)
                y = xv * m[:, None]
                gs = gv
                if HAS_MS:
                    gs = gv * s[None, :]
                part = tl.sum(tl.where(mask, gs * xv, 0.0), axis=1)
                tl.store(dmc_ptr + (n * num_blocks + blk) * C + cc, part, mask=mask_c)
            else:
                y = xv
            if HAS_MS:
                acc += tl.where(mask, gv * y, 0.0)
            g_ptrs += g_step
            x_ptrs += x_step
        if HAS_MS:
            tl.store(dms_ptr + (n * num_splits + split) * P + offs_p, tl.sum(acc, axis=0), mask=mask_p)
    else:
        n, blk, num_blocks, offs_c, mask_c, p_start, p_end = walk_program(C, P, walk_per_split, BLOCK_C)
        offs_p = tl.arange(0, BLOCK_P)
        if HAS_MC:
            m = tl.load(mc_ptr + n * C + offs_c, mask=mask_c, other=0.0).to(acc_t)
        g_ptrs = tile_ptrs(g_ptr, n, offs_c, p_start + offs_p, stride_gn, stride_gc, stride_gp)
        x_ptrs = tile_ptrs(x_ptr, n, offs_c, p_start + offs_p, stride_xn, stride_xc, stride_xp)
        g_step = tl.full([], BLOCK_P, tl.int64) * stride_gp
        x_step = tl.full([], BLOCK_P, tl.int64) * stride_xp
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
        for p0 in range(p_start, p_end, BLOCK_P):
            pp = p0 + offs_p
            mask_p = pp < p_end
            mask = mask_c[:, None] & mask_p[None, :]
            gv = tl.load(g_ptrs, mask=mask, other=0.0).to(acc_t)
            xv = tl.load(x_ptrs, mask=mask, other=0.0).to(acc_t)
            if HAS_MS:
                s = tl.load(ms_ptr + n * P + pp, mask=mask_p, other=0.0).to(acc_t)
                if HAS_MC:
                    y = xv * m[:, None]
                else:
                    y = xv
                part = tl.sum(tl.where(mask, gv * y, 0.0), axis=0)
                tl.store(dms_ptr + (n * num_blocks + blk) * P + pp, part, mask=mask_p)
                gs = gv * s[None, :]
            else:
                gs = gv
            if HAS_MC:
                acc += tl.where(mask, gs * xv, 0.0)
            g_ptrs += g_step
            x_ptrs += x_step
        if HAS_MC:
            tl.store(dmc_ptr + (n * num_splits + split) * C + offs_c, tl.sum(acc, axis=1), mask=mask_c)
