"""Dispatch of the three big-tensor stages.

Backend ``"triton"`` calls the custom operators ``torch.ops.cbam_triton.*`` (:mod:`cbam_triton.ops`:
Triton launchers, fake implementations, autograd whose backward recomputes the stage in PyTorch and
differentiates it — the reference's gradients, max ties split evenly as ``torch.amax`` does; only
x and the small maps are saved). Backend ``"torch"`` runs the PyTorch versions directly.

:func:`run` is the whole block's forward used by every module: the three stages around the small
parts, or, when autograd needs gradients on the Triton backend, :func:`cbam_triton.training.forward`
(same values, Triton backward kernels, only small tensors saved besides x).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from cbam_triton import _torch_stages, ops, training  # noqa: F401 (registers torch.ops.cbam_triton)


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


def _exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def needs_grad(x: torch.Tensor, params: Iterable[torch.Tensor | None]) -> bool:
    """Whether autograd will record this forward: grad mode on and x or a parameter requires grad.

    False while ``torch.export`` traces: an exported program keeps the plain three-operator graph
    (which :func:`cbam_triton.decompositions` lowers to standard ops; its operators are still
    differentiable through their registered PyTorch backward).
    """
    if not torch.is_grad_enabled() or _exporting():
        return False
    return x.requires_grad or any(p is not None and p.requires_grad for p in params)


def run(x: torch.Tensor, backend: str,
        channel_map: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
        spatial_map: Callable[[torch.Tensor, bool], torch.Tensor] | None,
        params: Iterable[torch.Tensor | None] = ()) -> torch.Tensor:
    """The block's forward ``x * Mc * Ms`` with ``Mc = channel_map(avg, max)`` (N, C) and
    ``Ms = spatial_map(pooled, update_stats)`` (N, 1, H, W); either map may be None (a lone gate).

    With the Triton backend and autograd recording (x or a parameter in ``params`` requires grad),
    this is :func:`cbam_triton.training.forward`: the same values, and a backward of three Triton
    kernels. Otherwise the three stages run directly (for the torch backend autograd differentiates
    the PyTorch stages).
    """
    if x.shape[0] == 0:  # nothing to compute or launch; still part of the autograd graph
        return x.clone() if needs_grad(x, params) else torch.empty_like(x)
    if backend == "triton" and needs_grad(x, params):
        return training.forward(x, channel_map, spatial_map)
    mc = channel_map(*channel_pool(x, backend)) if channel_map is not None else None
    ms = spatial_map(spatial_pool(x, mc, backend), True) if spatial_map is not None else None
    return gate(x, mc, ms, backend)
