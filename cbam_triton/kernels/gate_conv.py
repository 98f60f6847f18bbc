"""Stage 3 of the fused forward: the spatial map (k x k conv + BatchNorm + sigmoid of the pooled
map) and the final gating ``out = x * Mc * Ms``, in one launch."""

import triton
import triton.language as tl

from cbam_triton.kernels._common import relu, sigmoid, tile_row

#: what the convolution reads (``SPATIAL_INPUT``); must match :data:`cbam_triton.fused_parts.SPATIAL_INPUTS`
INPUT_MAX_MEAN = tl.constexpr(0)   # 2 channels [max, mean]
INPUT_MEAN_MAX = tl.constexpr(1)   # 2 channels [mean, max]
INPUT_LIGHT = tl.constexpr(2)      # 1 channel 0.5 * mean + 0.5 * max


@triton.jit
def _taps(w0, w1, vmax, vmean, SPATIAL_INPUT: tl.constexpr):
    """One tap's contribution: weights times the map's [max, mean] (or its light mix)."""
    if SPATIAL_INPUT == INPUT_LIGHT:
        return w0 * (0.5 * vmean + 0.5 * vmax)
    if SPATIAL_INPUT == INPUT_MAX_MEAN:
        return w0 * vmax + w1 * vmean
    return w0 * vmean + w1 * vmax


@triton.jit
def spatial_logits(pooled_ptr, n, offs_p, mask_p, P, H, W, cw_ptr, s_cw_c, s_cw_h, s_cw_w,
                   SPATIAL_INPUT: tl.constexpr, KSIZE: tl.constexpr, TAPS: tl.constexpr, KP: tl.constexpr,
                   acc_t: tl.constexpr):
    """The k x k convolution (zero padding k // 2, no bias) of the (N, 2, H, W) [max, mean] map at
    the pixels ``offs_p`` of sample n: a ``[BLOCK_P]`` vector. The map (8 bytes a pixel) and the
    weights are tiny and hit in L1/L2. Padding taps contribute nothing, as in PyTorch's
    convolutions (a NaN/inf weight times the zero padding would otherwise give NaN). The (1, Cin, k, k)
    weight is read through its strides (``s_cw_*``), in place: a channels_last weight is never copied,
    so an in-place edit of it (even through ``.data``) is what the next call reads.

    ``TAPS`` > 0 (short pixel blocks): all k*k taps at once as a ``[TAPS, BLOCK_P]`` tile (TAPS =
    next power of two >= k*k), 4 loads. ``TAPS`` == 0 (long pixel blocks): the k rows unrolled
    (``tl.static_range``: no loop-carried wait between rows), each row's k taps a ``[KP, BLOCK_P]``
    tile per map channel (KP = next power of two >= k; the launcher keeps 2 * KP * BLOCK_P <= 2048),
    the weights one ``[KP, KP]`` tile per input channel, its rows picked in registers: 2k + 2
    independent loads. (One [2, KP, BLOCK_P] tile per row would halve the loads, but triton 3.6
    then lost the 128-bit x loads and went to 215 registers.)"""
    hh = offs_p // W
    ww = offs_p % W
    base = pooled_ptr + n * 2 * P
    if TAPS > 0:
        acc = _logits_all_taps(base, hh, ww, mask_p, P, H, W, cw_ptr, s_cw_c, s_cw_h, s_cw_w,
                               SPATIAL_INPUT, KSIZE, TAPS, acc_t)
    else:
        acc = _logits_rows(base, hh, ww, mask_p, P, H, W, cw_ptr, s_cw_c, s_cw_h, s_cw_w,
                           SPATIAL_INPUT, KSIZE, KP, acc_t)
    return acc


@triton.jit
def _logits_all_taps(base, hh, ww, mask_p, P, H, W, cw_ptr, s_cw_c, s_cw_h, s_cw_w,
                     SPATIAL_INPUT: tl.constexpr, KSIZE: tl.constexpr, TAPS: tl.constexpr, acc_t: tl.constexpr):
    KK: tl.constexpr = KSIZE * KSIZE
    t = tl.arange(0, TAPS)
    valid_t = t < KK
    y = hh[None, :] + (t // KSIZE - KSIZE // 2)[:, None]
    x = ww[None, :] + (t % KSIZE - KSIZE // 2)[:, None]
    ok = valid_t[:, None] & mask_p[None, :] & (y >= 0) & (y < H) & (x >= 0) & (x < W)
    q = y * W + x
    vmax = tl.load(base + q, mask=ok, other=0.0)
    vmean = tl.load(base + P + q, mask=ok, other=0.0)
    w_offs = (t // KSIZE) * s_cw_h + (t % KSIZE) * s_cw_w
    w0 = tl.load(cw_ptr + w_offs, mask=valid_t, other=0.0).to(acc_t)
    w1 = w0
    if SPATIAL_INPUT != INPUT_LIGHT:
        w1 = tl.load(cw_ptr + s_cw_c + w_offs, mask=valid_t, other=0.0).to(acc_t)
    tap = _taps(w0[:, None], w1[:, None], vmax, vmean, SPATIAL_INPUT)
    return tl.sum(tl.where(ok, tap, 0.0), axis=0)


@triton.jit
def _logits_rows(base, hh, ww, mask_p, P, H, W, cw_ptr, s_cw_c, s_cw_h, s_cw_w,
                 SPATIAL_INPUT: tl.constexpr, KSIZE: tl.constexpr, KP: tl.constexpr, acc_t: tl.constexpr):
    # the weights as one [KP, KP] tile per input channel (row, column); row i picked in registers
    rows = tl.arange(0, KP)
    j = tl.arange(0, KP)
    wmask = (rows < KSIZE)[:, None] & (j < KSIZE)[None, :]
    w_offs = rows[:, None] * s_cw_h + j[None, :] * s_cw_w
    wtile0 = tl.load(cw_ptr + w_offs, mask=wmask, other=0.0).to(acc_t)
    wtile1 = wtile0
    if SPATIAL_INPUT != INPUT_LIGHT:
        wtile1 = tl.load(cw_ptr + s_cw_c + w_offs, mask=wmask, other=0.0).to(acc_t)
    x = ww[None, :] + (j - KSIZE // 2)[:, None]
    ok_x = (j < KSIZE)[:, None] & mask_p[None, :] & (x >= 0) & (x < W)
    acc = tl.zeros(hh.shape, dtype=acc_t)
    if KP * hh.shape[0] > 1024:  # long pixel blocks (the window path's whole rows): a rolled loop, or the
        # unrolled rows' loads, all issued first, would hold k [KP, BLOCK_P] tiles (sm_90: 213 registers at 256)
        for i in range(KSIZE):
            acc += _logits_row(i, base, hh, x, ok_x, rows, wtile0, wtile1, P, H, W, SPATIAL_INPUT, KSIZE)
    else:
        for i in tl.static_range(KSIZE):
            acc += _logits_row(i, base, hh, x, ok_x, rows, wtile0, wtile1, P, H, W, SPATIAL_INPUT, KSIZE)
    return acc


@triton.jit
def _logits_row(i, base, hh, x, ok_x, rows, wtile0, wtile1, P, H, W, SPATIAL_INPUT: tl.constexpr,
                KSIZE: tl.constexpr):
    """Row i of the k x k taps at every pixel: a ``[KP, BLOCK_P]`` tile per map channel."""
    y = hh + (i - KSIZE // 2)
    ok = ok_x & ((y >= 0) & (y < H))[None, :]
    q = y[None, :] * W + x
    vmax = tl.load(base + q, mask=ok, other=0.0)
    vmean = tl.load(base + P + q, mask=ok, other=0.0)
    w0 = tl.sum(tl.where(rows[:, None] == i, wtile0, 0.0), axis=0)
    w1 = tl.sum(tl.where(rows[:, None] == i, wtile1, 0.0), axis=0)
    return tl.sum(tl.where(ok, _taps(w0[:, None], w1[:, None], vmax, vmean, SPATIAL_INPUT), 0.0), axis=0)


@triton.jit
def gate_conv_kernel(
    x_ptr, mc_ptr, pooled_ptr, out_ptr,
    cw_ptr, cb_ptr, bn_mean_ptr, bn_var_ptr, bn_w_ptr, bn_b_ptr, bn_eps,
    C, P, H, W, c_per_split, s_cw_c, s_cw_h, s_cw_w,
    stride_xn, stride_xc, stride_xp,
    stride_on, stride_oc, stride_op,
    res_ptr, stride_rn, stride_rc, stride_rp, aff_ptr,
    AFFINE: tl.constexpr, RESIDUAL: tl.constexpr, TAIL_ACT: tl.constexpr,
    HAS_MC: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_BN: tl.constexpr, HAS_BN_AFFINE: tl.constexpr,
    SPATIAL_INPUT: tl.constexpr, KSIZE: tl.constexpr, TAPS: tl.constexpr, KP: tl.constexpr, HINTS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC_FP64: tl.constexpr, UNROLL: tl.constexpr,
    WIN: tl.constexpr = 0, WBLOCKS: tl.constexpr = False,
):
    # Grid (N * cdiv(P, BLOCK_P), SPLIT; WBLOCKS: cdiv(P, OWN)), the walk of stage 2: a program owns a block of BLOCK_P
    # pixels of sample n. It first computes Ms for them from the small (N, 2, H, W) pooled map
    # (conv + bias + eval-mode BatchNorm + sigmoid, in registers: Ms never exists in memory), then
    # walks its c-range in [BLOCK_C, BLOCK_P] tiles: reads each element of x once, multiplies by
    # mc[n, c] and Ms, writes each element of out once (x's dtype, out's strides): 2*|x| bytes.
    # The conv is recomputed by the SPLIT programs of a pixel block (k*k*2 FMAs a pixel, from L1/L2),
    # a small cost next to C / SPLIT gated elements a pixel. mc (N, C) was stored by stage 2.
    # Longest program: <= 2k + 2 independent loads of the map and the conv weights (see
    # spatial_logits), 5 scalars, then one mc tile per x tile of its c-range (WIN: two [UNROLL,
    # BLOCK_C] mc tiles per loop turn, or with the block tail's affine one [8, UNROLL, BLOCK_C] tile;
    # the launcher bounds the tiles, or the turns). HINTS (last
    # stage of the L2-resident schedule): x loads evict_first and output stores .cs, so they don't
    # evict the next chunk.
    # The fused block tail: AFFINE (x is a residual block's pre-norm output y, gated as
    # (y * scale[c] + shift[c]) * Mc * Ms; Mc and stage 1's (scale, shift) come as one [4, BLOCK_C]
    # tile load per x tile, as Mc alone does), RESIDUAL (res[n, c, p]: y's shape and dtype in its
    # own strides, read once per element next to the x tile: streamed data, added after the
    # gating), TAIL_ACT (1: ReLU, NaN kept; 2: SiLU); all in fp32 (fp64) registers, stored once.
    # WIN (contiguous NCHW, channel rows not 16-byte aligned, one pixel block per sample; out, and the
    # block tail's residual, laid out as x): the 16-byte chunks of a sample are shared out among its
    # channel rows, row c owning those that start inside it (the last one may run into channel c + 1),
    # so that every load and store is a whole 128-bit chunk (_gate_windows). WBLOCKS (rows longer than
    # one window: 33² and larger odd maps): pixel blocks of OWN = BLOCK_P - (WIN - 1) pixels, row c of
    # block pb owning the chunks that start inside its pixels [pb * OWN, (pb + 1) * OWN); Ms is
    # computed at lane j's pixel pb * OWN + j, which near a row's end (its last block, or the one before
    # where the last holds fewer than WIN - 1 pixels) may wrap to the next channel's first pixels.
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    pid_np = tl.program_id(0)
    split = tl.program_id(1)
    OWN: tl.constexpr = BLOCK_P - (WIN - 1) * WBLOCKS  # pixels a block owns (BLOCK_P but for WBLOCKS)
    num_pblocks = tl.cdiv(P, OWN)
    n = (pid_np // num_pblocks).to(tl.int64)
    p0 = (pid_np % num_pblocks) * OWN
    offs_p = p0 + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P

    p_ms, mask_ms = offs_p, mask_p
    if WBLOCKS:  # Ms at every lane's pixel (past the map's end: the next channel's first pixels)
        p_ms = tl.where(mask_p, offs_p, offs_p - P)
        mask_ms = p_ms < P
    logit = spatial_logits(pooled_ptr, n, p_ms, mask_ms, P, H, W, cw_ptr, s_cw_c, s_cw_h, s_cw_w,
                           SPATIAL_INPUT, KSIZE, TAPS, KP, acc_t)
    if HAS_CONV_BIAS:
        logit += tl.load(cb_ptr).to(acc_t)
    if HAS_BN:  # eval mode: (y - running_mean) / sqrt(running_var + eps) * weight + bias
        # eps rounded to fp32 as a Triton launch passes a Python float (AOTInductor passes it as fp64)
        var_eps = tl.load(bn_var_ptr).to(acc_t) + tl.cast(tl.cast(bn_eps, tl.float32), acc_t)
        if ACC_FP64:
            inv_std = 1.0 / tl.sqrt(var_eps)  # fp64 sqrt is IEEE-rounded
        else:
            inv_std = 1.0 / tl.sqrt_rn(var_eps)  # IEEE-rounded, not sqrt.approx
        logit = (logit - tl.load(bn_mean_ptr).to(acc_t)) * inv_std
        if HAS_BN_AFFINE:
            logit = logit * tl.load(bn_w_ptr).to(acc_t) + tl.load(bn_b_ptr).to(acc_t)
    ms = sigmoid(logit)

    offs_c = tl.arange(0, BLOCK_C)
    c_start = split * c_per_split
    c_end = tl.minimum(c_start + c_per_split, C)
    if WBLOCKS:
        tl.static_assert(BLOCK_C % WIN == 0 and WIN > 0, "a channel tile holds whole classes of rows")
        _gate_windows(x_ptr, mc_ptr, out_ptr, res_ptr, aff_ptr, ms, n, C, P, c_start, c_end, stride_xn, stride_xc,
                      tl.arange(0, BLOCK_P), p0, tl.minimum(OWN, P - p0), AFFINE, RESIDUAL, TAIL_ACT, HAS_MC, HINTS,
                      BLOCK_C, BLOCK_P, UNROLL, WIN, True, acc_t)
    elif WIN > 0:
        tl.static_assert(BLOCK_C % WIN == 0, "a channel tile holds whole classes of rows")
        _gate_windows(x_ptr, mc_ptr, out_ptr, res_ptr, aff_ptr, ms, n, C, P, c_start, c_end, stride_xn, stride_xc,
                      offs_p, 0, P, AFFINE, RESIDUAL, TAIL_ACT, HAS_MC, HINTS, BLOCK_C, BLOCK_P, UNROLL, WIN, False,
                      acc_t)
    else:
        _gate_rows(x_ptr, mc_ptr, out_ptr, res_ptr, aff_ptr, ms, n, C, offs_c, offs_p, mask_p, c_start, c_end,
                   stride_xn, stride_xc, stride_xp, stride_on, stride_oc, stride_op, stride_rn, stride_rc, stride_rp,
                   AFFINE, RESIDUAL, TAIL_ACT, HAS_MC, HINTS, BLOCK_C, UNROLL, acc_t)


@triton.jit
def _gate_rows(x_ptr, mc_ptr, out_ptr, res_ptr, aff_ptr, ms, n, C, offs_c, offs_p, mask_p, c_start, c_end,
               stride_xn, stride_xc, stride_xp, stride_on, stride_oc, stride_op, stride_rn, stride_rc, stride_rp,
               AFFINE: tl.constexpr, RESIDUAL: tl.constexpr, TAIL_ACT: tl.constexpr, HAS_MC: tl.constexpr,
               HINTS: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr, acc_t: tl.constexpr):
    """The gating walk of a pixel block over channels ``[c_start, c_end)`` in ``[BLOCK_C, BLOCK_P]``
    tiles (x, out and the residual in their own strides)."""
    x_ptrs = (x_ptr + n * stride_xn + (c_start + offs_c).to(tl.int64)[:, None] * stride_xc
              + offs_p.to(tl.int64)[None, :] * stride_xp)
    o_ptrs = (out_ptr + n * stride_on + (c_start + offs_c).to(tl.int64)[:, None] * stride_oc
              + offs_p.to(tl.int64)[None, :] * stride_op)
    r_ptrs = x_ptrs
    r_step = tl.full([], BLOCK_C, tl.int64) * stride_xc
    if RESIDUAL:
        r_ptrs = (res_ptr + n * stride_rn + (c_start + offs_c).to(tl.int64)[:, None] * stride_rc
                  + offs_p.to(tl.int64)[None, :] * stride_rp)
        r_step = tl.full([], BLOCK_C, tl.int64) * stride_rc
    x_step = tl.full([], BLOCK_C, tl.int64) * stride_xc
    o_step = tl.full([], BLOCK_C, tl.int64) * stride_oc
    # UNROLL == 2: the next tile's x loads are issued with this one's, before either is used (Triton
    # does not pipeline loads that feed no tl.dot): twice the bytes in flight per program
    tl.static_assert(UNROLL == 1 or UNROLL == 2, "the row path unrolls two tiles at most")
    for c0 in range(c_start, c_end, BLOCK_C * UNROLL):
        mask_c = (c0 + offs_c) < c_end
        v = _load_x(x_ptrs, mask_c[:, None] & mask_p[None, :], HINTS)
        r = v
        if RESIDUAL:
            r = _load_x(r_ptrs, mask_c[:, None] & mask_p[None, :], HINTS)
        if UNROLL == 2:
            mask_c2 = (c0 + BLOCK_C + offs_c) < c_end
            v2 = _load_x(x_ptrs + x_step, mask_c2[:, None] & mask_p[None, :], HINTS)
            r2 = v2
            if RESIDUAL:
                r2 = _load_x(r_ptrs + r_step, mask_c2[:, None] & mask_p[None, :], HINTS)
        _gate_tile(v, r, c0, offs_c, mask_c, mask_p, ms, mc_ptr, aff_ptr, n, C, o_ptrs, out_ptr, HAS_MC, HINTS,
                   AFFINE, RESIDUAL, TAIL_ACT, acc_t)
        if UNROLL == 2:
            _gate_tile(v2, r2, c0 + BLOCK_C, offs_c, mask_c2, mask_p, ms, mc_ptr, aff_ptr, n, C, o_ptrs + o_step,
                       out_ptr, HAS_MC, HINTS, AFFINE, RESIDUAL, TAIL_ACT, acc_t)
        x_ptrs += x_step * UNROLL
        o_ptrs += o_step * UNROLL
        r_ptrs += r_step * UNROLL


@triton.jit
def _gate_windows(x_ptr, mc_ptr, out_ptr, res_ptr, aff_ptr, ms, n, C, P, c_start, c_end, stride_xn, stride_xc,
                  offs_p, p0, length, AFFINE: tl.constexpr, RESIDUAL: tl.constexpr, TAIL_ACT: tl.constexpr,
                  HAS_MC: tl.constexpr, HINTS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                  UNROLL: tl.constexpr, WIN: tl.constexpr, WBLOCKS: tl.constexpr, acc_t: tl.constexpr):
    """The gating walk on the window path (x and out contiguous NCHW alike, H*W >= WIN): row c owns
    the flat elements ``[st(c), st(c + 1))``, st(c) = its first element rounded up to WIN (16 bytes),
    so a sample's 16-byte chunks are each loaded and stored once, whole (128-bit). An owned element
    at column j of row c is pixel ``j + sh(c)`` of channel c, or, past the row's end, pixel
    ``j + sh(c) - H*W`` of channel c + 1 (sh = st - first element < WIN <= H*W: at most one such
    wrap). sh repeats every WIN channels, so the per-lane Ms and "wrapped" tables are built once per
    program for the WIN classes (tl.gather from the program's Ms) and broadcast to the tile. Mc of a
    turn's UNROLL tiles, and of each row's next channel, is loaded as two [UNROLL, BLOCK_C] tiles a
    turn, each tile's row picked in registers (loads a program makes that are not x: two a turn).
    WBLOCKS (one of several pixel blocks of a row, ``offs_p`` its lanes): the same from the block's
    first pixel ``p0`` on, over ``length`` pixels; ``ms`` holds lane j's pixel ``p0 + j`` (wrapped).
    The block tail: AFFINE (Mc, scale and shift of each row's channel and of the next one come as one
    ``[8, UNROLL, BLOCK_C]`` load a turn), RESIDUAL (laid out as x: its chunks are x's), TAIL_ACT."""
    offs_c = tl.arange(0, BLOCK_C)
    a = n.to(tl.int64) * stride_xn + (c_start + offs_c).to(tl.int64) * stride_xc + p0
    st = ((a + WIN - 1) // WIN) * WIN
    own = (((a + length + WIN - 1) // WIN) * WIN - st).to(tl.int32)
    own_p = offs_p[None, :] < own[:, None]
    r = tl.arange(0, WIN)
    a_r = n.to(tl.int64) * stride_xn + (c_start + r).to(tl.int64) * stride_xc + p0
    q = offs_p[None, :] + ((WIN - a_r % WIN) % WIN).to(tl.int32)[:, None]
    if WBLOCKS:
        wrap_r = q + p0 >= P
        q = tl.minimum(q, BLOCK_P - 1)
    else:
        wrap_r = q >= P
        q = tl.minimum(tl.where(wrap_r, q - P, q), BLOCK_P - 1)
    ms_r = tl.gather(tl.broadcast_to(ms[None, :], [WIN, BLOCK_P]), q, 1)
    ms_rows = tl.reshape(tl.broadcast_to(ms_r[None, :, :], [BLOCK_C // WIN, WIN, BLOCK_P]), [BLOCK_C, BLOCK_P])
    wrap = tl.reshape(tl.broadcast_to(wrap_r[None, :, :], [BLOCK_C // WIN, WIN, BLOCK_P]), [BLOCK_C, BLOCK_P])
    x_ptrs = x_ptr + st[:, None] + offs_p[None, :]
    o_ptrs = out_ptr + st[:, None] + offs_p[None, :]
    r_ptrs = x_ptrs
    if RESIDUAL:  # laid out as x (the launcher's condition): the same offsets
        r_ptrs = res_ptr + st[:, None] + offs_p[None, :]
    step = tl.full([], BLOCK_C, tl.int64) * stride_xc
    tl.static_assert(UNROLL == 1 or UNROLL == 2 or UNROLL == 4, "UNROLL is 1, 2 or 4")
    tl.static_assert(not AFFINE or HAS_MC, "the block tail's affine comes with Mc")
    turn = tl.arange(0, UNROLL)
    kk = tl.arange(0, 8)
    for c0 in range(c_start, c_end, BLOCK_C * UNROLL):
        # Mc of the turn's UNROLL tiles (and of each row's next channel, for its wrapped lanes): two
        # [UNROLL, BLOCK_C] loads a turn, each tile's row picked in registers (AFFINE: rows 0-2 Mc, scale,
        # shift of the row's channel, 3-5 of the next one, one [8, UNROLL, BLOCK_C] load)
        gs = tl.zeros([UNROLL, BLOCK_C], dtype=acc_t)
        gs1 = gs
        t6 = tl.zeros([8, UNROLL, BLOCK_C], dtype=acc_t)
        if AFFINE:
            ct3 = (c0 + turn[None, :, None] * BLOCK_C + offs_c[None, None, :]) + (kk >= 3).to(tl.int32)[:, None, None]
            what = (kk % 3)[:, None, None]
            ptrs3 = tl.where(what == 0, mc_ptr + n.to(tl.int64) * C + ct3, aff_ptr + (what - 1) * C + ct3)
            t6 = tl.load(ptrs3, mask=(kk < 6)[:, None, None] & (ct3 < C), other=0.0).to(acc_t)
        elif HAS_MC:
            ct = c0 + turn[:, None] * BLOCK_C + offs_c[None, :]
            row = mc_ptr + n.to(tl.int64) * C + ct
            gs = tl.load(row, mask=ct < C, other=0.0).to(acc_t)
            gs1 = tl.load(row + 1, mask=ct + 1 < C, other=0.0).to(acc_t)
        cc = c0 + offs_c
        m = (cc < c_end)[:, None] & own_p
        v = _load_x(x_ptrs, m, HINTS)
        rv = v
        if RESIDUAL:
            rv = _load_x(r_ptrs, m, HINTS)
        if UNROLL >= 2:
            cc2 = cc + BLOCK_C
            m2 = (cc2 < c_end)[:, None] & own_p
            v2 = _load_x(x_ptrs + step, m2, HINTS)
            rv2 = v2
            if RESIDUAL:
                rv2 = _load_x(r_ptrs + step, m2, HINTS)
        if UNROLL == 4:  # four tiles in flight
            cc3 = cc + 2 * BLOCK_C
            m3 = (cc3 < c_end)[:, None] & own_p
            v3 = _load_x(x_ptrs + 2 * step, m3, HINTS)
            cc4 = cc + 3 * BLOCK_C
            m4 = (cc4 < c_end)[:, None] & own_p
            v4 = _load_x(x_ptrs + 3 * step, m4, HINTS)
            rv3 = v3
            rv4 = v4
            if RESIDUAL:
                rv3 = _load_x(r_ptrs + 2 * step, m3, HINTS)
                rv4 = _load_x(r_ptrs + 3 * step, m4, HINTS)
        _gate_window_tile(v, rv, 0, turn, kk, gs, gs1, t6, m, wrap, ms_rows, o_ptrs, out_ptr, AFFINE, RESIDUAL,
                          TAIL_ACT, HAS_MC, HINTS, acc_t)
        if UNROLL >= 2:
            _gate_window_tile(v2, rv2, 1, turn, kk, gs, gs1, t6, m2, wrap, ms_rows, o_ptrs + step, out_ptr, AFFINE,
                              RESIDUAL, TAIL_ACT, HAS_MC, HINTS, acc_t)
        if UNROLL == 4:
            _gate_window_tile(v3, rv3, 2, turn, kk, gs, gs1, t6, m3, wrap, ms_rows, o_ptrs + 2 * step, out_ptr, AFFINE,
                              RESIDUAL, TAIL_ACT, HAS_MC, HINTS, acc_t)
            _gate_window_tile(v4, rv4, 3, turn, kk, gs, gs1, t6, m4, wrap, ms_rows, o_ptrs + 3 * step, out_ptr, AFFINE,
                              RESIDUAL, TAIL_ACT, HAS_MC, HINTS, acc_t)
        x_ptrs += step * UNROLL
        o_ptrs += step * UNROLL
        if RESIDUAL:
            r_ptrs += step * UNROLL


@triton.jit
def _gate_window_tile(v, r, k: tl.constexpr, turn, kk, gs, gs1, t6, m, wrap, ms_rows, o_ptrs, out_ptr,
                      AFFINE: tl.constexpr, RESIDUAL: tl.constexpr, TAIL_ACT: tl.constexpr, HAS_MC: tl.constexpr,
                      HINTS: tl.constexpr, acc_t: tl.constexpr):
    """``out = x * Mc * Ms`` of the turn's k-th window-path tile: Mc of the row's channel (row k of the
    turn's ``gs``), or of the next one (``gs1``) on its wrapped lanes. The block tail: ``act((x * scale +
    shift) * Mc * Ms + r)``, its per-channel vectors picked from the turn's ``t6`` the same way."""
    v = v.to(acc_t)
    if AFFINE:
        sel = tl.sum(tl.where(turn[None, :, None] == k, t6, 0.0), axis=1)  # [8, BLOCK_C]: this tile's rows
        sc = tl.where(wrap, tile_row(sel, kk, 4)[:, None], tile_row(sel, kk, 1)[:, None])
        sh = tl.where(wrap, tile_row(sel, kk, 5)[:, None], tile_row(sel, kk, 2)[:, None])
        g = tl.where(wrap, tile_row(sel, kk, 3)[:, None], tile_row(sel, kk, 0)[:, None])
        v = (v * sc + sh) * g
    elif HAS_MC:
        g = tl.sum(tl.where(turn[:, None] == k, gs, 0.0), axis=0)
        g1 = tl.sum(tl.where(turn[:, None] == k, gs1, 0.0), axis=0)
        v = v * tl.where(wrap, g1[:, None], g[:, None])
    _finish(v * ms_rows, r, o_ptrs, out_ptr, m, RESIDUAL, TAIL_ACT, HINTS, acc_t)


@triton.jit
def _load_x(ptrs, mask, HINTS: tl.constexpr):
    """A tile of x in its own dtype (HINTS: evict_first, its last read)."""
    if HINTS:
        v = tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_first")
    else:
        v = tl.load(ptrs, mask=mask, other=0.0)
    return v


@triton.jit
def _gate_tile(v, r, c0, offs_c, mask_c, mask_p, ms, mc_ptr, aff_ptr, n, C, o_ptrs, out_ptr,
               HAS_MC: tl.constexpr, HINTS: tl.constexpr, AFFINE: tl.constexpr, RESIDUAL: tl.constexpr,
               TAIL_ACT: tl.constexpr, acc_t: tl.constexpr):
    """``out = x * Mc * Ms`` of one loaded tile (the block tail: ``act((y * scale + shift) * Mc * Ms +
    r)``), stored in out's dtype (HINTS: ``.cs`` streaming stores)."""
    mask = mask_c[:, None] & mask_p[None, :]
    v = v.to(acc_t)
    if AFFINE:  # rows [Mc[n, c], scale[c], shift[c], -] of the channel tile in one load
        rows = tl.arange(0, 4)
        cc = c0 + offs_c
        ptrs = tl.where(rows[:, None] == 0, mc_ptr + n * C + cc[None, :], aff_ptr + (rows[:, None] - 1) * C
                        + cc[None, :])
        t = tl.load(ptrs, mask=(rows < 3)[:, None] & mask_c[None, :], other=0.0).to(acc_t)
        v = (v * tile_row(t, rows, 1)[:, None] + tile_row(t, rows, 2)[:, None]) * tile_row(t, rows, 0)[:, None]
    elif HAS_MC:
        g = tl.load(mc_ptr + n * C + c0 + offs_c, mask=mask_c, other=0.0).to(acc_t)
        v = v * g[:, None]
    _finish(v * ms[None, :], r, o_ptrs, out_ptr, mask, RESIDUAL, TAIL_ACT, HINTS, acc_t)


@triton.jit
def _finish(v, r, o_ptrs, out_ptr, mask, RESIDUAL: tl.constexpr, TAIL_ACT: tl.constexpr, HINTS: tl.constexpr,
            acc_t: tl.constexpr):
    """The gated tile ``v`` (fp32/fp64) plus the block tail's residual ``r`` and its activation,
    stored once in out's dtype (HINTS: ``.cs`` streaming stores)."""
    if RESIDUAL:
        v = v + r.to(acc_t)
    if TAIL_ACT == 1:
        v = relu(v)
    elif TAIL_ACT == 2:  # SiLU as torch computes it: v / (1 + exp(-v)) (NaN at -inf, like torch)
        v = v / (1.0 + tl.exp(-v))
    if HINTS:
        tl.store(o_ptrs, v.to(out_ptr.dtype.element_ty), mask=mask, cache_modifier=".cs")
    else:
        tl.store(o_ptrs, v.to(out_ptr.dtype.element_ty), mask=mask)
