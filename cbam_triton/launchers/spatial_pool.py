"""Launcher of stage 2 (:func:`~cbam_triton.kernels.spatial_pool.spatial_pool_kernel`)."""

from __future__ import annotations

import torch

from cbam_triton.kernels.spatial_pool import spatial_pool_kernel
from cbam_triton.launchers._common import (
    MAX_WALK_TILES,
    NUM_WARPS,
    SMALL_TILE,
    Launch,
    ProgramModel,
    acc_is_fp64,
    as_ncp,
    choose_split,
    combine_max_counts,
    compute_dtype,
    counter_buffer,
    in_flight,
    nbytes,
    plan_fused,
    rows_16b,
    small_tile_rows,
    target_programs,
    tile_for,
    unit_axis,
    window_blocks,
    window_elems,
)
from cbam_triton.launchers.pool_mlp import (
    MC_LOAD,
    MC_NONE,
    ChannelState,
    channel_map_args,
    map_split_min,
    map_tile_loads,
)


def plan_spatial_pool(x: torch.Tensor, mc: torch.Tensor | None, split: int | None = None,
                      count: bool = False, hints: bool = False, combine: bool = False,
                      channel: ChannelState | None = None, mc_out: torch.Tensor | None = None,
                      affine: torch.Tensor | None = None) -> tuple[Launch, torch.Tensor, torch.Tensor | None]:
    """Plan stage 2; returns the launch, its (N, SPLIT, 2, H, W) output (max, sum-or-mean) and,
    with ``count``, the int32 (N, SPLIT, H*W) counts of channels equal to each max.

    Fused forward: ``combine`` makes the kernel itself combine the splits (the second result is
    then the final (N, 2, H, W) map [max, mean] whatever the split); ``hints``: evict_last loads;
    ``channel`` (stage 1's :class:`ChannelState`, instead of ``mc``): Mc is computed in-kernel per
    channel tile from the MLP's last layer and stored to ``mc_out`` (N, C) for stage 3.
    ``affine`` (the fused block tail; default: ``channel.affine``): stage 1's (2, C) ``(scale, shift)``,
    applied to x as it is loaded.
    """
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    if affine is None and channel is not None:
        affine = channel.affine

    # unaligned NCHW rows (fused forward): read through aligned windows, one pixel block per sample, or
    # pixel blocks of a longer row's windows (a channel tile must hold a whole class of rows)
    win = window_elems(x, sn, sc, sp) if combine and not count else 0
    if win and channel is not None and channel.channels_per_slice(c) < win:
        win = 0
    wblocks = bool(window_blocks(p, win))
    halo = 2 * (win - 1) if wblocks else 0  # the lanes of a pixel block's windows that are not its own

    def warps_for(block_c: int) -> int:
        """8 warps for a large Mc weight tile, and for the block tail's affine on rows Triton can't
        vectorise (a register per element of the tile and of its (scale, shift) columns)."""
        return 8 if affine is not None and not (rows_16b(x, sc, sp) or win) else _warps(channel, block_c)

    variant = planned_unroll = None  # the kernel variant (and its UNROLL) the fused forward's grid is sized for
    if combine:  # the fused forward's tile rule
        # Mc from the MLP's last layer: few pixel blocks per sample when its weights are large, and
        # enough channel splits that each program's slice of them stays small
        # (a program's channel tile never needs more of them than its whole slice may hold)
        def unroll(block_c: int, block_p: int, per_split: int) -> int:
            return combine_unroll(channel_map_args(channel, mc, block_c, x)[2], per_split, c, block_c, x, sc, sp, win,
                                  fused=True)

        plan = plan_fused(n, c, p, sc, sp, x.element_size(), "c", x.device, split, unroll=unroll,
                          weight_bytes=channel.map_weight_bytes if channel is not None else 0,
                          block_c_range=(1, channel.channels_per_slice(c) if channel is not None else 1 << 30),
                          min_split=map_split_min(channel, c),
                          max_walk_tiles=MAX_WALK_TILES if channel is not None or mc is not None
                          or affine is not None else None,
                          kernel="spatial_pool", num_warps=lambda block_c, _block_p: warps_for(block_c), window=win,
                          window_halo=halo,
                          context=(str(x.dtype).removeprefix("torch."),
                                   "none" if channel is None and mc is None else "load" if channel is None
                                   else "fc2" if channel.z is not None else "part",
                                   channel.mlp.hidden if channel is not None else 0, affine is not None)
                          + (("window blocks",) if wblocks else ()))
        block_c, block_p, base, num_splits, per_split = (plan.block_c, plan.block_p, plan.base, plan.num_splits,
                                                         plan.per_split)
        variant, planned_unroll = plan.variant, plan.unroll
    else:
        block_c, block_p = tile_for(unit_axis(sc, sp, c, p), c, p)
        base = n * -(-p // block_p)
        num_splits, per_split = choose_split(base, c, block_c, target_programs(x.device), split)
    acc = compute_dtype(x)
    out = torch.empty((n, num_splits, 2, h, w), dtype=acc, device=x.device)
    cnts = torch.empty((n, num_splits, p), dtype=torch.int32, device=x.device) if count else None
    if mc is not None:
        mc = mc.to(acc).contiguous()
    if channel is not None and mc_out is None:
        raise ValueError("plan_spatial_pool: channel= needs mc_out= (the (N, C) map stage 3 reads)")
    combine = combine and num_splits > 1
    final = torch.empty((n, 2, h, w), dtype=acc, device=x.device) if combine else out
    counters = counter_buffer(x.device, base) if combine else out
    (mcw, mcb, vec), (k, s_wc, s_wk), mc_meta = channel_map_args(channel, mc, block_c, out)
    launch = Launch(
        kernel=spatial_pool_kernel,
        grid=(base, num_splits),
        args=(x, mc if mc is not None else out, out, cnts if count else out, counters, final,
              mcw, mcb, vec, mc_out if mc_out is not None else out,
              c, p, k, per_split, sn, sc, sp, s_wc, s_wk, affine if affine is not None else out),
        meta=dict(**mc_meta, AFFINE=affine is not None, FINALIZE=num_splits == 1, COUNT=count, HINTS=hints,
                  COMBINE=combine,
                  SB=small_tile_rows(block_p, num_splits), BLOCK_C=block_c, BLOCK_P=block_p, ACC_FP64=acc_is_fp64(x),
                  UNROLL=planned_unroll or combine_unroll(mc_meta, per_split, c, block_c, x, sc, sp, win), WIN=win,
                  WBLOCKS=wblocks),
        name="spatial_pool",
        variant=variant,
        num_warps=warps_for(block_c),
        bytes_read=nbytes(x, mc, affine) + (channel.map_total_bytes if channel is not None else 0),
        bytes_written=nbytes(out, cnts, mc_out) + (nbytes(final) if combine else 0),
    )
    tiles = -(-min(per_split, c) // block_c)
    acc_size = out.element_size()
    loads, nb = map_tile_loads(mc_meta, block_c, k, mcw.element_size(), acc_size)
    loads, nb = tiles * loads, tiles * nb
    if affine is not None:  # (scale, shift) of each channel tile: one [2, BLOCK_C] load
        loads, nb = loads + tiles, nb + 2 * tiles * block_c * acc_size
    if mc_meta.get("Z_ONCE"):
        loads, nb = loads + 1, nb + mc_meta["KB"] * acc_size
    if combine:
        loads += 2 * -(-num_splits // launch.meta["SB"])
        nb += 2 * num_splits * block_p * acc_size
    launch.longest = ProgramModel(tiles, min(per_split, c) * block_p * x.element_size(), loads, nb)
    if channel is not None:  # each (sample, pixel block) reads the last layer's rows of every channel
        mlp = channel.mlp
        launch.weight_bytes = base * nbytes(*((mlp.fc2_weight, mlp.fc2_bias) if channel.z is not None
                                              else (mlp.fc1_bias,)))
    launch.x_in_flight = in_flight(min(per_split, c) * min(block_p - halo, p) * x.element_size(), tiles,
                                   launch.meta.get("UNROLL", 1))
    return launch, final if combine else out, cnts


def combine_unroll(mc_meta: dict, per_split: int, c: int, block_c: int, x: torch.Tensor, sc: int, sp: int,
                   win: int = 0, fused: bool = False) -> int:
    """``UNROLL``: x tiles in flight per iteration. Two where a program walks at least two tiles, Mc is
    loaded or absent (a weight tile per x tile would double too), and x's rows are 16-element aligned
    or read through aligned windows (128-bit loads; see :func:`~cbam_triton.launchers._common.rows_16b`);
    four where it walks three or more on the window path, and in the fused forward (``fused``) on
    aligned rows too: there the GPU planner also weighs two and one (fewer tiles in flight can mean
    fewer registers and more resident programs); the unplanned walks (training forward, the
    standalone map) keep two on aligned rows."""
    tiles = -(-min(per_split, c) // block_c)
    if tiles < 2 or mc_meta["MC_MODE"] not in (MC_NONE, MC_LOAD) or not (rows_16b(x, sc, sp) or win):
        return 1
    return 4 if tiles >= 3 and (win or fused) else 2


def _warps(channel: ChannelState | None, block_c: int) -> int:
    """Mc's [BLOCK_C, KB] weight tile next to the x tile: 8 warps keep it under ~128 registers a thread."""
    if channel is None:
        return NUM_WARPS
    kb = small_tile_rows(block_c, channel.mlp.fc2_weight.shape[1] if channel.z is not None else channel.parts.shape[1])
    return 8 if block_c * kb > SMALL_TILE // 2 else NUM_WARPS


def spatial_pool(x: torch.Tensor, mc: torch.Tensor | None = None,
                 split: int | None = None) -> torch.Tensor:
    """``cat([max_C(x * mc), mean_C(x * mc)], 1)`` as an (N, 2, H, W) fp32 (fp64) tensor.

    ``mc`` is the (N, C) channel map or None (plain x). ``x * mc`` is never materialised: x is read
    once. NaN propagates like ``torch.amax``/``mean``.
    """
    c = x.shape[1]
    launch, out, _ = plan_spatial_pool(x, mc, split)
    launch()
    if out.shape[1] == 1:
        return out[:, 0]
    return torch.stack([out[:, :, 0].amax(dim=1), out[:, :, 1].sum(dim=1) / c], dim=1)


def spatial_pool_counts(x: torch.Tensor, mc: torch.Tensor | None = None,
                        split: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`spatial_pool` plus the int32 (N, H*W) number of channels where ``x * mc`` equals the
    max (training forward: the backward splits the max's gradient evenly among ties)."""
    n, c, h, w = x.shape
    launch, out, cnts = plan_spatial_pool(x, mc, split, count=True)
    launch()
    if out.shape[1] == 1:
        return out[:, 0], cnts[:, 0]
    peak, cnt = combine_max_counts(out[:, :, 0].reshape(n, -1, h * w), cnts)
    return torch.stack([peak.reshape(n, h, w), out[:, :, 1].sum(dim=1) / c], dim=1), cnt
