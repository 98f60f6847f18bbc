"""Tensor conventions shared by launchers, fake kernels and the PyTorch stages (no triton import):
the (n, c, p) view of a 4-D tensor, output allocation, and the accumulation dtype."""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation / small-map dtype: fp64 for fp64 inputs, fp32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def ncp_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """Strides of ``t`` viewed as (N, C, P = H*W), or None when H and W cannot be merged."""
    _, _, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    if h == 1:
        return sn, sc, sw
    if w == 1:
        return sn, sc, sh
    if sh == w * sw:
        return sn, sc, sw
    return None


def as_ncp(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """x and its (n, c, p) strides; views whose H and W can't be merged are copied (NCHW)."""
    strides = ncp_strides(x)
    if strides is None:
        x = x.contiguous()
        strides = ncp_strides(x)
        assert strides is not None
    return x, strides


def empty_output(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Output like x: same memory format (NCHW or channels_last, as eager ops would choose)."""
    out = torch.empty_like(x, memory_format=torch.preserve_format)
    strides = ncp_strides(out)
    if strides is None:  # a dense but exotic permutation of x: fall back to NCHW
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        strides = ncp_strides(out)
        assert strides is not None
    return out, strides
