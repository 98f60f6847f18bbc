"""Autograd wiring and dispatch of the three big-tensor stages.

Each stage runs the Triton launcher (backend ``"triton"``) or the PyTorch version
(backend ``"torch"``). When autograd needs a gradient through a Triton stage, an
``autograd.Function`` runs the Triton forward and, in backward, recomputes the stage with the
PyTorch version and differentiates that: gradients are exactly the reference's (max ties split
evenly, as ``torch.amax`` does), at the cost of full-size temporaries during backward only.
Only x and the small maps are saved for backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.autograd.function import once_differentiable

from cbam_triton import _torch_stages


def _launchers():
    from cbam_triton import launchers

    return launchers


def _recompute_grads(fn: Callable[..., object], inputs: Sequence[torch.Tensor | None],
                     needs: Sequence[bool], grads: Sequence[torch.Tensor | None]) -> tuple:
    """Gradients of ``fn(*inputs)`` w.r.t. the inputs flagged in ``needs``, given output grads."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(inputs, needs)]
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        wanted = [t for t, need in zip(leaves, needs) if t is not None and need]
        if not pairs or not wanted:
            return tuple(None for _ in inputs)
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                       allow_unused=True))
    return tuple(next(got) if t is not None and need else None for t, need in zip(inputs, needs))


class _ChannelPoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor):
        ctx.save_for_backward(x)
        return _launchers().channel_pool(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_avg, g_max):
        (x,) = ctx.saved_tensors
        return _recompute_grads(_torch_stages.channel_pool, (x,), ctx.needs_input_grad, (g_avg, g_max))


class _SpatialPoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, mc: torch.Tensor | None):
        ctx.save_for_backward(x, mc)
        return _launchers().spatial_pool(x, mc)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, mc = ctx.saved_tensors
        return _recompute_grads(_torch_stages.spatial_pool, (x, mc), ctx.needs_input_grad, (g,))


class _GateFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, mc: torch.Tensor | None, ms: torch.Tensor | None):
        ctx.save_for_backward(x, mc, ms)
        return _launchers().gate(x, mc, ms)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, mc, ms = ctx.saved_tensors
        return _recompute_grads(_torch_stages.gate, (x, mc, ms), ctx.needs_input_grad, (g,))


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def channel_pool(x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(avg, max) over H*W as (N, C) fp32 (fp64) tensors."""
    if backend == "torch":
        return _torch_stages.channel_pool(x)
    if _needs_grad(x):
        return _ChannelPoolFn.apply(x)
    return _launchers().channel_pool(x)


def spatial_pool(x: torch.Tensor, mc: torch.Tensor | None, backend: str) -> torch.Tensor:
    """(N, 2, H, W) map ``[max_C, mean_C]`` of ``x * mc`` in fp32 (fp64)."""
    if backend == "torch":
        return _torch_stages.spatial_pool(x, mc)
    if _needs_grad(x, mc):
        return _SpatialPoolFn.apply(x, mc)
    return _launchers().spatial_pool(x, mc)


def gate(x: torch.Tensor, mc: torch.Tensor | None, ms: torch.Tensor | None, backend: str) -> torch.Tensor:
    """``x * mc * ms`` in x's dtype and memory format."""
    if backend == "torch":
        return _torch_stages.gate(x, mc, ms)
    if _needs_grad(x, mc, ms):
        return _GateFn.apply(x, mc, ms)
    return _launchers().gate(x, mc, ms)
