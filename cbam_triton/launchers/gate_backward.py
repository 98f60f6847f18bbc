"""Launcher of the gate backward (:func:`~cbam_triton.kernels.gate_backward.gate_backward_kernel`)."""

from __future__ import annotations

import torch

from cbam_triton.kernels.gate_backward import gate_backward_kernel
from cbam_triton.launchers._common import (
    Launch,
    acc_is_fp64,
    as_ncp,
    compute_dtype,
    nbytes,
    plan_walk,
    sum_partials,
)


def plan_gate_backward(g: torch.Tensor, x: torch.Tensor, mc: torch.Tensor | None, ms: torch.Tensor | None,
                       split: int | None = None) -> tuple[Launch, torch.Tensor | None, torch.Tensor | None]:
    """Plan the gate backward; returns the launch and its (N, K, P) d_ms / (N, K, C) d_mc partials
    (None for an absent map). The tile follows x's layout; g is read with its own strides."""
    n, c, h, w = x.shape
    p = h * w
    x, (sn, sc, sp) = as_ncp(x)
    g, (gn, gc, gp) = as_ncp(g)
    walk = plan_walk(n, c, p, sc, sp, x.device, split)
    acc = compute_dtype(x)
    k_ms, k_mc = (walk.num_splits, walk.num_blocks) if walk.walk_c else (walk.num_blocks, walk.num_splits)
    dms = torch.empty((n, k_ms, p), dtype=acc, device=x.device) if ms is not None else None
    dmc = torch.empty((n, k_mc, c), dtype=acc, device=x.device) if mc is not None else None
    if mc is not None:
        mc = mc.to(acc).contiguous()
    if ms is not None:
        ms = ms.to(acc).reshape(n, p).contiguous()
    dummy = dms if dms is not None else dmc
    launch = Launch(
        kernel=gate_backward_kernel,
        grid=walk.grid,
        args=(g, x, mc if mc is not None else dummy, ms if ms is not None else dummy,
              dms if dms is not None else dummy, dmc if dmc is not None else dummy,
              c, p, walk.per_split, gn, gc, gp, sn, sc, sp),
        meta=dict(HAS_MC=mc is not None, HAS_MS=ms is not None, WALK_C=walk.walk_c,
                  BLOCK_C=walk.block_c, BLOCK_P=walk.block_p, ACC_FP64=acc_is_fp64(x)),
        name="gate_backward",
        bytes_read=nbytes(g, x, mc, ms),
        bytes_written=nbytes(dms, dmc),
    )
    return launch, dms, dmc


def gate_backward(g: torch.Tensor, x: torch.Tensor, mc: torch.Tensor | None, ms: torch.Tensor | None,
                  split: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``out = x * mc[:, :, None, None] * ms`` with respect to the maps, from the
    output gradient g: ``(d_mc (N, C), d_ms (N, H*W))`` in fp32 (fp64), None for an absent map.
    One read of g and of x; nothing full-size is written."""
    if mc is None and ms is None:
        raise ValueError("gate_backward needs mc or ms")
    launch, dms, dmc = plan_gate_backward(g, x, mc, ms, split)
    launch()
    return (sum_partials(dmc) if dmc is not None else None), (sum_partials(dms) if dms is not None else None)
