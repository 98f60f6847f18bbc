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
from cbam_triton.fusion import BlockTail, ChannelAffine, ChannelMLP, SpatialConv


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


#: what a module tells :func:`run` about fusing its small parts into the kernels: the
#: ``(ChannelMLP | None, SpatialConv | None)`` of its branches, or why it can't (a reason string)
FusedParts = Callable[[], "tuple[ChannelMLP | None, SpatialConv | None] | str"]


def fused(x: torch.Tensor, mlp: ChannelMLP | None, conv: SpatialConv | None, schedule: str = "auto",
          l2_budget_bytes: int | None = None) -> torch.Tensor:
    """The fused inference forward (one custom operator; see :mod:`cbam_triton.launchers.forward`)."""
    fc = mlp if mlp is not None else ChannelMLP(None, None, None, None, "avg+max", "identity")  # type: ignore[arg-type]
    sc = conv if conv is not None else SpatialConv(None, None)  # type: ignore[arg-type]
    args = (x, fc.fc1_weight, fc.fc1_bias, fc.fc2_weight, fc.fc2_bias, sc.weight, sc.bias, sc.bn_mean, sc.bn_var,
            sc.bn_weight, sc.bn_bias)
    # a plain eager call runs the op's implementation directly: the dispatcher would do only that
    call = ops._fused_forward_impl if ops.direct_call_ok(*args) else torch.ops.cbam_triton.fused_forward
    return call(*args, float(sc.bn_eps), fc.pools, fc.act, sc.input, schedule, l2_budget_bytes)


def fused_tail(y: torch.Tensor, mlp: ChannelMLP, conv: SpatialConv | None, tail: BlockTail, schedule: str = "auto",
               l2_budget_bytes: int | None = None) -> torch.Tensor:
    """A residual block's fused inference tail ``act(CBAM(affine(y)) + residual)`` (one custom
    operator, ``torch.ops.cbam_triton.fused_tail``; see :func:`cbam_triton.launchers.forward.fused_tail`)."""
    sc = conv if conv is not None else SpatialConv(None, None)  # type: ignore[arg-type]
    aff = tail.affine if tail.affine is not None else ChannelAffine(None, None)  # type: ignore[arg-type]
    args = (y, mlp.fc1_weight, mlp.fc1_bias, mlp.fc2_weight, mlp.fc2_bias, sc.weight, sc.bias, sc.bn_mean, sc.bn_var,
            sc.bn_weight, sc.bn_bias)
    more = (aff.mean, aff.var, aff.weight, aff.bias)
    call = ops._fused_tail_impl if ops.direct_call_ok(*args, *more, tail.residual) \
        else torch.ops.cbam_triton.fused_tail
    return call(*args, float(sc.bn_eps), *more, float(aff.eps), tail.residual, mlp.pools, mlp.act, sc.input,
                tail.act, schedule, l2_budget_bytes)


def run(x: torch.Tensor, backend: str,
        channel_map: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
        spatial_map: Callable[[torch.Tensor, bool], torch.Tensor] | None,
        params: Iterable[torch.Tensor | None] = (), fused_parts: FusedParts | None = None,
        schedule: str = "auto", l2_budget_bytes: int | None = None) -> torch.Tensor:
    """The block's forward ``x * Mc * Ms`` with ``Mc = channel_map(avg, max)`` (N, C) and
    ``Ms = spatial_map(pooled, update_stats)`` (N, 1, H, W); either map may be None (a lone gate).

    * Triton backend, autograd recording (x or a parameter in ``params`` requires grad):
      :func:`cbam_triton.training.forward`, the same values and a backward of three Triton kernels.
    * Triton backend, inference, ``fused_parts()`` gives the small parts: :func:`fused`, three
      launches per chunk under ``schedule`` (``"auto"``, ``"l2"``, ``"stream"``).
    * Otherwise the three stages with the small parts in PyTorch between them (``schedule="l2"``
      is then refused: the L2 schedule needs the fused kernels). The torch backend ignores
      ``schedule`` (it is a property of the Triton kernels).
    """
    if x.shape[0] == 0:  # nothing to compute or launch; still part of the autograd graph
        return x.clone() if needs_grad(x, params) else torch.empty_like(x)
    if backend == "triton" and needs_grad(x, params):
        return training.forward(x, channel_map, spatial_map)
    if backend == "triton" and not _exporting():
        parts = fused_parts() if fused_parts is not None else "no fusable description of the small parts"
        if not isinstance(parts, str):
            return fused(x, parts[0], parts[1], schedule, l2_budget_bytes)
        if schedule == "l2":
            raise ValueError(f"schedule='l2' needs the small parts fused into the kernels, which this "
                             f"configuration does not allow: {parts}. Use schedule='auto' or 'stream'.")
    mc = channel_map(*channel_pool(x, backend)) if channel_map is not None else None
    ms = spatial_map(spatial_pool(x, mc, backend), True) if spatial_map is not None else None
    return gate(x, mc, ms, backend)
