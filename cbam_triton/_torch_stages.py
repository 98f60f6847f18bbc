"""The three big-tensor stages in plain PyTorch (same signatures and dtypes as the launchers).

Used where Triton can't run (CPU without the interpreter, other devices, no triton installed) and
as the autograd recipe for gradients until the Triton backward lands. They materialise full-size
temporaries; the Triton launchers never do.
"""

from __future__ import annotations

import torch

from cbam_triton._layout import compute_dtype


def channel_pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(avg, max) over H*W: two (N, C) tensors in fp32 (fp64 for fp64 x)."""
    xa = x.to(compute_dtype(x))
    return xa.mean(dim=(2, 3)), xa.amax(dim=(2, 3))


def spatial_pool(x: torch.Tensor, mc: torch.Tensor | None = None) -> torch.Tensor:
    """``cat([max_C(x * mc), mean_C(x * mc)], 1)``: (N, 2, H, W) in fp32 (fp64)."""
    xa = x.to(compute_dtype(x))
    if mc is not None:
        xa = xa * mc.to(xa.dtype)[:, :, None, None]
    return torch.cat([xa.amax(dim=1, keepdim=True), xa.mean(dim=1, keepdim=True)], dim=1)


def gate(x: torch.Tensor, mc: torch.Tensor | None = None, ms: torch.Tensor | None = None) -> torch.Tensor:
    """``(x * mc) * ms`` computed in fp32 (fp64), returned in x's dtype."""
    n, _, h, w = x.shape
    v = x.to(compute_dtype(x))
    if mc is not None:
        v = v * mc.to(v.dtype)[:, :, None, None]
    if ms is not None:
        v = v * ms.to(v.dtype).reshape(n, 1, h, w)
    return v.to(x.dtype)


def channel_affine(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None,
                   bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """A residual block's last BatchNorm in eval mode, in y's dtype: what ``nn.BatchNorm2d`` in
    eval computes (``F.batch_norm`` with the running statistics)."""
    return torch.nn.functional.batch_norm(y, mean, var, weight, bias, False, 0.0, eps)


def tail_epilogue(out: torch.Tensor, residual: torch.Tensor | None, act: str) -> torch.Tensor:
    """``act(out + residual)`` in out's dtype, as the blocks compute it (``x += shortcut;
    relu(x)``): the composed block tail's last two ops, in place on ``out``."""
    if residual is not None:
        out = out.add_(residual)
    if act == "relu":
        return out.relu_()
    return torch.nn.functional.silu(out, inplace=True) if act == "silu" else out
