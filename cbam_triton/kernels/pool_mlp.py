"""Stage 1 of the fused forward: global avg + max pooling, the split combine and layer 1 of the
channel MLP, in one launch (layer 2, or a one-layer MLP's column sums, and the sigmoid run in
stage 2, see :mod:`cbam_triton.kernels.mlp`)."""

import triton
import triton.language as tl

from cbam_triton.kernels._common import affine_coefficients, last_arrival, reset_counter
from cbam_triton.kernels.mlp import (
    POOLS_AVG_MAX,
    group_combine,
    group_layer1,
    hidden_combine,
    hidden_partial,
    pool_inputs,
)
from cbam_triton.kernels.pool import pool_partials


@triton.jit
def combine_channel_splits(n, offs_c, mask_c, C, num_splits, sum_ptr, max_ptr,
                           SB: tl.constexpr, BLOCK_C: tl.constexpr, acc_t: tl.constexpr):
    """(sum, max) over the SPLIT partials ``(N, SPLIT, C)`` of one channel block: ``[SB, BLOCK_C]``
    tiles reduced along the split axis, in split order (deterministic); ``.cg``: the partials were
    stored by other programs (other SMs), read them from L2."""
    offs_s = tl.arange(0, SB)
    s = tl.zeros([BLOCK_C], dtype=acc_t)
    mx = tl.full([BLOCK_C], float("-inf"), dtype=acc_t)
    for s0 in range(0, num_splits, SB):
        ss = s0 + offs_s
        m = (ss < num_splits)[:, None] & mask_c[None, :]
        src = (n * num_splits + ss).to(tl.int64)[:, None] * C + offs_c[None, :]
        s += tl.sum(tl.load(sum_ptr + src, mask=m, other=0.0, cache_modifier=".cg"), axis=0)
        part = tl.load(max_ptr + src, mask=m, other=float("-inf"), cache_modifier=".cg")
        has_nan = tl.max((part != part).to(tl.int32), axis=0)
        mx = tl.maximum(mx, tl.where(has_nan > 0, float("nan"), tl.max(part, axis=0)),
                        propagate_nan=tl.PropagateNan.ALL)
    return s, mx


@triton.jit
def channel_pool_mlp_kernel(
    x_ptr, sum_ptr, max_ptr, counter_ptr, sample_counter_ptr, group_counter_ptr, part_ptr,
    group_ptr, z_ptr, w1_ptr, b1_ptr,
    C, P, HID, p_per_split, group,
    stride_xn, stride_xc, stride_xp, s_w1h, s_w1c,
    aff_mean_ptr, aff_var_ptr, aff_w_ptr, aff_b_ptr, aff_eps, aff_out_ptr, pin_ptr, l1_counter_ptr, GS,
    POOLS: tl.constexpr, ACT: tl.constexpr, HAS_B1: tl.constexpr, Z_COMBINE: tl.constexpr, TREE: tl.constexpr,
    SPLIT: tl.constexpr, HINTS: tl.constexpr, AFFINE: tl.constexpr, AFF_W: tl.constexpr, AFF_B: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, SB: tl.constexpr, HB: tl.constexpr,
    CBB: tl.constexpr, ZB: tl.constexpr, ACC_FP64: tl.constexpr, UNROLL: tl.constexpr,
    L1G: tl.constexpr, GR: tl.constexpr, WB: tl.constexpr, HB1: tl.constexpr, WIN: tl.constexpr = 0,
):
    # Reads x[n, c-block, p-range] exactly once (HINTS: evict_last, so that x stays in L2 for
    # stages 2 and 3 of the L2-resident schedule). Grid (N * cdiv(C, BLOCK_C), SPLIT), tile
    # [BLOCK_C, BLOCK_P] walking the p-range (the tile rule of plan_fused); UNROLL == 2: two tiles
    # in flight per loop iteration (pool_partials). WIN (contiguous NCHW, channel rows not 16-byte
    # aligned: 7², 14², odd maps): each row is read through the 16-byte-aligned window around it,
    # 128-bit loads, the neighbours' elements masked out (pool._window_partials).
    # SPLIT (more than one p-range): the program stores its (sum, max) partials to (N, SPLIT, C)
    # and the last of the block's SPLIT programs (one integer atomic each on counter[n, block])
    # combines them as [SB, BLOCK_C] tiles. The block's pooled values are then final (they never
    # reach memory): its layer-1 partial W1[:, block] @ pool[block] goes to part (N, blocks, pools,
    # HID) in [HB, BLOCK_C] weight tiles (HID = C for a one-layer MLP).
    # Z_COMBINE (two layers): the last block of a sample (sample_counter[n]) sums the (blocks, HID)
    # partials as [CBB, ZB] tiles, adds b1, applies the activation and sums the pools: z (N, HID).
    # TREE (blocks * HID large): two levels instead; the last block of each group of ``group``
    # blocks (group_counter[n, g]) sums the group's partials into group_ptr (N, groups, pools, HID),
    # the last group (sample_counter[n]) sums those into z.
    # L1G (W1 read per sample would exceed the weight-traffic bound): layer 1 per group of GS
    # samples instead (_group_tail): the block's MLP inputs go to pin (N, pools, C), the last of the
    # group's programs of the block (l1_counter[g, block]) multiplies the group's inputs by the
    # block's W1 slice (tl.dot), W1 is read once per group; the group's partials are summed as above.
    # Layer 2 (or a one-layer MLP's column sums) runs in stage 2, spread over its programs, or in the
    # channel-map launch (kernels/channel_map.py) for the whole chunk.
    # Big-tensor traffic: |x| read, nothing written.
    # Longest program: the last of a sample: its x tiles, <= 2 * cdiv(SPLIT, SB) partial tiles,
    # HID / HB weight tiles (the launcher keeps BLOCK_C * HID small) and 2 * HID / ZB *
    # cdiv(blocks, CBB) tiles of partials (TREE: group + groups rows instead of blocks): a few
    # tens of independent loads, never C * HID.
    # Deterministic: integer atomics only, every combine in a fixed order.
    # AFFINE (the fused block tail): x is a residual block's pre-norm output y; each element is
    # y * scale[c] + shift[c] (the block's last BatchNorm in eval, from its running statistics and
    # affine parameters: 4 small loads per program) as it is loaded, and the programs of sample 0,
    # split 0 store (scale, shift) to aff_out (2, C) for stage 2.
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    pid_nc = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    num_cblocks = tl.cdiv(C, BLOCK_C)
    n = pid_nc // num_cblocks
    cb = pid_nc % num_cblocks
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    p_start = split * p_per_split
    scale = tl.zeros([BLOCK_C], dtype=acc_t)
    shift = tl.zeros([BLOCK_C], dtype=acc_t)
    if AFFINE:
        scale, shift = affine_coefficients(offs_c, mask_c, aff_mean_ptr, aff_var_ptr, aff_w_ptr, aff_b_ptr, aff_eps,
                                           AFF_W, AFF_B, ACC_FP64)
        owner = mask_c & (n == 0) & (split == 0)
        tl.store(aff_out_ptr + offs_c, scale, mask=owner)
        tl.store(aff_out_ptr + C + offs_c, shift, mask=owner)
    vsum, vmax, _ = pool_partials(x_ptr, n, offs_c, mask_c, p_start, tl.minimum(p_start + p_per_split, P),
                                  stride_xn, stride_xc, stride_xp, scale, shift, False, HINTS, AFFINE,
                                  BLOCK_C, BLOCK_P, ACC_FP64, UNROLL, WIN)
    final = True
    if SPLIT:
        out = (n * num_splits + split).to(tl.int64) * C + offs_c
        tl.store(sum_ptr + out, vsum, mask=mask_c)
        tl.store(max_ptr + out, vmax, mask=mask_c)
        final = last_arrival(counter_ptr + pid_nc, num_splits)
        if final:
            vsum, vmax = combine_channel_splits(n, offs_c, mask_c, C, num_splits, sum_ptr, max_ptr,
                                                SB, BLOCK_C, acc_t)
            reset_counter(counter_ptr + pid_nc)
    if final:
        avg = vsum / P
        va, vm = pool_inputs(avg, vmax, POOLS)
        if L1G:
            _group_tail(n, cb, num_cblocks, offs_c, mask_c, va, vm, C, HID, GS, group, pin_ptr, l1_counter_ptr,
                        sample_counter_ptr, group_counter_ptr, part_ptr, group_ptr, z_ptr, w1_ptr, b1_ptr, s_w1h,
                        s_w1c, POOLS, ACT, HAS_B1, TREE, BLOCK_C, CBB, ZB, GR, WB, HB1, acc_t)
        else:
            _sample_tail(n, cb, num_cblocks, offs_c, mask_c, va, vm, HID, group, sample_counter_ptr,
                         group_counter_ptr, part_ptr, group_ptr, z_ptr, w1_ptr, b1_ptr, s_w1h, s_w1c,
                         POOLS, ACT, HAS_B1, Z_COMBINE, TREE, HB, CBB, ZB, acc_t)


@triton.jit
def _sample_tail(n, cb, num_cblocks, offs_c, mask_c, va, vm, HID, group, sample_counter_ptr, group_counter_ptr,
                 part_ptr, group_ptr, z_ptr, w1_ptr, b1_ptr, s_w1h, s_w1c,
                 POOLS: tl.constexpr, ACT: tl.constexpr, HAS_B1: tl.constexpr, Z_COMBINE: tl.constexpr,
                 TREE: tl.constexpr, HB: tl.constexpr, CBB: tl.constexpr, ZB: tl.constexpr, acc_t: tl.constexpr):
    """Layer 1 per (sample, channel block): the block's partial W1[:, block] @ pool[block], then
    (two layers) the sample's z from its blocks' partials (one level, or TREE: two)."""
    hidden_partial(n, cb, num_cblocks, offs_c, mask_c, tl.where(mask_c, va, 0.0), tl.where(mask_c, vm, 0.0),
                   HID, w1_ptr, s_w1h, s_w1c, part_ptr, POOLS, HB, acc_t)
    NPOOL: tl.constexpr = 1 + (POOLS == POOLS_AVG_MAX)
    parts_n = part_ptr + n.to(tl.int64) * num_cblocks * NPOOL * HID
    z_n = z_ptr + n.to(tl.int64) * HID
    if Z_COMBINE:
        if TREE:
            num_groups = tl.cdiv(num_cblocks, group)
            g = cb // group
            first = g * group
            rows = tl.minimum(group, num_cblocks - first)
            gcount = group_counter_ptr + n * num_groups + g
            if last_arrival(gcount, rows):
                groups_n = group_ptr + n.to(tl.int64) * num_groups * NPOOL * HID
                hidden_combine(parts_n + first.to(tl.int64) * NPOOL * HID, rows, HID, b1_ptr,
                               groups_n + g.to(tl.int64) * NPOOL * HID, POOLS, ACT, HAS_B1, False, CBB, ZB, acc_t)
                reset_counter(gcount)
                if last_arrival(sample_counter_ptr + n, num_groups):
                    hidden_combine(groups_n, num_groups, HID, b1_ptr, z_n, POOLS, ACT, HAS_B1, True, CBB, ZB,
                                   acc_t)
                    reset_counter(sample_counter_ptr + n)
        else:
            if last_arrival(sample_counter_ptr + n, num_cblocks):
                hidden_combine(parts_n, num_cblocks, HID, b1_ptr, z_n, POOLS, ACT, HAS_B1, True, CBB, ZB, acc_t)
                reset_counter(sample_counter_ptr + n)


@triton.jit
def _group_tail(n, cb, num_cblocks, offs_c, mask_c, va, vm, C, HID, GS, group, pin_ptr, l1_counter_ptr,
                sample_counter_ptr, group_counter_ptr, part_ptr, group_ptr, z_ptr, w1_ptr, b1_ptr, s_w1h, s_w1c,
                POOLS: tl.constexpr, ACT: tl.constexpr, HAS_B1: tl.constexpr, TREE: tl.constexpr,
                BLOCK_C: tl.constexpr, CBB: tl.constexpr, ZB: tl.constexpr, GR: tl.constexpr, WB: tl.constexpr,
                HB1: tl.constexpr, acc_t: tl.constexpr):
    """Layer 1 per (group of GS samples, channel block), so that W1 is read once per group, not once per
    sample: the block's MLP inputs go to pin (N, pools, C); the last of the group's programs of the
    block (l1_counter[g, block]) computes the group's partials (group_layer1) into part (groups,
    blocks, GR, HID); the last block of the group (sample_counter[g]; TREE: two levels through
    group_counter and group_ptr) sums them into the group's rows of z (N, HID)."""
    NPOOL: tl.constexpr = 1 + (POOLS == POOLS_AVG_MAX)
    pin_n = pin_ptr + n.to(tl.int64) * NPOOL * C
    tl.store(pin_n + offs_c, va, mask=mask_c)
    if POOLS == POOLS_AVG_MAX:
        tl.store(pin_n + C + offs_c, vm, mask=mask_c)
    num_n = tl.num_programs(0) // num_cblocks
    g = n // GS
    n0 = g * GS
    gs = tl.minimum(GS, num_n - n0)
    l1c = l1_counter_ptr + g * num_cblocks + cb
    if last_arrival(l1c, gs):
        row = GR * HID
        gparts = part_ptr + g.to(tl.int64) * num_cblocks * row
        c0 = cb * BLOCK_C
        group_layer1(pin_ptr, n0, gs, c0, tl.minimum(BLOCK_C, C - c0), C, HID, w1_ptr, s_w1h, s_w1c,
                     gparts + cb.to(tl.int64) * row, NPOOL, GR, WB, HB1, acc_t)
        reset_counter(l1c)
        z_g = z_ptr + n0.to(tl.int64) * HID
        if TREE:
            num_groups = tl.cdiv(num_cblocks, group)
            tg = cb // group
            first = tg * group
            rows = tl.minimum(group, num_cblocks - first)
            gcount = group_counter_ptr + g * num_groups + tg
            if last_arrival(gcount, rows):
                groups_g = group_ptr + g.to(tl.int64) * num_groups * row
                group_combine(gparts + first.to(tl.int64) * row, rows, row, gs, HID, b1_ptr,
                              groups_g + tg.to(tl.int64) * row, POOLS, ACT, HAS_B1, False, CBB, ZB, acc_t)
                reset_counter(gcount)
                if last_arrival(sample_counter_ptr + g, num_groups):
                    group_combine(groups_g, num_groups, row, gs, HID, b1_ptr, z_g, POOLS, ACT, HAS_B1, True,
                                  CBB, ZB, acc_t)
                    reset_counter(sample_counter_ptr + g)
        else:
            if last_arrival(sample_counter_ptr + g, num_cblocks):
                group_combine(gparts, num_cblocks, row, gs, HID, b1_ptr, z_g, POOLS, ACT, HAS_B1, True, CBB, ZB,
                              acc_t)
                reset_counter(sample_counter_ptr + g)
