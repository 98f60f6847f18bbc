"""Stage 1: fused global average + max pooling over H*W (the channel gate's input)."""

import triton
import triton.language as tl

from cbam_triton.kernels._common import accumulate_tile, count_at_max, load_x_kept, max_propagate_nan


@triton.jit
def pool_partials(x_ptr, n, offs_c, mask_c, p_start, p_end, stride_xn, stride_xc, stride_xp, scale, shift,
                  COUNT: tl.constexpr, HINTS: tl.constexpr, AFFINE: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC_FP64: tl.constexpr, UNROLL: tl.constexpr = 1,
                  WIN: tl.constexpr = 0):
    """Sum, max (and, with COUNT, the number of elements equal to the max) over p in
    ``[p_start, p_end)`` of ``x[n, offs_c, p]``: three ``[BLOCK_C]`` vectors. Elementwise
    accumulators over the walk, one cross-lane reduction at the end. ``HINTS``: the loads ask L2
    to keep x (``evict_last``), for the stages of the L2-resident schedule that read it again.
    ``UNROLL`` == 2: the next tile's loads are issued with this one's, before either is reduced
    (Triton does not pipeline loads that feed no ``tl.dot``): twice the bytes in flight; the tiles are
    accumulated in the same order, so the result is the same bit for bit (4 on the window path: four
    tiles). ``AFFINE`` (the fused block
    tail): each element is ``x * scale[c] + shift[c]`` as it is loaded (masked lanes stay 0).
    ``WIN`` > 0 (contiguous NCHW whose channel rows are not 16-byte aligned: 7², 14², odd maps; WIN =
    elements per 16 bytes): see :func:`_window_partials`."""
    if WIN > 0:
        tl.static_assert(not COUNT, "the window path has no tie counts (the training forward's)")
        return _window_partials(x_ptr, n, offs_c, mask_c, p_start, p_end, stride_xn, stride_xc, scale, shift,
                                HINTS, AFFINE, BLOCK_C, BLOCK_P, ACC_FP64, UNROLL, WIN)
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    offs_p = tl.arange(0, BLOCK_P)
    ptrs = (x_ptr + n.to(tl.int64) * stride_xn
            + offs_c.to(tl.int64)[:, None] * stride_xc
            + (p_start + offs_p).to(tl.int64)[None, :] * stride_xp)
    step = tl.full([], BLOCK_P, tl.int64) * stride_xp  # int64: no overflow for huge strides
    acc_sum = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
    acc_max = tl.full([BLOCK_C, BLOCK_P], float("-inf"), dtype=acc_t)
    acc_cnt = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.int32)
    for p0 in range(p_start, p_end, BLOCK_P * UNROLL):
        mask = mask_c[:, None] & ((p0 + offs_p) < p_end)[None, :]
        v = load_x_kept(ptrs, mask, HINTS)
        if UNROLL == 2:
            mask2 = mask_c[:, None] & ((p0 + BLOCK_P + offs_p) < p_end)[None, :]
            v2 = load_x_kept(ptrs + step, mask2, HINTS)
        acc_sum, acc_max, acc_cnt = accumulate_tile(_affine(v.to(acc_t), mask, scale, shift, AFFINE), mask, acc_sum,
                                               acc_max, acc_cnt, COUNT)
        if UNROLL == 2:
            acc_sum, acc_max, acc_cnt = accumulate_tile(_affine(v2.to(acc_t), mask2, scale, shift, AFFINE), mask2,
                                                   acc_sum, acc_max, acc_cnt, COUNT)
        ptrs += step * UNROLL
    vmax = max_propagate_nan(acc_max, 1)
    cnt = tl.zeros([BLOCK_C], dtype=tl.int32)
    if COUNT:
        cnt = count_at_max(acc_max, acc_cnt, vmax, 1)
    return tl.sum(acc_sum, axis=1), vmax, cnt


@triton.jit
def _window_partials(x_ptr, n, offs_c, mask_c, p_start, p_end, stride_xn, stride_xc, scale, shift,
                     HINTS: tl.constexpr, AFFINE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                     ACC_FP64: tl.constexpr, UNROLL: tl.constexpr, WIN: tl.constexpr):
    """:func:`pool_partials` (no COUNT) on rows that start anywhere: row c's range ``[a, b)`` of flat
    elements is walked through the 16-byte-aligned window ``[align_down(a), align_up(b))`` around it
    (WIN elements per 16 bytes), so every load is a 128-bit vector; the elements of the neighbouring
    rows that share its first and last 16 bytes are loaded too (from L1: DRAM traffic unchanged)
    and masked out. The window stays inside the sample (the launcher checks that samples are
    contiguous and a multiple of 16 bytes)."""
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    offs_p = tl.arange(0, BLOCK_P)
    a = n.to(tl.int64) * stride_xn + offs_c.to(tl.int64) * stride_xc + p_start
    w0 = (a // WIN) * WIN
    lo = (a - w0).to(tl.int32)                                     # the row's first element in the window
    hi = lo + (p_end - p_start)                                    # one past its last
    lim = (((a + (p_end - p_start) + WIN - 1) // WIN) * WIN - w0).to(tl.int32)  # window length: WIN-multiple
    ptrs = x_ptr + w0[:, None] + offs_p[None, :]
    acc_sum = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
    acc_max = tl.full([BLOCK_C, BLOCK_P], float("-inf"), dtype=acc_t)
    acc_cnt = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.int32)
    tl.static_assert(UNROLL == 1 or UNROLL == 2 or UNROLL == 4, "UNROLL is 1, 2 or 4")
    for j0 in range(0, p_end - p_start + 2 * WIN - 2, BLOCK_P * UNROLL):
        load, keep = _window_masks(offs_p, j0, mask_c, lo, hi, lim)
        v = load_x_kept(ptrs, load, HINTS)
        if UNROLL >= 2:
            load2, keep2 = _window_masks(offs_p, j0 + BLOCK_P, mask_c, lo, hi, lim)
            v2 = load_x_kept(ptrs + BLOCK_P, load2, HINTS)
        if UNROLL == 4:
            load3, keep3 = _window_masks(offs_p, j0 + 2 * BLOCK_P, mask_c, lo, hi, lim)
            v3 = load_x_kept(ptrs + 2 * BLOCK_P, load3, HINTS)
            load4, keep4 = _window_masks(offs_p, j0 + 3 * BLOCK_P, mask_c, lo, hi, lim)
            v4 = load_x_kept(ptrs + 3 * BLOCK_P, load4, HINTS)
        acc_sum, acc_max = _window_accumulate(v, keep, scale, shift, acc_sum, acc_max, acc_cnt, AFFINE, acc_t)
        if UNROLL >= 2:
            acc_sum, acc_max = _window_accumulate(v2, keep2, scale, shift, acc_sum, acc_max, acc_cnt, AFFINE, acc_t)
        if UNROLL == 4:
            acc_sum, acc_max = _window_accumulate(v3, keep3, scale, shift, acc_sum, acc_max, acc_cnt, AFFINE, acc_t)
            acc_sum, acc_max = _window_accumulate(v4, keep4, scale, shift, acc_sum, acc_max, acc_cnt, AFFINE, acc_t)
        ptrs += BLOCK_P * UNROLL
    return tl.sum(acc_sum, axis=1), max_propagate_nan(acc_max, 1), tl.zeros([BLOCK_C], dtype=tl.int32)


@triton.jit
def _window_masks(offs_p, j0, mask_c, lo, hi, lim):
    """(load, keep) masks of the window tile at lane offset ``j0``: the lanes inside the row's
    aligned window, and of those the row's own elements."""
    j = j0 + offs_p
    load = mask_c[:, None] & (offs_p[None, :] < (lim - j0)[:, None])
    keep = load & (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
    return load, keep


@triton.jit
def _window_accumulate(v, keep, scale, shift, acc_sum, acc_max, acc_cnt, AFFINE: tl.constexpr, acc_t: tl.constexpr):
    """Accumulate one window tile's kept elements (the neighbours' lanes as 0 / excluded)."""
    v = tl.where(keep, v.to(acc_t), 0.0)
    acc_sum, acc_max, _ = accumulate_tile(_affine(v, keep, scale, shift, AFFINE), keep, acc_sum, acc_max, acc_cnt,
                                          False)
    return acc_sum, acc_max


@triton.jit
def _affine(v, mask, scale, shift, AFFINE: tl.constexpr):
    """``v * scale[c] + shift[c]`` (masked lanes 0) with AFFINE, else v."""
    if AFFINE:
        v = tl.where(mask, v * scale[:, None] + shift[:, None], 0.0)
    return v


@triton.jit
def channel_pool_kernel(
    x_ptr, sum_ptr, max_ptr, cnt_ptr,
    C, P, p_per_split,
    stride_xn, stride_xc, stride_xp,
    COUNT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC_FP64: tl.constexpr,
):
    # Reads x[n, c-block, p-range] exactly once; writes sum and max over that p-range for each
    # (n, c) into the fp32 (fp64 for fp64 x) workspaces sum/max[n, split, c]: O(N*C*SPLIT) bytes.
    # Grid: (N * cdiv(C, BLOCK_C), SPLIT). Tile [BLOCK_C, BLOCK_P] walks the p-range; the launcher
    # makes the unit-stride axis the long one (BLOCK_P for NCHW, BLOCK_C for channels_last).
    # Partial results of the SPLIT programs of one (n, c) are combined afterwards in a fixed order:
    # deterministic, no atomics. COUNT (training forward): also cnt[n, split, c] = how many elements
    # equal the max (int32), which the backward needs to split the max's gradient among ties.
    pid_nc = tl.program_id(0)
    split = tl.program_id(1)
    num_cblocks = tl.cdiv(C, BLOCK_C)
    n = pid_nc // num_cblocks
    offs_c = (pid_nc % num_cblocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    p_start = split * p_per_split
    none = tl.zeros([BLOCK_C], dtype=tl.float32)
    vsum, vmax, cnt = pool_partials(x_ptr, n, offs_c, mask_c, p_start, tl.minimum(p_start + p_per_split, P),
                                    stride_xn, stride_xc, stride_xp, none, none, COUNT, False, False,
                                    BLOCK_C, BLOCK_P, ACC_FP64)
    out = (n * tl.num_programs(1) + split).to(tl.int64) * C + offs_c
    tl.store(sum_ptr + out, vsum, mask=mask_c)
    tl.store(max_ptr + out, vmax, mask=mask_c)
    if COUNT:
        tl.store(cnt_ptr + out, cnt, mask=mask_c)
