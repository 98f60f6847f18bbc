"""The three big-tensor stages on either backend (the unfused path; :mod:`cbam_triton.dispatch` chooses).

Backend ``"triton"`` calls the custom operators ``torch.ops.cbam_triton.*`` (:mod:`cbam_triton.ops`:
Triton launchers, fake implementations, autograd whose backward recomputes the stage in PyTorch and
differentiates it — the reference's gradients, max ties split evenly as ``torch.amax`` does; only
x and the small maps are saved). Backend ``"torch"`` runs the PyTorch versions directly.

The whole block's forward, and how it chooses between these stages, the fused forward and the training
path, is :mod:`cbam_triton.dispatch`.
"""

from __future__ import annotations

import torch

from cbam_triton import _torch_stages, ops  # noqa: F401 (registers torch.ops.cbam_triton)


def channel_pool(x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(avg, max) over H*W as (N, C) fp32 (fp64) tensors."""
    if backend == "torch":
        return _torch_stages.channel_pool(x)
    return torch.ops.cbam_triton.channel_pool(x)


def spatial_pool(x: torch.Tensor, mc: torch.Tensor | None, backend: str) -> torch.Tensor:
    """(N, 2, H, W) map ``[max_C, mean_C]`` of ``x * mc`` in fp32 (fp64)."""
    if backend == "torch":
        return _torch_stages.spatial_pool(x, mc)
    return torch.ops.cbam_triton.spatial_pool(x, mc)


def gate(x: torch.Tensor, mc: torch.Tensor | None, ms: torch.Tensor | None, backend: str) -> torch.Tensor:
    """``x * mc * ms`` in x's dtype and memory format."""
    if backend == "torch":
        return _torch_stages.gate(x, mc, ms)
    return torch.ops.cbam_triton.gate(x, mc, ms)
