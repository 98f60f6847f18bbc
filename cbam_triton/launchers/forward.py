"""The fused inference forward: three launches per chunk of the batch.

Per chunk (see :mod:`cbam_triton.schedule`): stage 1 pools and computes Mc (MLP folded in), stage 2
pools ``x * Mc`` across channels (splits combined in-kernel), stage 3 computes Ms (conv + BN +
sigmoid folded in) and writes the output slice. No PyTorch op runs between the launches; a lone
channel gate uses the plain gate kernel as its second launch.
"""

from __future__ import annotations

import torch

from cbam_triton.fusion import ChannelMLP, SpatialConv
from cbam_triton.launchers._common import Launch, as_ncp, empty_output, nbytes
from cbam_triton.launchers.gate import plan_gate
from cbam_triton.launchers.gate_conv import plan_gate_conv
from cbam_triton.launchers.pool_mlp import plan_channel_pool_mlp
from cbam_triton.launchers.spatial_pool import plan_spatial_pool
from cbam_triton.schedule import Schedule


def plan_chunk(x: torch.Tensor, out: torch.Tensor, mlp: ChannelMLP | None, conv: SpatialConv | None,
               hints: bool) -> list[Launch]:
    """The launches of one chunk (x and out: the chunk's slices), in order."""
    if mlp is None and conv is None:
        raise ValueError("the fused forward needs a channel MLP, a spatial conv, or both")
    launches: list[Launch] = []
    mc = None
    if mlp is not None:
        launch, mc, _ = plan_channel_pool_mlp(x, mlp, hints=hints)
        launches.append(launch)
    if conv is None:
        launch, _ = plan_gate(x, mc, None, hints=hints, out=out)
        launches.append(launch)
    else:
        launch, pooled, _ = plan_spatial_pool(x, mc, hints=hints, combine=True)
        launches.append(launch)
        launch, _ = plan_gate_conv(x, mc, pooled, conv, hints=hints, out=out)
        launches.append(launch)
    if hints:  # x re-read by the later stages: served by L2 (the schedule's premise)
        for launch in launches[1:]:
            launch.l2_bytes = nbytes(x)
    return launches


def plan_fused_forward(x: torch.Tensor, mlp: ChannelMLP | None, conv: SpatialConv | None,
                       schedule: Schedule) -> tuple[list[Launch], torch.Tensor]:
    """Every launch of the fused forward of x under ``schedule``, and the output they fill."""
    x, _ = as_ncp(x)  # a view whose H and W don't merge is copied once, not once per chunk
    out, _ = empty_output(x)
    launches: list[Launch] = []
    n = x.shape[0]
    for start, end in schedule.chunks(n):
        whole = (start, end) == (0, n)  # one chunk: no slicing (and no dispatch of view ops)
        launches += plan_chunk(x if whole else x[start:end], out if whole else out[start:end], mlp, conv,
                               schedule.hints)
    return launches, out


def fused_forward(x: torch.Tensor, mlp: ChannelMLP | None, conv: SpatialConv | None,
                  schedule: Schedule) -> torch.Tensor:
    """``x * Mc * Ms`` with the small parts inside the kernels: ``3 * num_chunks`` launches."""
    launches, out = plan_fused_forward(x, mlp, conv, schedule)
    for launch in launches:
        launch()
    return out
