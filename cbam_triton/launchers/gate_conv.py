"""Launcher of stage 3 of the fused forward (:func:`~cbam_triton.kernels.gate_conv.gate_conv_kernel`)."""

from __future__ import annotations

import os

import torch

from cbam_triton.fused_parts import SPATIAL_INPUTS, TAIL_ACTIVATIONS, SpatialConv
from cbam_triton.kernels.gate_conv import gate_conv_kernel
from cbam_triton.launchers._common import (
    MAX_WALK_TILES,
    NUM_WARPS,
    Launch,
    ProgramModel,
    acc_is_fp64,
    as_ncp,
    compute_dtype,
    in_flight,
    nbytes,
    next_pow2,
    output_for,
    plan_fused,
    rows_16b,
    window_blocks,
    window_elems,
)

#: the conv's taps are vectorised as a [TAPS, BLOCK_P] tile when it holds at most this many elements
TAPS_TILE = 2048
#: the window path loads Mc once per loop turn (two [UNROLL, BLOCK_C] tiles): at most this many turns a
#: program, so that its loads that are not x stay within 32 (the conv's 2k + 2 = 16 at k = 7, up to 5
#: scalars, 2 a turn)
MAX_WINDOW_TURNS = 5


def conv_taps(ksize: int, block_p: int, device: torch.device | None = None) -> int:
    """``TAPS`` of the kernel: the next power of two >= k*k when a ``[TAPS, BLOCK_P]`` tile fits
    :data:`TAPS_TILE` elements (small pixel blocks), else 0 (the rows unrolled, a ``[KP, BLOCK_P]``
    tile each).

    Off a GPU (Triton's interpreter, where every op costs a numpy call and registers cost nothing)
    the taps are always vectorised; ``CBAM_TRITON_CONV_TAPS=loop|vector`` forces either path (the
    tests run both)."""
    taps = next_pow2(ksize * ksize)
    forced = os.environ.get("CBAM_TRITON_CONV_TAPS")
    if forced in ("loop", "vector"):
        return taps if forced == "vector" else 0
    if device is not None and device.type == "cpu":
        return taps
    return taps if taps * block_p <= TAPS_TILE else 0


def plan_gate_conv(x: torch.Tensor, mc: torch.Tensor | None, pooled: torch.Tensor, conv: SpatialConv,
                   hints: bool = False, out: torch.Tensor | None = None,
                   split: int | None = None, *, tail_affine: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, act: str = "identity") -> tuple[Launch, torch.Tensor]:
    """Plan the fused spatial map + gating: ``out = x * mc * sigmoid(bn(conv(pooled)))``.

    ``pooled`` is the (N, 2, H, W) [max, mean] map of stage 2 (contiguous, x's compute dtype);
    ``mc`` the (N, C) channel map or None. Same walk as stage 2: a program owns a pixel block and
    walks a c-range (split to fill the GPU). Returns the launch and the output (or ``out``).

    The fused block tail: ``tail_affine`` (stage 1's (2, C) ``(scale, shift)``: ``out = (x * scale +
    shift) * Mc * Ms``), ``residual`` (x's shape and dtype, any mergeable strides: added
    after the gating) and ``act`` (a key of TAIL_ACTIVATIONS, after the addition).
    """
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    out, (on, oc, op) = output_for(x, out)
    kp = next_pow2(conv.ksize)
    rn = rc = rp = 0
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)} and dtype {x.dtype}, got "
                             f"{tuple(residual.shape)} {residual.dtype}")
        residual, (rn, rc, rp) = as_ncp(residual)
    # unaligned NCHW rows (out, and the block tail's residual, laid out as x): 16-byte chunks shared out
    # among the rows, one pixel block per sample, or pixel blocks of a longer row (WBLOCKS)
    win = window_elems(x, sn, sc, sp)
    if not (win and p >= win and (on, oc, op) == (sn, sc, sp) and (residual is None or (rn, rc, rp) == (sn, sc, sp))):
        win = 0
    wblocks = bool(window_blocks(p, win))
    halo = win - 1 if wblocks else 0  # the lanes of a pixel block that its rows' chunk alignment may take
    # more x tiles in flight per iteration where a program walks two or more and its loads are 128-bit
    # (a residual in y's layout and also aligned, or read through y's windows)
    wide = bool(rows_16b(x, sc, sp) or win) and (
        residual is None or win > 0 or _same_rows(sc, sp, rc, rp) and rows_16b(residual, rc, rp))

    def unroll(block_c: int, block_p: int, per_split: int) -> int:
        """x tiles in flight per iteration: 2, or 4 on the window path (2048-element tiles, per-lane
        tables shared by the four) where a program walks three or more and streams no residual."""
        tiles = -(-min(per_split, c) // block_c)
        return 1 if not wide or tiles < 2 else 4 if win and tiles >= 3 and residual is None else 2

    # the block tail's residual tiles next to y's on rows Triton can't vectorise (16-bit loads: a
    # register per element) take 8 warps, as the plain gate's 4 do without them; the window path's
    # conv runs its rows in a rolled loop: 4 warps (sm_90 118-168 registers at 14²)
    heavy = residual is not None and not (rows_16b(x, sc, sp) or win)

    def warps_of(block_c: int, block_p: int) -> int:
        return 8 if heavy else NUM_WARPS if win else _warps(conv.ksize, block_p, x)

    # the conv re-reads the map k*k times a pixel (from L1): pixel blocks of at most 2048 / (2 * KP)
    # keep that (and the row path's [KP, BLOCK_P] tiles) small
    plan = plan_fused(n, c, p, sc, sp, x.element_size(), "c", x.device, split,
                      max_long_p=max(16, TAPS_TILE // (2 * kp)),
                      max_walk_tiles=(4 * MAX_WINDOW_TURNS if win else MAX_WALK_TILES) if mc is not None else None,
                      max_walk_turns=MAX_WINDOW_TURNS if win and mc is not None else None, kernel="gate_conv",
                      num_warps=warps_of, window=win, unroll=unroll, window_halo=halo,
                      context=(str(x.dtype).removeprefix("torch."), mc is not None, tail_affine is not None,
                               residual is not None, act, conv.ksize) + (("window blocks",) if wblocks else ()))
    warps = warps_of(plan.block_c, plan.block_p)
    block_c, block_p, base = plan.block_c, plan.block_p, plan.base
    num_splits, per_split = plan.num_splits, plan.per_split
    acc = compute_dtype(x)
    if mc is not None:
        mc = mc.to(acc).contiguous()
    if tail_affine is not None and mc is None:
        raise ValueError("plan_gate_conv: tail_affine needs the channel map mc")
    pooled = pooled.to(acc).contiguous()
    # the weight is read in place through its strides (a channels_last copy would be a tensor that
    # no guard sees: an in-place edit of the weight would miss a replayed launch)
    weight = conv.weight
    _, s_wc, s_wh, s_ww = weight.stride()
    has_bn = conv.bn_mean is not None and conv.bn_var is not None
    affine = has_bn and conv.bn_weight is not None and conv.bn_bias is not None
    small = (mc, pooled, weight, conv.bias, conv.bn_mean, conv.bn_var, conv.bn_weight, conv.bn_bias)
    taps = conv_taps(conv.ksize, block_p, x.device)
    launch = Launch(
        kernel=gate_conv_kernel,
        grid=(base, num_splits),
        args=(x, mc if mc is not None else pooled, pooled, out, weight,
              conv.bias if conv.bias is not None else weight,
              conv.bn_mean if has_bn else weight, conv.bn_var if has_bn else weight,
              conv.bn_weight if affine else weight, conv.bn_bias if affine else weight, float(conv.bn_eps),
              c, p, h, w, per_split, s_wc, s_wh, s_ww, sn, sc, sp, on, oc, op,
              residual if residual is not None else x, rn, rc, rp, tail_affine if tail_affine is not None else pooled),
        meta=dict(AFFINE=tail_affine is not None, RESIDUAL=residual is not None, TAIL_ACT=TAIL_ACTIVATIONS[act],
                  HAS_MC=mc is not None, HAS_CONV_BIAS=conv.bias is not None, HAS_BN=has_bn, HAS_BN_AFFINE=affine,
                  SPATIAL_INPUT=SPATIAL_INPUTS[conv.input], KSIZE=conv.ksize,
                  TAPS=taps, KP=kp, HINTS=hints,
                  BLOCK_C=block_c, BLOCK_P=block_p, ACC_FP64=acc_is_fp64(x),
                  UNROLL=plan.unroll, WIN=win, WBLOCKS=wblocks),
        name="gate_conv",
        variant=plan.variant,
        num_warps=warps,
        bytes_read=nbytes(x, residual, tail_affine, *small),
        bytes_written=nbytes(out),
    )
    acc_size = pooled.element_size()
    tiles = -(-min(per_split, c) // block_c)
    k = conv.ksize
    if taps:
        loads, nb = 4, 2 * taps * block_p * acc_size + 2 * taps * weight.element_size()
    else:
        loads, nb = 2 * k + 2, k * 2 * kp * block_p * acc_size + 2 * kp * kp * weight.element_size()
    scalars = sum(t is not None for t in small[3:]) if has_bn else int(conv.bias is not None)
    # Mc (+ scale, shift): one load a tile; the window path loads the turn's Mc and each row's next
    # channel's (wrapped lanes) as two [UNROLL, BLOCK_C] tiles a turn (+ scale, shift: all six rows
    # as one [8, UNROLL, BLOCK_C] load)
    unrolled = launch.meta["UNROLL"]
    turns = -(-tiles // unrolled)
    per_tile = (3 if tail_affine is not None else 1) if mc is not None and not win else 0
    per_turn = (1 if tail_affine is not None else 2) if win and mc is not None else 0
    loads += scalars + (per_turn * turns if win else tiles * (mc is not None))
    nb += scalars * weight.element_size() + per_tile * tiles * block_c * acc_size
    if per_turn:  # (Mc, and the affine's two vectors) of the tiles' channels and of the next ones
        nb += (6 if tail_affine is not None else 2) * turns * unrolled * block_c * acc_size
    streams = 2 if residual is not None else 1  # the residual's tiles are streamed like x's
    launch.longest = ProgramModel(streams * tiles, streams * min(per_split, c) * min(block_p, p) * x.element_size(),
                                  loads, nb)
    launch.x_in_flight = streams * in_flight(min(per_split, c) * min(block_p - halo, p) * x.element_size(), tiles,
                                             launch.meta.get("UNROLL", 1))
    if residual is not None:
        launch.streamed = (residual,)
    return launch, out


def _same_rows(sc: int, sp: int, rc: int, rp: int) -> bool:
    """Whether the residual's unit-stride axis is y's (its tiles then load as y's: 128-bit where
    aligned); a residual in another layout is loaded element by element and gets no second tile."""
    return (sp == 1) == (rp == 1) and (sc == 1) == (rc == 1)


def _warps(ksize: int, block_p: int, x: torch.Tensor) -> int:
    """The conv's row tiles next to the x tile: 8 warps keep long fp16/bf16 pixel blocks near 100
    registers a thread."""
    kp = next_pow2(ksize)
    taps = conv_taps(ksize, block_p, x.device)
    return 8 if taps == 0 and 2 * kp * block_p > TAPS_TILE // 2 and x.element_size() < 4 else NUM_WARPS
