"""Launcher of stage 1 of the fused forward (:func:`~cbam_triton.kernels.pool_mlp.channel_pool_mlp_kernel`),
and the arguments with which the later stages compute Mc from the MLP's last layer."""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import torch

from cbam_triton.fused_parts import ACTIVATIONS, POOL_MODES, ChannelAffine, ChannelMLP
from cbam_triton.kernels.pool_mlp import channel_pool_mlp_kernel
from cbam_triton.launchers._common import (
    NUM_WARPS,
    PROGRAM_SMALL_BYTES,
    SMALL_TILE,
    WORKSPACE_FRACTION,
    Launch,
    ProgramModel,
    acc_is_fp64,
    as_ncp,
    compute_dtype,
    counter_buffer,
    in_flight,
    nbytes,
    next_pow2,
    plan_fused,
    rows_16b,
    small_tile_rows,
    window_elems,
)

#: ``MC_MODE`` of the streaming kernels (must match :mod:`cbam_triton.kernels.mlp`)
MC_NONE, MC_LOAD, MC_FC2, MC_PART = 0, 1, 2, 3


def pool_rows(pools_mode: int) -> int:
    """Vectors the MLP sees per sample (rows of layer-1 partials per block): 2 for avg+max, else 1."""
    return 2 if pools_mode == POOL_MODES["avg+max"] else 1


class ChannelState(NamedTuple):
    """What stage 1 leaves for the stages that compute Mc: the MLP and either the hidden vectors z
    (N, hidden) of a two-layer MLP or the layer-1 partials (N, blocks, pools, C) of a one-layer MLP
    (fc1: C -> C)."""

    mlp: ChannelMLP
    z: torch.Tensor | None
    parts: torch.Tensor | None = None
    #: the fused block tail: (scale, shift) per channel, (2, C), of the block's last norm
    affine: torch.Tensor | None = None

    @property
    def map_weight_bytes(self) -> int:
        """Bytes of small data read to compute one sample's whole Mc: W2 (two layers), or the
        pools' layer-1 partials (one layer)."""
        if self.z is not None:
            w = self.mlp.fc2_weight
            return w.shape[0] * w.shape[1] * w.element_size()
        assert self.parts is not None
        return self.parts[0].numel() * self.parts.element_size()

    @property
    def map_total_bytes(self) -> int:
        """Bytes of small data a launch that computes every sample's Mc reads from DRAM: W2 once
        (then L2-resident), or every sample's partials."""
        return self.map_weight_bytes * (1 if self.parts is None else self.parts.shape[0])

    def channels_per_slice(self, c: int) -> int:
        """Most output channels whose share of :attr:`map_weight_bytes` fits one program's
        PROGRAM_SMALL_BYTES (a channel tile computing Mc is never wider)."""
        return max(1, PROGRAM_SMALL_BYTES * c // max(1, self.map_weight_bytes))


def _matrix_strides(w: torch.Tensor) -> tuple[int, int]:
    """(row, column) strides of a Linear weight or a 1x1 conv weight viewed as a matrix."""
    return w.stride(0), w.stride(1)


def channel_map_args(state: ChannelState | None, mc: torch.Tensor | None, block_c: int,
                     filler: torch.Tensor) -> tuple[tuple[Any, ...], tuple[int, ...], dict[str, Any]]:
    """The Mc arguments of a streaming kernel: ``(tensors (w, b, vec), (K, s_wc, s_wk), meta)``.

    ``state`` (fused forward): Mc computed in-kernel per channel tile from the MLP's last layer;
    else ``mc`` (N, C) loaded, or no channel map. ``filler`` stands in for absent tensors."""
    if state is None:
        meta = dict(MC_MODE=MC_LOAD if mc is not None else MC_NONE, POOLS=0, ACT=0, HAS_MCB=False, KB=1, Z_ONCE=False)
        return (filler, filler, filler), (1, 0, 0), meta
    mlp = state.mlp
    two = state.z is not None
    b = mlp.fc2_bias if two else mlp.fc1_bias
    if two:
        w, vec = mlp.fc2_weight, state.z
        k, strides = w.shape[1], _matrix_strides(w)
    else:  # the (N, blocks, pools, C) partials are both the "weights" and the vector
        assert state.parts is not None
        w = vec = state.parts
        k, strides = state.parts.shape[1], (0, 0)
    kb = small_tile_rows(block_c, k)
    meta = dict(MC_MODE=MC_FC2 if two else MC_PART, POOLS=POOL_MODES[mlp.pools], ACT=ACTIVATIONS[mlp.act],
                HAS_MCB=b is not None, KB=kb, Z_ONCE=two and kb >= k)
    return (w, b if b is not None else w, vec), (k, *strides), meta


def map_tile_loads(meta: dict[str, Any], block_c: int, k: int, wsize: int, acc: int) -> tuple[int, int]:
    """(loads, bytes) of one Mc tile of ``block_c`` channels (:func:`channel_map_args`' meta)."""
    mode = meta["MC_MODE"]
    if mode == MC_NONE:
        return 0, 0
    if mode == MC_LOAD:
        return 1, block_c * acc
    chunks = -(-k // meta["KB"])
    bias = 1 if meta["HAS_MCB"] else 0
    if mode == MC_PART:  # [block_c, KB] tiles of the partials, one per pool
        pools = pool_rows(meta["POOLS"])
        return pools * chunks + bias, pools * block_c * k * acc + bias * block_c * wsize
    vec = 0 if meta.get("Z_ONCE") else chunks
    return chunks + vec + bias, block_c * k * wsize + (vec * meta["KB"] * acc) + bias * block_c * wsize


def map_split_min(state: ChannelState | None, c: int) -> int:
    """Fewest splits of the channel walk that keep each program's slice of the MLP's last layer
    (``c_range * K`` weights, or partials) within :data:`PROGRAM_SMALL_BYTES`."""
    if state is None:
        return 1
    return max(1, -(-state.map_weight_bytes // PROGRAM_SMALL_BYTES))


def plan_channel_pool_mlp(x: torch.Tensor, mlp: ChannelMLP, hints: bool = False, split: int | None = None,
                          counters: torch.Tensor | None = None,
                          affine: ChannelAffine | None = None) -> tuple[Launch, ChannelState]:
    """Plan stage 1 (pooling, split combine, MLP layer 1); returns the launch and the
    :class:`ChannelState` the later stages compute Mc from (fp32, fp64 for fp64 x).
    ``hints``: evict_last loads (the L2-resident schedule). ``affine`` (the fused block tail): x is
    pooled as ``affine(x)``, and the (2, C) ``(scale, shift)`` of it is left for stage 2."""
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    hidden = mlp.hidden
    two = mlp.fc2_weight is not None
    w1 = mlp.fc1_weight
    wsize = w1.element_size()
    # the last block of a sample reads its slice of W1, W1[:, block], and (two layers) sums the
    # sample's layer-1 partials (one level, or two of about sqrt(blocks) rows each); the channel
    # blocks are sized so that both together stay within STAGE1_SMALL_BYTES (_layer1_blocks), and
    # the (blocks, pools, hidden) partials within 1/WORKSPACE_FRACTION of the sample's x bytes (their
    # traffic) where that allows. A one-layer MLP's partials are summed per channel tile in stage 2.
    npool = pool_rows(POOL_MODES[mlp.pools])
    row = hidden * npool * (8 if acc_is_fp64(x) else 4)  # bytes of one block's partials
    lo, hi = _layer1_blocks(c, hidden * wsize, row, two)
    ws_lo = -(-c * row * WORKSPACE_FRACTION // max(1, c * p * x.element_size()))
    if two and _layer1_group(x, mlp, 1, 0) > 1:  # grouped layer 1: few [WB, HB1] W1 tiles per block
        # 128-channel blocks only for 16-bit weights (their two-part tf32 product keeps the tail at
        # 128 registers; fp32 weights would shrink the group, and W1 is read once per group)
        wide_wb = GROUP_WB_WIDE if wsize == 2 else GROUP_WB
        cap = max(GROUP_WB, _group_block_cap(hidden, wide_wb))
        lo, hi = min(lo, cap), min(hi, cap)
    block_c_range = (min(max(lo, ws_lo), hi), hi)
    # the block tail's affine on rows Triton can't vectorise: 8 warps (a register per element of the
    # tile and of its scale/shift columns)
    win = window_elems(x, sn, sc, sp)  # unaligned NCHW rows: read through aligned windows
    wide = bool(rows_16b(x, sc, sp) or win)  # 128-bit loads
    warps = 8 if affine is not None and not wide else NUM_WARPS

    def unroll(block_c: int, block_p: int, per_split: int) -> int:
        """x tiles in flight per iteration: 2 where the walk has two tiles or more and the loads are
        128-bit, 4 on the window path where it has three or more (its per-row window bounds are shared)."""
        tiles = _walk_tiles(per_split, p, block_p, win)
        if not wide or tiles < 2:
            return 1
        return 4 if win and tiles >= 3 else 2

    plan = plan_fused(n, c, p, sc, sp, x.element_size(), "p", x.device, split, block_c_range=block_c_range,
                      kernel="channel_pool_mlp", num_warps=warps, window=win, unroll=unroll,
                      walk_tiles=lambda _bc, bp, ps: _walk_tiles(ps, p, bp, win),
                      context=(str(x.dtype).removeprefix("torch."), mlp.pools, two, hidden, affine is not None),
                      context_of=lambda bc, _bp, ps: _tail_shape(x, mlp, bc, ps, row, npool, two))
    block_c, block_p, base = plan.block_c, plan.block_p, plan.base
    num_splits, per_split = plan.num_splits, plan.per_split
    num_cblocks = -(-c // block_c)
    acc = compute_dtype(x)
    sums = torch.empty((n, num_splits, c), dtype=acc, device=x.device) if num_splits > 1 else None
    maxs = torch.empty((n, num_splits, c), dtype=acc, device=x.device) if num_splits > 1 else None
    z = torch.empty((n, hidden), dtype=acc, device=x.device) if two else None
    gs, gr, tree = _tail_shape(x, mlp, block_c, per_split, row, npool, two)
    if gs > 1:  # layer 1 per group of gs samples: W1 read once per group
        num_g = -(-n // gs)
        pin = torch.empty((n, npool, c), dtype=acc, device=x.device)
        parts = torch.empty((num_g, num_cblocks, gr, hidden), dtype=acc, device=x.device)
    else:
        num_g, pin = n, None
        parts = torch.empty((n, num_cblocks, npool, hidden), dtype=acc, device=x.device)
    group = _isqrt_up(num_cblocks) if tree else num_cblocks
    num_groups = -(-num_cblocks // group)
    groups = torch.empty((num_g, num_groups, *parts.shape[2:]), dtype=acc, device=x.device) if tree else None
    n_l1 = num_g * num_cblocks if gs > 1 else 0
    if counters is None:
        counters = counter_buffer(x.device, n * num_cblocks + num_g + num_g * num_groups + n_l1)
    split_counters, sample_counters = counters[: n * num_cblocks], counters[n * num_cblocks: n * num_cblocks + num_g]
    at = n * num_cblocks + num_g
    group_counters = counters[at: at + num_g * num_groups]
    l1_counters = counters[at + num_g * num_groups: at + num_g * num_groups + n_l1] if gs > 1 else sample_counters
    hb = small_tile_rows(block_c, hidden)
    zb = min(next_pow2(hidden if gs == 1 else gs * hidden), 128 if gs == 1 else 1024)
    cbb = max(1, min(next_pow2(max(group, num_groups) if tree else num_cblocks), SMALL_TILE // zb))
    hb1 = min(max(16, next_pow2(hidden)), GROUP_HB)
    wb = GROUP_WB if block_c <= _group_block_cap(hidden, GROUP_WB) else GROUP_WB_WIDE
    aff = torch.empty((2, c), dtype=acc, device=x.device) if affine is not None else None
    aff_in = (affine.mean, affine.var, affine.weight, affine.bias) if affine is not None else ()
    aff_args = ((affine.mean, affine.var, affine.weight if affine.weight is not None else affine.mean,
                 affine.bias if affine.bias is not None else affine.mean, float(affine.eps), aff)
                if affine is not None else (parts, parts, parts, parts, 0.0, parts))
    launch = Launch(
        kernel=channel_pool_mlp_kernel,
        grid=(base, num_splits),
        args=(x, sums if sums is not None else parts, maxs if maxs is not None else parts, split_counters,
              sample_counters, group_counters if tree else sample_counters, parts,
              groups if groups is not None else parts, z if two else parts,
              w1, mlp.fc1_bias if mlp.fc1_bias is not None else w1,
              c, p, hidden, per_split, group if tree else 1, sn, sc, sp, *_matrix_strides(w1), *aff_args,
              pin if pin is not None else parts, l1_counters, gs),
        meta=dict(POOLS=POOL_MODES[mlp.pools], ACT=ACTIVATIONS[mlp.act], HAS_B1=mlp.fc1_bias is not None,
                  Z_COMBINE=two, TREE=tree, SPLIT=num_splits > 1, HINTS=hints, AFFINE=affine is not None,
                  AFF_W=affine is not None and affine.weight is not None,
                  AFF_B=affine is not None and affine.bias is not None, BLOCK_C=block_c, BLOCK_P=block_p,
                  SB=small_tile_rows(block_c, num_splits), HB=hb, CBB=cbb, ZB=zb, ACC_FP64=acc_is_fp64(x),
                  UNROLL=plan.unroll,
                  L1G=gs > 1, GR=gr, WB=wb, HB1=hb1, WIN=win),
        name="channel_pool_mlp",
        variant=plan.variant,
        num_warps=warps,
        bytes_read=nbytes(x, w1, mlp.fc1_bias if two else None, *aff_in),
        bytes_written=nbytes(sums, maxs, z, pin, aff) + _valid_rows_bytes(parts, groups, gs * npool if gs > 1 else 0),
    )
    combined = (group, num_groups) if tree else (num_cblocks,)
    launch.longest = _stage1_longest(launch, x, p, hidden, num_splits, per_split, combined, two, wsize, gs)
    if affine is not None:  # the norm's statistics and parameters of the program's channel block
        loaded = [t for t in aff_in if t is not None]
        lp = launch.longest
        launch.longest = ProgramModel(lp.x_loads, lp.x_bytes, lp.other_loads + len(loaded),
                                      lp.other_bytes + sum(min(block_c, c) * t.element_size() for t in loaded))
    # W1: a slice per (sample, block), or per (group of gs samples, block)
    launch.weight_bytes = -(-n // gs) * nbytes(w1, mlp.fc1_bias if two else None)
    launch.x_in_flight = in_flight(min(block_c, c) * min(per_split, p) * x.element_size(),
                                   _walk_tiles(per_split, p, block_p, win), launch.meta.get("UNROLL", 1))
    return launch, ChannelState(mlp, z, None if two else parts, aff)


def _tail_shape(x: torch.Tensor, mlp: ChannelMLP, block_c: int, per_split: int, row: int, npool: int,
                two: bool) -> tuple[int, int, bool]:
    """Stage 1's layer-1 tail for a channel block and split: (samples per layer-1 group, the group's
    tile rows, two-level combine). The launcher builds its launch from it, and it is part of a
    candidate's kernel variant (the per-sample and the grouped tails, one or two combine levels, are
    other code)."""
    n, c, h, w = x.shape
    num_cblocks, num_splits = -(-c // block_c), -(-(h * w) // max(1, per_split))
    split_bytes = 2 * num_splits * block_c * (8 if acc_is_fp64(x) else 4) if num_splits > 1 else 0
    gs = _layer1_group(x, mlp, num_cblocks, row, block_c, split_bytes) if two else 1
    if gs > 1:
        return gs, max(16, next_pow2(gs * npool)), _use_tree(num_cblocks, gs * row)
    return 1, 1, two and _use_tree(num_cblocks, row)


def _valid_rows_bytes(parts: torch.Tensor, groups: torch.Tensor | None, rows: int) -> int:
    """Bytes of layer-1 partials stage 1 stores: with grouped layer 1 (``rows`` = the group's samples ×
    pools) only the valid rows of each ``GR``-row block (padded to 16 for ``tl.dot``) are stored."""
    if not rows:
        return nbytes(parts, groups)
    return sum(t.numel() // t.shape[-2] * min(rows, t.shape[-2]) * t.element_size()
               for t in (parts, groups) if t is not None)


def _walk_tiles(per_split: int, p: int, block_p: int, win: int) -> int:
    """Tiles a stage-1 program walks along H*W: its range, plus, on the window path, the up to
    2 * (WIN - 1) lanes its rows' aligned windows add (pool._window_partials' loop)."""
    return -(-(min(per_split, p) + (2 * (win - 1) if win else 0)) // block_p)


def _isqrt_up(v: int) -> int:
    """The smallest g with g * g >= v."""
    g = math.isqrt(max(1, v))
    return g if g * g >= v else g + 1


#: Grouped layer 1 (stage 1): the [GROUP_WB, GROUP_HB] W1 tiles and [GR, GROUP_WB] input tiles of
#: ``tl.dot`` (their registers count for the whole streaming kernel: sm_90, triton 3.8, 96 registers
#: at 32 x 32 at 2048x7^2 and 1024x14^2, as without the group tail; 106-128 at 16 x 64 or 64 x 16,
#: 167-255 at 32 x 64 or wider), and the most such tile loads per channel block. Channel blocks wider
#: than GROUP_L1_LOADS such tiles allow take [GROUP_WB_WIDE, GROUP_HB] W1 tiles instead (128-channel
#: blocks at 2048x7^2: 128 registers channels_last, the streaming tile's own; the planner weighs them
#: by their compiled registers like any candidate)
GROUP_WB, GROUP_HB, GROUP_L1_LOADS, GROUP_WB_WIDE = 32, 32, 16, 64


def _group_block_cap(hidden: int, wb: int) -> int:
    """Widest channel block (a power of two) whose grouped layer 1 takes at most GROUP_L1_LOADS
    ``[wb, HB1]`` W1 tiles and as many input tiles."""
    h_tiles = -(-hidden // min(max(16, next_pow2(hidden)), GROUP_HB))
    return 1 << ((GROUP_L1_LOADS * wb // (2 * h_tiles)).bit_length() - 1)

#: The serial-tail bound of every fused program: bytes of small data (not x) one program may read
PROGRAM_MAX_BYTES = 128 * 1024

#: Fused forward, stage 1: bytes of weights and partials the last block of a sample may read (its
#: slice of W1 and the layer-1 partials it sums), leaving room for its split combine
STAGE1_SMALL_BYTES = 96 * 1024


def _use_tree(blocks: int, row: int) -> bool:
    """Whether the sample's layer-1 partials (``row`` bytes per block) are summed in two levels:
    where one level would read more than half of PROGRAM_SMALL_BYTES and two read fewer rows."""
    return blocks * row > PROGRAM_SMALL_BYTES // 2 and 2 * _isqrt_up(blocks) < blocks


def _combine_bytes(blocks: int, row: int) -> int:
    """Bytes of layer-1 partials (``row`` per block) the last block of a sample sums."""
    if not _use_tree(blocks, row):
        return blocks * row
    group = _isqrt_up(blocks)
    return (group + -(-blocks // group)) * row


def _layer1_blocks(c: int, w1_column: int, row: int, two: bool) -> tuple[int, int]:
    """(lo, hi) channel-block widths whose stage-1 small reads (W1 slice: ``w1_column`` bytes per
    channel; partial sums: ``row`` bytes per block) fit STAGE1_SMALL_BYTES; the cheapest width alone
    when none fits (a very wide MLP)."""
    costs = {}
    bc = 1
    while True:
        costs[bc] = w1_column * bc + (_combine_bytes(-(-c // bc), row) if two else 0)
        if bc >= c:
            break
        bc *= 2
    fit = [b for b, cost in costs.items() if cost <= STAGE1_SMALL_BYTES]
    if not fit:
        best = min(costs, key=costs.get)
        return best, best
    return min(fit), max(fit)


def weight_bound_bytes(x: torch.Tensor, mlp: ChannelMLP) -> int:
    """The modelled MLP weight traffic a chunk (x) may cost: max(|x| / 4, 2 × the weights' size) (the
    streaming target: the weights read O(1) times per chunk, or a small fraction of the stream)."""
    return max(nbytes(x) // 4, 2 * nbytes(*(t for t in mlp[:4] if t is not None)))


def _group_tail_bytes(gs: int, blocks: int, row: int, block_c: int, hidden: int, npool: int, acc: int,
                      wsize: int) -> int:
    """Bytes the grouped layer-1 tail of one program may read: the group's inputs once per h-tile
    ([GR, WB] tiles), its W1 slice, the group's partials (one or two levels) and b1."""
    gr = max(16, next_pow2(gs * npool))
    h_tiles = -(-hidden // min(max(16, next_pow2(hidden)), GROUP_HB))
    return h_tiles * gr * block_c * acc + hidden * block_c * wsize + _combine_bytes(blocks, gs * row) \
        + gs * hidden * wsize


def _layer1_group(x: torch.Tensor, mlp: ChannelMLP, blocks: int, row: int, block_c: int = 0,
                  split_bytes: int = 0) -> int:
    """Samples per layer-1 group (1: layer 1 per sample). W1 is read once per group: the group grows
    until stage 1's W1 traffic, ``cdiv(N, group) * |W1|``, fits what :func:`weight_bound` leaves after
    one read of W2 (the channel-map launch), and no further than one program's combine of the group's
    partials (``row`` bytes per sample and block; one or two levels) fits STAGE1_SMALL_BYTES and the
    whole tail of the program that runs every level (``split_bytes`` of split combine, the group's
    layer 1 on its ``block_c`` channels, the combine) fits PROGRAM_MAX_BYTES.
    ``CBAM_TRITON_L1_GROUP=<samples>`` asks for a group size (tests; the combine bound still holds)."""
    n = x.shape[0]
    forced = os.environ.get("CBAM_TRITON_L1_GROUP")
    w1 = nbytes(mlp.fc1_weight, mlp.fc1_bias)
    budget = weight_bound_bytes(x, mlp) - nbytes(mlp.fc2_weight, mlp.fc2_bias)
    if forced:
        gs = min(int(forced), n, 32)
    elif n < 2 or n * w1 <= budget or acc_is_fp64(x):  # (fp64 layer 1 has no tensor-core path)
        return 1
    else:
        gs = min(-(-n // max(1, budget // max(1, w1))), 32)
    npool = pool_rows(POOL_MODES[mlp.pools])
    acc, wsize = (8 if acc_is_fp64(x) else 4), mlp.fc1_weight.element_size()
    while gs > 1 and (_combine_bytes(blocks, gs * row) > STAGE1_SMALL_BYTES or split_bytes + _group_tail_bytes(
            gs, blocks, row, block_c, mlp.hidden, npool, acc, wsize) > PROGRAM_MAX_BYTES):
        gs -= 1
    return gs


def _stage1_longest(launch: Launch, x: torch.Tensor, p: int, hidden: int, splits: int, per_split: int,
                    combined: tuple[int, ...], two: bool, wsize: int, gs: int = 1) -> ProgramModel:
    """Stage 1's longest program: the last of a sample (its x tiles, the split combine, its W1
    slice and, for two layers, the rows of layer-1 partials it sums: ``combined`` = (blocks,), or
    (its group's blocks, the groups) for a two-level combine). ``gs`` > 1 (layer 1 per group of
    samples): the group's MLP inputs and W1 slice as [GR, WB] and [WB, HB1] tiles, and the
    group's partials summed as [CBB, ZB] tiles."""
    m = launch.meta
    bc, bp, acc = m["BLOCK_C"], m["BLOCK_P"], 8 if m["ACC_FP64"] else 4
    span = min(per_split, p)
    loads = nbytes_ = 0
    if splits > 1:
        loads += 2 * -(-splits // m["SB"])
        nbytes_ += 2 * splits * bc * acc
    pools = pool_rows(m["POOLS"])
    if gs > 1:
        chunks = -(-hidden // m["HB1"]) * -(-bc // m["WB"])
        loads += 2 * chunks
        nbytes_ += -(-hidden // m["HB1"]) * m["GR"] * bc * acc + hidden * bc * wsize
        cols = -(-gs * hidden // m["ZB"])
        loads += pools * cols * sum(-(-rows // m["CBB"]) for rows in combined)
        nbytes_ += pools * sum(combined) * gs * hidden * acc
        if m["HAS_B1"]:
            loads += cols
            nbytes_ += gs * hidden * wsize
        return ProgramModel(_walk_tiles(span, span, bp, m.get("WIN", 0)), bc * span * x.element_size(), loads, nbytes_)
    loads += -(-hidden // m["HB"])
    nbytes_ += hidden * bc * wsize
    if two:
        loads += pools * -(-hidden // m["ZB"]) * sum(-(-rows // m["CBB"]) for rows in combined)
        nbytes_ += pools * sum(combined) * hidden * acc
        if m["HAS_B1"]:
            loads += -(-hidden // m["ZB"])
            nbytes_ += hidden * wsize
    return ProgramModel(_walk_tiles(span, span, bp, m.get("WIN", 0)), bc * span * x.element_size(), loads, nbytes_)
