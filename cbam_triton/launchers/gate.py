"""Launcher of stage 3 (:func:`~cbam_triton.kernels.gate.gate_kernel`)."""

from __future__ import annotations

import torch

from cbam_triton.kernels.gate import gate_kernel
from cbam_triton.launchers._common import (
    TILE_ELEMS,
    Launch,
    ProgramModel,
    acc_is_fp64,
    as_ncp,
    compute_dtype,
    long_block,
    nbytes,
    output_for,
    tile_for,
    unit_axis,
)
from cbam_triton.launchers.pool_mlp import ChannelState, channel_map_args, map_tile_loads


def plan_gate(x: torch.Tensor, mc: torch.Tensor | None, ms: torch.Tensor | None, hints: bool = False,
              out: torch.Tensor | None = None, channel: ChannelState | None = None) -> tuple[Launch, torch.Tensor]:
    """Plan stage 3; returns the launch and the output (x's dtype and memory format, or ``out``:
    a tensor of x's shape and dtype whose H and W merge, e.g. a batch slice of a larger output).
    ``hints``: evict_first loads and streaming (.cs) stores (the L2-resident schedule).
    ``channel`` (the fused forward's lone channel gate, instead of ``mc``): each program computes
    its tile's Mc from the MLP's last layer."""
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    out, (on, oc, op) = output_for(x, out)
    long_axis = unit_axis(sc, sp, c, p)
    block_c, block_p = tile_for(long_axis, c, p)
    if channel is not None:  # a program's [BLOCK_C, K] slice of the MLP's last layer stays small
        cap = channel.channels_per_slice(c)
        if block_c > cap:
            block_c = max(16 if long_axis == "c" else 1, 1 << (cap.bit_length() - 1))
            if long_axis == "c":
                block_p = min(TILE_ELEMS // block_c, long_block(p))
    acc = compute_dtype(x)
    if mc is not None:
        mc = mc.to(acc).contiguous()
    if ms is not None:
        ms = ms.to(acc).reshape(n, p).contiguous()
    grid = (n * -(-c // block_c) * -(-p // block_p),)
    (mcw, mcb, vec), (k, s_wc, s_wk), mc_meta = channel_map_args(channel, mc, block_c, out)
    mc_meta.pop("Z_ONCE")  # one channel tile per program: nothing to hoist
    launch = Launch(
        kernel=gate_kernel,
        grid=grid,
        args=(x, mc if mc is not None else out, ms if ms is not None else out, out, mcw, mcb, vec,
              c, p, k, sn, sc, sp, on, oc, op, s_wc, s_wk),
        meta=dict(**mc_meta, HAS_MS=ms is not None, HINTS=hints,
                  BLOCK_C=block_c, BLOCK_P=block_p, ACC_FP64=acc_is_fp64(x)),
        name="gate",
        bytes_read=nbytes(x, mc, ms) + (channel.map_total_bytes if channel is not None else 0),
        bytes_written=nbytes(out),
    )
    launch.x_in_flight = min(block_c, c) * min(block_p, p) * x.element_size()  # one tile per program
    if channel is not None:  # every tile reads its channels' rows of the last layer
        mlp = channel.mlp
        launch.weight_bytes = n * -(-p // block_p) * nbytes(
            *((mlp.fc2_weight, mlp.fc2_bias) if channel.z is not None else (mlp.fc1_bias,)))
        loads, nb = map_tile_loads(dict(mc_meta, Z_ONCE=False), block_c, k, mcw.element_size(), 4)
        launch.longest = ProgramModel(1, block_c * block_p * x.element_size(), loads, nb)
    return launch, out


def gate(x: torch.Tensor, mc: torch.Tensor | None = None, ms: torch.Tensor | None = None) -> torch.Tensor:
    """``x * mc[:, :, None, None] * ms[:, None]`` in one read of x and one write of the output.

    ``mc``: (N, C) or None; ``ms``: (N, H, W) / (N, 1, H, W) or None. Products in fp32 (fp64),
    output in x's dtype and memory format.
    """
    launch, out = plan_gate(x, mc, ms)
    launch()
    return out
