"""The channel MLP of the fused forward, spread over the programs that stream x.

``Mc = sigmoid(sum over the pools of fc2(act(fc1(pool))))``. No program computes a whole sample's
MLP (a serial tail of C * hidden dependent loads); instead:

* stage 1, per channel block (once its pooled values are final): the layer-1 partial
  ``W1[:, block] @ pool[block]`` (:func:`hidden_partial`); the last channel block of a sample sums
  those small ``(blocks, hidden)`` partials as a few tile loads and applies bias and activation
  (:func:`hidden_combine`): ``z[n]``. Where blocks * hidden is large (a wide hidden layer), the sum
  has two levels: the last block of each group of about sqrt(blocks) blocks sums its group's
  partials, the last group sums the group sums;
* stage 2 (and the lone channel gate), per channel tile it streams: ``Mc[tile] = sigmoid(W2[tile] @
  z + pools * b2[tile])`` (:func:`channel_map_tile`).

A one-layer MLP (fc1: C -> C, e.g. ultralytics' CBAM) has no small hidden vector to gather: its
layer-1 partials ``(blocks, pools, C)`` stay in memory (stage 1 writes them, no sample combine) and
stage 2 sums the columns of its channel tile, ``sigmoid(sum over pools of act(sum_b part[b, :, tile]
+ b1[tile]))``: W1 (C * C weights, as big as x at the YOLO neck shapes) is read once per sample, a
slice per program, and no program reads more than a ``[blocks, tile]`` slice of the partials.

Every weight tile is a ``[rows, cols]`` block with ``rows * cols <= 4096`` (the launcher picks the
constexpr widths): a handful of independent loads per program instead of a loop of hundreds.
"""

import triton
import triton.language as tl

from cbam_triton.kernels._common import relu, sigmoid

#: channel-branch input modes (``POOLS``); must match :data:`cbam_triton.fused_parts.POOL_MODES`
POOLS_AVG_MAX = tl.constexpr(0)   # mlp(avg) + mlp(max)
POOLS_AVG = tl.constexpr(1)       # mlp(avg)
POOLS_MAX = tl.constexpr(2)       # mlp(max)
POOLS_LIGHT = tl.constexpr(3)     # mlp(0.5 * avg + 0.5 * max)
#: hidden activations (``ACT``); must match :data:`cbam_triton.fused_parts.ACTIVATIONS`
ACT_IDENTITY = tl.constexpr(0)
ACT_RELU = tl.constexpr(1)
#: where a streaming kernel's channel map comes from (``MC_MODE``)
MC_NONE = tl.constexpr(0)         # no channel gate
MC_LOAD = tl.constexpr(1)         # read mc[n, c] from memory
MC_FC2 = tl.constexpr(2)          # sigmoid(W2 @ z + pools * b2), z from stage 1
MC_PART = tl.constexpr(3)         # one-layer MLP from stage 1's layer-1 partials (N, blocks, pools, C)


@triton.jit
def _activate(v, ACT: tl.constexpr):
    if ACT == ACT_RELU:
        v = relu(v)
    return v


@triton.jit
def pool_inputs(avg, mx, POOLS: tl.constexpr):
    """The MLP's input vectors from the pooled ones: (first, second); second is unused unless
    POOLS is avg+max."""
    if POOLS == POOLS_LIGHT:
        return 0.5 * avg + 0.5 * mx, mx
    if POOLS == POOLS_MAX:
        return mx, mx
    return avg, mx


@triton.jit
def hidden_partial(n, cb, num_cblocks, offs_c, mask_c, va, vm, HID, w1_ptr, s_w1h, s_w1c, part_ptr,
                   POOLS: tl.constexpr, HB: tl.constexpr, acc_t: tl.constexpr):
    """Layer-1 partial of one channel block: ``part[n, cb, i, h] = sum_c W1[h, c] * v_i[c]`` for
    the block's channels (v_0 = the first MLP input, v_1 = max when POOLS is avg+max).
    ``[HB, BLOCK_C]`` weight tiles, one load each; HID / HB of them."""
    offs_h = tl.arange(0, HB)
    NPOOL: tl.constexpr = 1 + (POOLS == POOLS_AVG_MAX)
    base = part_ptr + (n * num_cblocks + cb).to(tl.int64) * NPOOL * HID
    for h0 in range(0, HID, HB):
        hh = h0 + offs_h
        mh = hh < HID
        w = tl.load(w1_ptr + hh[:, None] * s_w1h + offs_c[None, :] * s_w1c,
                    mask=mh[:, None] & mask_c[None, :], other=0.0).to(acc_t)
        tl.store(base + hh, tl.sum(w * va[None, :], axis=1), mask=mh)
        if POOLS == POOLS_AVG_MAX:
            tl.store(base + HID + hh, tl.sum(w * vm[None, :], axis=1), mask=mh)


@triton.jit
def hidden_combine(src_ptr, rows, HID, b1_ptr, dst_ptr,
                   POOLS: tl.constexpr, ACT: tl.constexpr, HAS_B1: tl.constexpr, FINAL: tl.constexpr,
                   CBB: tl.constexpr, HB: tl.constexpr, acc_t: tl.constexpr):
    """Sum ``rows`` rows of layer-1 partials ``(rows, pools, HID)`` at ``src_ptr`` as ``[CBB, HB]`` tiles
    (``.cg``: written by other programs), in row order: deterministic.

    FINAL: ``dst[:HID] = z = sum over pools of act(sum + b1)``, the sample's hidden vector; else the
    raw ``(pools, HID)`` sums go to ``dst`` (one row of the next level of a two-level combine)."""
    NPOOL: tl.constexpr = 1 + (POOLS == POOLS_AVG_MAX)
    offs_b = tl.arange(0, CBB)
    offs_h = tl.arange(0, HB)
    for h0 in range(0, HID, HB):
        hh = h0 + offs_h
        mh = hh < HID
        acc_a = tl.zeros([HB], dtype=acc_t)
        acc_m = tl.zeros([HB], dtype=acc_t)
        for b0 in range(0, rows, CBB):
            bb = b0 + offs_b
            m = (bb < rows)[:, None] & mh[None, :]
            ptrs = src_ptr + bb.to(tl.int64)[:, None] * NPOOL * HID + hh[None, :]
            acc_a += tl.sum(tl.load(ptrs, mask=m, other=0.0, cache_modifier=".cg"), axis=0)
            if POOLS == POOLS_AVG_MAX:
                acc_m += tl.sum(tl.load(ptrs + HID, mask=m, other=0.0, cache_modifier=".cg"), axis=0)
        if FINAL:
            if HAS_B1:
                b1 = tl.load(b1_ptr + hh, mask=mh, other=0.0).to(acc_t)
                acc_a += b1
                acc_m += b1
            z = _activate(acc_a, ACT)
            if POOLS == POOLS_AVG_MAX:
                z += _activate(acc_m, ACT)
            tl.store(dst_ptr + hh, z, mask=mh)
        else:
            tl.store(dst_ptr + hh, acc_a, mask=mh)
            if POOLS == POOLS_AVG_MAX:
                tl.store(dst_ptr + HID + hh, acc_m, mask=mh)


@triton.jit
def load_hidden(n, K, vec_ptr, KB: tl.constexpr):
    """z[n] as a ``[KB]`` vector (KB >= K): loaded once before a walk over channel tiles."""
    offs_k = tl.arange(0, KB)
    return tl.load(vec_ptr + n.to(tl.int64) * K + offs_k, mask=offs_k < K, other=0.0)


@triton.jit
def channel_map_tile(n, cc, mask_c, C, K, vec_ptr, w_ptr, b_ptr, s_wc, s_wk, z,
                     MC_MODE: tl.constexpr, POOLS: tl.constexpr, ACT: tl.constexpr, HAS_B: tl.constexpr,
                     KB: tl.constexpr, Z_ONCE: tl.constexpr, acc_t: tl.constexpr):
    """``Mc[n, cc]`` (a ``[len(cc)]`` vector) from the MLP's last layer.

    MC_FC2: ``sigmoid(W2[cc] @ z[n] + pools * b2[cc])`` with ``vec = z`` (N, K = hidden); ``[len(cc),
    KB]`` weight tiles. ``Z_ONCE`` (K <= KB): ``z`` is :func:`load_hidden`'s vector, not loaded again.
    MC_PART (one-layer MLP, fc1: C -> C): ``sigmoid(sum over pools of act(sum_b part[n, b, pool, cc] +
    b1[cc]))`` with ``vec = part`` (N, K = blocks, pools, C) from stage 1; ``[len(cc), KB]`` tiles of the
    partials (``.cg``: written by other programs), summed over the blocks in a fixed order."""
    NPOOL: tl.constexpr = 1 + (POOLS == POOLS_AVG_MAX)
    offs_k = tl.arange(0, KB)
    acc_a = tl.zeros(cc.shape, dtype=acc_t)
    acc_m = tl.zeros(cc.shape, dtype=acc_t)
    if MC_MODE == MC_FC2:
        for k0 in range(0, K, KB):
            kk = k0 + offs_k
            mk = kk < K
            w = tl.load(w_ptr + cc[:, None] * s_wc + kk[None, :] * s_wk, mask=mask_c[:, None] & mk[None, :],
                        other=0.0).to(acc_t)
            if Z_ONCE:
                acc_a += tl.sum(w * z[None, :], axis=1)
            else:
                zk = tl.load(vec_ptr + n.to(tl.int64) * K + kk, mask=mk, other=0.0)
                acc_a += tl.sum(w * zk[None, :], axis=1)
    else:  # the partial tiles summed element-wise, reduced once after the walk over the blocks
        tile_a = tl.zeros([cc.shape[0], KB], dtype=acc_t)
        tile_m = tl.zeros([cc.shape[0], KB], dtype=acc_t)
        for k0 in range(0, K, KB):
            kk = k0 + offs_k
            m = mask_c[:, None] & (kk < K)[None, :]
            part = vec_ptr + (n.to(tl.int64) * K + kk.to(tl.int64))[None, :] * NPOOL * C + cc[:, None]
            tile_a += tl.load(part, mask=m, other=0.0, cache_modifier=".cg")
            if POOLS == POOLS_AVG_MAX:
                tile_m += tl.load(part + C, mask=m, other=0.0, cache_modifier=".cg")
        acc_a = tl.sum(tile_a, axis=1)
        if POOLS == POOLS_AVG_MAX:
            acc_m = tl.sum(tile_m, axis=1)
    b = tl.zeros(cc.shape, dtype=acc_t)
    if HAS_B:
        b = tl.load(b_ptr + cc, mask=mask_c, other=0.0).to(acc_t)
    if MC_MODE == MC_FC2:  # fc2's bias once per pool (fc2 is linear: the pools' activations were summed)
        logit = acc_a + b
        if POOLS == POOLS_AVG_MAX:
            logit += b
    else:
        logit = _activate(acc_a + b, ACT)
        if POOLS == POOLS_AVG_MAX:
            logit += _activate(acc_m + b, ACT)
    return sigmoid(logit)


@triton.jit
def group_layer1(pin_ptr, n0, gs, c0, cw, C, HID, w1_ptr, s_w1h, s_w1c, dst_ptr,
                 NPOOL: tl.constexpr, GR: tl.constexpr, WB: tl.constexpr, HB: tl.constexpr, acc_t: tl.constexpr):
    """Layer 1 of a group of ``gs`` samples on channels ``[c0, c0 + cw)``: ``dst[r, h] = sum_c W1[h, c] *
    pin[n0 + r // NPOOL, r % NPOOL, c]`` for the group's ``gs * NPOOL`` rows (r = sample * NPOOL + pool).
    The MLP inputs (N, NPOOL, C) as ``[GR, WB]`` tiles (``.cg``: stored by other programs), W1 as
    ``[WB, HB]`` tiles, each read once for the whole group, multiplied with ``tl.dot`` (fp32: tensor
    cores in ``tf32x3``, three tf32 products, about fp32's accuracy and far fewer registers than an
    FMA dot whose operands every thread holds in part; fp16/bf16 weights, exact in tf32: the inputs
    split into a tf32 ``hi`` and the rest, two tf32 products of the same accuracy and fewer registers;
    fp64: IEEE FMA), in a fixed order: deterministic; ``2 * cdiv(HID, HB) * cdiv(cw, WB)`` loads. The
    launcher keeps the tiles small (``[32, 32]`` weight tiles, ``[64, 32]`` for 128-channel blocks of
    16-bit weights): the tail's registers count for the whole streaming kernel."""
    W16: tl.constexpr = w1_ptr.dtype.element_ty == tl.float16 or w1_ptr.dtype.element_ty == tl.bfloat16
    r = tl.arange(0, GR)
    mr = r < gs * NPOOL
    rows = (n0 + r // NPOOL).to(tl.int64) * NPOOL + r % NPOOL
    offs_w = tl.arange(0, WB)
    offs_h = tl.arange(0, HB)
    for h0 in range(0, HID, HB):
        hh = h0 + offs_h
        mh = hh < HID
        out = tl.zeros([GR, HB], dtype=acc_t)
        for w0 in range(0, cw, WB):
            cc = c0 + w0 + offs_w
            mc = (w0 + offs_w) < cw
            a = tl.load(pin_ptr + rows[:, None] * C + cc[None, :], mask=mr[:, None] & mc[None, :], other=0.0,
                        cache_modifier=".cg").to(acc_t)
            w = tl.load(w1_ptr + hh[None, :] * s_w1h + cc[:, None] * s_w1c, mask=mc[:, None] & mh[None, :],
                        other=0.0).to(acc_t)
            if acc_t == tl.float64:
                out = tl.dot(a, w, out, input_precision="ieee")
            elif W16:  # 16-bit weights are exact in tf32: split the inputs only (two tf32 products)
                a_hi = (a.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
                out = tl.dot(a_hi, w, out, input_precision="tf32")
                out = tl.dot(a - a_hi, w, out, input_precision="tf32")
            else:  # tensor cores at about fp32 accuracy (three tf32 products), operands not replicated per thread
                out = tl.dot(a, w, out, input_precision="tf32x3")
        tl.store(dst_ptr + r[:, None] * HID + hh[None, :], out, mask=mr[:, None] & mh[None, :])


@triton.jit
def group_combine(src_ptr, rows, row_stride, gs, HID, b1_ptr, dst_ptr,
                  POOLS: tl.constexpr, ACT: tl.constexpr, HAS_B1: tl.constexpr, FINAL: tl.constexpr,
                  CBB: tl.constexpr, ZC: tl.constexpr, acc_t: tl.constexpr):
    """Sum ``rows`` rows of a sample group's layer-1 partials (each ``(gs * NPOOL, HID)``, ``row_stride``
    apart) as ``[CBB, ZC]`` tiles over the group's ``gs * HID`` (sample, hidden) columns per pool, in
    row order (``.cg``: written by other programs). FINAL: ``z[n0 + j, h] = sum over pools of act(sum
    + b1[h])`` to ``dst`` (the group's rows of z (N, HID)); else the raw sums, one ``(gs * NPOOL, HID)``
    row of the next level."""
    NPOOL: tl.constexpr = 1 + (POOLS == POOLS_AVG_MAX)
    offs_b = tl.arange(0, CBB)
    offs_q = tl.arange(0, ZC)
    for q0 in range(0, gs * HID, ZC):
        q = q0 + offs_q
        mq = q < gs * HID
        col = (q // HID) * NPOOL * HID + q % HID
        acc_a = tl.zeros([ZC], dtype=acc_t)
        acc_m = tl.zeros([ZC], dtype=acc_t)
        for b0 in range(0, rows, CBB):
            bb = b0 + offs_b
            m = (bb < rows)[:, None] & mq[None, :]
            ptrs = src_ptr + bb.to(tl.int64)[:, None] * row_stride + col[None, :]
            acc_a += tl.sum(tl.load(ptrs, mask=m, other=0.0, cache_modifier=".cg"), axis=0)
            if POOLS == POOLS_AVG_MAX:
                acc_m += tl.sum(tl.load(ptrs + HID, mask=m, other=0.0, cache_modifier=".cg"), axis=0)
        if FINAL:
            if HAS_B1:
                b1 = tl.load(b1_ptr + q % HID, mask=mq, other=0.0).to(acc_t)
                acc_a += b1
                acc_m += b1
            z = _activate(acc_a, ACT)
            if POOLS == POOLS_AVG_MAX:
                z += _activate(acc_m, ACT)
            tl.store(dst_ptr + q, z, mask=mq)
        else:
            tl.store(dst_ptr + col, acc_a, mask=mq)
            if POOLS == POOLS_AVG_MAX:
                tl.store(dst_ptr + col + HID, acc_m, mask=mq)
