"""Stage 2: gated cross-channel max and mean of ``x * Mc`` per pixel (the spatial gate's input)."""

import triton
import triton.language as tl

from cbam_triton.kernels._common import (
    accumulate_tile,
    count_at_max,
    last_arrival,
    load_x_kept,
    max_propagate_nan,
    reset_counter,
    tile_row,
)
from cbam_triton.kernels.mlp import MC_FC2, MC_LOAD, MC_NONE, channel_map_tile, load_hidden


@triton.jit
def combine_pixel_splits(base_ptr, offs_p, mask_p, P, num_splits,
                         SB: tl.constexpr, BLOCK_P: tl.constexpr, acc_t: tl.constexpr):
    """(max, sum) over the SPLIT partials ``(SPLIT, 2, P)`` at ``base_ptr`` (one sample) of one
    pixel block: ``[SB, BLOCK_P]`` tiles reduced along the split axis in split order; ``.cg``
    loads (the partials come from other programs)."""
    offs_s = tl.arange(0, SB)
    pmax = tl.full([BLOCK_P], float("-inf"), dtype=acc_t)
    psum = tl.zeros([BLOCK_P], dtype=acc_t)
    for s0 in range(0, num_splits, SB):
        ss = s0 + offs_s
        m = (ss < num_splits)[:, None] & mask_p[None, :]
        src = base_ptr + ss.to(tl.int64)[:, None] * 2 * P + offs_p[None, :]
        part = tl.load(src, mask=m, other=float("-inf"), cache_modifier=".cg")
        pmax = tl.maximum(pmax, max_propagate_nan(part, 0), propagate_nan=tl.PropagateNan.ALL)
        psum += tl.sum(tl.load(src + P, mask=m, other=0.0, cache_modifier=".cg"), axis=0)
    return pmax, psum


@triton.jit
def spatial_pool_kernel(
    x_ptr, mc_ptr, out_ptr, cnt_ptr, counter_ptr, final_ptr,
    mcw_ptr, mcb_ptr, vec_ptr, mc_out_ptr,
    C, P, K, c_per_split,
    stride_xn, stride_xc, stride_xp, s_mcw_c, s_mcw_k, aff_ptr,
    AFFINE: tl.constexpr,
    MC_MODE: tl.constexpr, POOLS: tl.constexpr, ACT: tl.constexpr, HAS_MCB: tl.constexpr, KB: tl.constexpr,
    Z_ONCE: tl.constexpr, FINALIZE: tl.constexpr, COUNT: tl.constexpr, HINTS: tl.constexpr, COMBINE: tl.constexpr,
    SB: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC_FP64: tl.constexpr, UNROLL: tl.constexpr,
    WIN: tl.constexpr = 0, WBLOCKS: tl.constexpr = False,
):
    # Reads x[n, c-range, p-block] once; x * Mc lives only in registers, never in memory. Writes
    # out[n, split, 0, p] = max_c and out[n, split, 1, p] = sum_c over the c-range (FINALIZE, i.e.
    # SPLIT == 1: the mean, so out is directly the (N, 2, H, W) map [max, mean]). Grid:
    # (N * cdiv(P, BLOCK_P), SPLIT; WBLOCKS: cdiv(P, OWN)); tile [BLOCK_C, BLOCK_P] walks the c-range.
    # Mc (MC_MODE): none, loaded from mc (N, C), or computed here per channel tile from the
    # MLP's last layer (kernels/mlp.py: W2 @ z from stage 1, or a one-layer MLP's column sums of
    # stage 1's layer-1 partials), so no program runs a whole sample's MLP: each reads the weight
    # (partial) columns of its own c-range (the launcher bounds c-range * K and keeps the pixel
    # blocks per sample few when they are large); the programs of pixel block 0 store Mc to mc_out
    # for stage 3.
    # COUNT (training forward): also cnt[n, split, p] = how many channels reach the max (int32).
    # Fused forward: HINTS loads x with evict_last (stage 3 reads it again from L2); COMBINE (SPLIT
    # > 1): the last of the SPLIT programs of a (n, p-block), found with one integer atomic on
    # counter[n, p-block], combines the partials as [SB, BLOCK_P] tiles in split order into
    # final[n] (N, 2, H, W). Deterministic; no PyTorch op runs between the stages.
    # AFFINE (the fused block tail): x is a residual block's pre-norm output y, each element
    # y * scale[c] + shift[c] as it is loaded (aff (2, C) from stage 1: one [2, BLOCK_C] load per
    # channel tile).
    # WIN (contiguous NCHW, channel rows not 16-byte aligned: 7², 14², odd maps; one pixel block
    # per sample, BLOCK_P >= H*W + 2 * (WIN - 1)): row c is read through the 16-byte-aligned window
    # around it (128-bit loads), its own elements kept. A row's pixel p then sits at column
    # p + off(c), off(c) = (its first element) % WIN, which repeats every WIN channels: the
    # accumulators of the rows of one class are reduced together at the end and each class's row is
    # shifted back by its off (tl.gather) before the classes are combined (_window_maps).
    # WBLOCKS (the window path on rows longer than one window, H*W + 2 * (WIN - 1) > 1024: 33² fp16
    # and larger odd maps): pixel blocks of OWN = BLOCK_P - 2 * (WIN - 1) pixels; block pb reads row c
    # through the aligned window around its pixels [pb * OWN, (pb + 1) * OWN), the same way.
    # Longest program: its x tiles, one Mc tile (a few weight tiles; AFFINE: + 1) per x tile, and
    # the combine's 2 * cdiv(SPLIT, SB) tiles.
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    pid_np = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    tl.static_assert(not WBLOCKS or WIN > 0, "pixel blocks of windows need a window")
    OWN: tl.constexpr = BLOCK_P - 2 * (WIN - 1) * WBLOCKS  # pixels a block owns (BLOCK_P but for WBLOCKS)
    num_pblocks = tl.cdiv(P, OWN)
    n = pid_np // num_pblocks
    pb = pid_np % num_pblocks

    offs_p = pb * OWN + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    if WBLOCKS:
        mask_p = mask_p & (tl.arange(0, BLOCK_P) < OWN)
    offs_c = tl.arange(0, BLOCK_C)
    c_start = split * c_per_split
    c_end = tl.minimum(c_start + c_per_split, C)

    if WBLOCKS:  # the aligned window around the block's pixels of each row (lane j: pixel pb * OWN + j - off)
        lanes = tl.arange(0, BLOCK_P)
        p0 = pb * OWN
        a = n.to(tl.int64) * stride_xn + (c_start + offs_c).to(tl.int64) * stride_xc + p0
        w0 = (a // WIN) * WIN
        lim = (((a + tl.minimum(OWN, P - p0) + WIN - 1) // WIN) * WIN - w0).to(tl.int32)
        ptrs = x_ptr + w0[:, None] + lanes[None, :]
        load_p = lanes[None, :] < lim[:, None]
    elif WIN > 0:  # each row's aligned window (its neighbours' lanes are accumulated too, but into
        # columns that _window_maps never reads: rows of one class share their window offset)
        a = n.to(tl.int64) * stride_xn + (c_start + offs_c).to(tl.int64) * stride_xc
        w0 = (a // WIN) * WIN
        lim = (((a + P + WIN - 1) // WIN) * WIN - w0).to(tl.int32)
        ptrs = x_ptr + w0[:, None] + offs_p[None, :]
        load_p = offs_p[None, :] < lim[:, None]
        lanes, p0 = offs_p, 0  # (one pixel block per sample: its lanes are its pixels)
    else:
        ptrs = (x_ptr + n.to(tl.int64) * stride_xn
                + (c_start + offs_c).to(tl.int64)[:, None] * stride_xc
                + offs_p.to(tl.int64)[None, :] * stride_xp)
        load_p = mask_p[None, :]
    step = tl.full([], BLOCK_C, tl.int64) * stride_xc  # int64: no overflow for huge strides
    acc_sum = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
    acc_max = tl.full([BLOCK_C, BLOCK_P], float("-inf"), dtype=acc_t)
    acc_cnt = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.int32)
    z = tl.zeros([KB], dtype=acc_t)
    if MC_MODE == MC_FC2 and Z_ONCE:
        z = load_hidden(n, K, vec_ptr, KB)
    # UNROLL == 2 (Mc loaded or absent): the next tile's x loads are issued with this one's, before
    # either is reduced (Triton does not pipeline loads that feed no tl.dot): twice the bytes in
    # flight; the tiles are reduced in the same order (the same result bit for bit)
    # (UNROLL == 4 where a program walks three tiles or more: four tiles)
    tl.static_assert(UNROLL == 1 or UNROLL == 2 or UNROLL == 4, "UNROLL is 1, 2 or 4")
    for c0 in range(c_start, c_end, BLOCK_C * UNROLL):
        cc = c0 + offs_c
        mask_cc = cc < c_end
        v = load_x_kept(ptrs, mask_cc[:, None] & load_p, HINTS)
        if UNROLL >= 2:
            cc2 = cc + BLOCK_C
            mask_cc2 = cc2 < c_end
            v2 = load_x_kept(ptrs + step, mask_cc2[:, None] & load_p, HINTS)
        if UNROLL == 4:
            cc3 = cc + 2 * BLOCK_C
            mask_cc3 = cc3 < c_end
            v3 = load_x_kept(ptrs + 2 * step, mask_cc3[:, None] & load_p, HINTS)
            cc4 = cc + 3 * BLOCK_C
            mask_cc4 = cc4 < c_end
            v4 = load_x_kept(ptrs + 3 * step, mask_cc4[:, None] & load_p, HINTS)
        acc_sum, acc_max, acc_cnt = _gated_tile(v, n, cc, mask_cc, load_p, pb, C, K, vec_ptr, mcw_ptr, mcb_ptr,
                                                s_mcw_c, s_mcw_k, z, mc_ptr, mc_out_ptr, aff_ptr, acc_sum, acc_max,
                                                acc_cnt, AFFINE, MC_MODE, POOLS, ACT, HAS_MCB, KB, Z_ONCE, COUNT,
                                                acc_t)
        if UNROLL >= 2:
            acc_sum, acc_max, acc_cnt = _gated_tile(v2, n, cc2, mask_cc2, load_p, pb, C, K, vec_ptr, mcw_ptr,
                                                    mcb_ptr, s_mcw_c, s_mcw_k, z, mc_ptr, mc_out_ptr, aff_ptr, acc_sum,
                                                    acc_max, acc_cnt, AFFINE, MC_MODE, POOLS, ACT, HAS_MCB, KB,
                                                    Z_ONCE, COUNT, acc_t)
        if UNROLL == 4:
            acc_sum, acc_max, acc_cnt = _gated_tile(v3, n, cc3, mask_cc3, load_p, pb, C, K, vec_ptr, mcw_ptr,
                                                    mcb_ptr, s_mcw_c, s_mcw_k, z, mc_ptr, mc_out_ptr, aff_ptr, acc_sum,
                                                    acc_max, acc_cnt, AFFINE, MC_MODE, POOLS, ACT, HAS_MCB, KB,
                                                    Z_ONCE, COUNT, acc_t)
            acc_sum, acc_max, acc_cnt = _gated_tile(v4, n, cc4, mask_cc4, load_p, pb, C, K, vec_ptr, mcw_ptr,
                                                    mcb_ptr, s_mcw_c, s_mcw_k, z, mc_ptr, mc_out_ptr, aff_ptr, acc_sum,
                                                    acc_max, acc_cnt, AFFINE, MC_MODE, POOLS, ACT, HAS_MCB, KB,
                                                    Z_ONCE, COUNT, acc_t)
        ptrs += step * UNROLL

    if WIN > 0:
        tl.static_assert(not COUNT and BLOCK_C % WIN == 0, "window path: no counts, whole classes of rows a tile")
        vmax, vsum = _window_maps(acc_max, acc_sum, n, c_start, stride_xn, stride_xc, lanes, p0, BLOCK_C, BLOCK_P,
                                  WIN)
    else:
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
            pmax, psum = combine_pixel_splits(out_ptr + (n * num_splits).to(tl.int64) * 2 * P, offs_p, mask_p, P,
                                              num_splits, SB, BLOCK_P, acc_t)
            dst = final_ptr + n.to(tl.int64) * 2 * P + offs_p
            tl.store(dst, pmax, mask=mask_p)
            tl.store(dst + P, psum / C, mask=mask_p)
            reset_counter(counter_ptr + pid_np)


@triton.jit
def _window_maps(acc_max, acc_sum, n, c_start, stride_xn, stride_xc, offs_p, p0,
                 BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, WIN: tl.constexpr):
    """(max, sum) over the channels per pixel from the window path's ``[BLOCK_C, BLOCK_P]``
    accumulators: the rows of channel ``c_start + q * WIN + r`` share their window offset off_r, so
    they are reduced together into a ``[WIN, BLOCK_P]`` tile, whose row r is read at columns
    ``p + off_r`` (tl.gather: a shift, once per program) before the WIN rows are combined. ``offs_p``:
    the block's pixels counted from its first, ``p0`` (0: one block per sample)."""
    r = tl.arange(0, WIN)
    off = ((n.to(tl.int64) * stride_xn + (c_start + r).to(tl.int64) * stride_xc + p0) % WIN).to(tl.int32)
    cols = tl.minimum(offs_p[None, :] + off[:, None], BLOCK_P - 1)
    mx = max_propagate_nan(tl.reshape(acc_max, [BLOCK_C // WIN, WIN, BLOCK_P]), 0)
    sm = tl.sum(tl.reshape(acc_sum, [BLOCK_C // WIN, WIN, BLOCK_P]), axis=0)
    return max_propagate_nan(tl.gather(mx, cols, 1), 0), tl.sum(tl.gather(sm, cols, 1), axis=0)


@triton.jit
def _gated_tile(v, n, cc, mask_cc, mask_p, pb, C, K, vec_ptr, mcw_ptr, mcb_ptr, s_mcw_c, s_mcw_k, z, mc_ptr,
                mc_out_ptr, aff_ptr, acc_sum, acc_max, acc_cnt, AFFINE: tl.constexpr,
                MC_MODE: tl.constexpr, POOLS: tl.constexpr, ACT: tl.constexpr, HAS_MCB: tl.constexpr,
                KB: tl.constexpr, Z_ONCE: tl.constexpr, COUNT: tl.constexpr, acc_t: tl.constexpr):
    """One loaded tile of channels ``cc`` times its Mc into the elementwise (sum, max, count at max)
    accumulators; Mc none, loaded, or computed from the MLP's last layer (stored to mc_out by the
    programs of pixel block 0). AFFINE: ``x * scale[c] + shift[c]`` first (one [2, len(cc)] load).
    ``mask_p``: the lanes of each row that hold its pixels (``[1, BLOCK_P]``, or ``[BLOCK_C, BLOCK_P]``
    on the window path)."""
    mask = mask_cc[:, None] & mask_p
    v = v.to(acc_t)
    if AFFINE:
        rows2 = tl.arange(0, 2)
        ss = tl.load(aff_ptr + rows2[:, None] * C + cc[None, :], mask=mask_cc[None, :], other=0.0)
        v = v * tile_row(ss, rows2, 0)[:, None] + tile_row(ss, rows2, 1)[:, None]
    if MC_MODE != MC_NONE:
        if MC_MODE == MC_LOAD:
            g = tl.load(mc_ptr + n.to(tl.int64) * C + cc, mask=mask_cc, other=0.0).to(acc_t)
        else:
            g = channel_map_tile(n, cc, mask_cc, C, K, vec_ptr, mcw_ptr, mcb_ptr, s_mcw_c, s_mcw_k, z,
                                 MC_MODE, POOLS, ACT, HAS_MCB, KB, Z_ONCE, acc_t)
            tl.store(mc_out_ptr + n.to(tl.int64) * C + cc, g, mask=mask_cc & (pb == 0))
        v = v * g[:, None]
    return accumulate_tile(tl.where(mask, v, 0.0), mask, acc_sum, acc_max, acc_cnt, COUNT)
