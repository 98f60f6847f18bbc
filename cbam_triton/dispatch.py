"""How a cbam-triton module's forward chooses its path — the one place to read it.

Every module (:class:`~cbam_triton.CBAM`, ``ChannelGate``, ``SpatialGate``, ``ConvertedCBAM``) calls
:func:`module_forward`, and :func:`cbam_triton.functional.cbam` calls :func:`prepare` then :func:`run`:

1. **Traced by torch.compile** (eval, no grad, Triton backend): :func:`cbam_triton.compiled.forward` records
   the block as one opaque operator call, which runs steps 2-5 at run time.
2. **Eager, a configuration seen before**: :func:`cbam_triton.fastpath.forward` checks its guard and replays
   the recorded launches (a repeated call ends here).
3. **torch.fx.symbolic_trace**: the module is recorded as one leaf node (:func:`cbam_triton.deploy.fx_leaf_call`).
4. :func:`prepare`: x and the weights validated (:mod:`cbam_triton.validation`), the backend resolved —
   ``"torch"`` while exporting or tracing for deployment, or without Triton (:mod:`cbam_triton._backend`).
5. :func:`run`:
   * N == 0: an empty output, nothing launched;
   * Triton, autograd recording: :func:`cbam_triton.training.forward` (Triton backward, 3 launches);
   * Triton, the small parts fusable: :func:`fused` — ``torch.ops.cbam_triton.fused_forward``, three launches
     per chunk (:mod:`cbam_triton.launchers.forward`), recorded for step 2 when the fast path builds an entry;
   * otherwise the three stages (:mod:`cbam_triton.stages`) with the small parts in PyTorch between them.
   While ``torch.export`` records inside :func:`cbam_triton.package_kernels`, the fused forward is
   ``torch.ops.cbam_triton.fused_forward_kernels`` (a ``triton_op``: the kernels for AOTInductor) and
   anything unfusable records standard ops.

docs/design.md ("The path of a call") draws a first and a repeated call file by file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from cbam_triton import compiled, fastpath, ops, stages, training
from cbam_triton._backend import block_backend
from cbam_triton.deploy import fx_leaf_call, packaging, quiet_shape_checks
from cbam_triton.fused_parts import BlockTail, ChannelAffine, ChannelMLP, SpatialConv
from cbam_triton.validation import check_devices, validate_input

__all__ = ["FusedParts", "fused", "fused_tail", "module_forward", "needs_grad", "prepare", "run"]

_is_compiling = torch.compiler.is_compiling


def module_forward(module: nn.Module, x: torch.Tensor, backend: str | None, cached: bool) -> Any:
    """A module's forward, steps 1-5 above. ``module`` provides ``dispatch_spec()`` (its channel
    count, channel map and spatial map, each None where it has none), ``fused_parts()``,
    ``schedule`` and ``l2_budget_bytes``; ``cached=False`` (an explicit ``backend=`` argument)
    skips steps 1-2. (Nothing of the module is read before step 1: what dynamo reads while tracing
    becomes a guard that every compiled call checks.)"""
    if cached:
        out = compiled.forward(module, x) if _is_compiling() else fastpath.forward(module, x)
        if out is not None:
            return out
    traced = fx_leaf_call(module, x)
    if traced is not None:
        return traced
    channels, channel_map, spatial_map = module.dispatch_spec()
    be = prepare(x, channels, dict(module.named_parameters()), backend)
    return run(x, be, channel_map, spatial_map, module.parameters(), module.fused_parts, module.schedule,
               module.l2_budget_bytes)


def prepare(x: object, channels: int | None, tensors: dict[str, torch.Tensor | None],
            backend: str | None) -> str:
    """The common prologue of every CBAM forward: validate x (and its channel count) and the
    weights' devices/dtypes, then resolve the backend (N == 0 is handled by :func:`run`:
    an empty output, nothing launched)."""
    quiet_shape_checks()  # under torch.jit.trace: no TracerWarnings from the checks (cbam_triton/deploy.py)
    validate_input(x, channels)
    check_devices(x, tensors)
    return block_backend(x, backend)


_exporting = torch.compiler.is_exporting  # (torch >= 2.11 has it, as cbam_triton.deploy assumes)


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
    call = ops.fused_forward_impl if ops.direct_call_ok(*args) else torch.ops.cbam_triton.fused_forward
    if packaging():  # torch.export inside cbam_triton.package_kernels(): the kernels as triton_op calls
        call = torch.ops.cbam_triton.fused_forward_kernels
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
    call = ops.fused_tail_impl if ops.direct_call_ok(*args, *more, tail.residual) \
        else torch.ops.cbam_triton.fused_tail
    if packaging():
        call = torch.ops.cbam_triton.fused_tail_kernels
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
    if backend == "triton" and (not _exporting() or packaging()):
        parts = fused_parts() if fused_parts is not None else "no fusable description of the small parts"
        if not isinstance(parts, str):
            return fused(x, parts[0], parts[1], schedule, l2_budget_bytes)
        if packaging():  # only the fused forward is packaged as kernels: the rest records standard ops
            backend = "torch"
        elif schedule == "l2":
            raise ValueError(f"schedule='l2' needs the small parts fused into the kernels, which this "
                             f"configuration does not allow: {parts}. Use schedule='auto' or 'stream'.")
    mc = channel_map(*stages.channel_pool(x, backend)) if channel_map is not None else None
    ms = spatial_map(stages.spatial_pool(x, mc, backend), True) if spatial_map is not None else None
    return stages.gate(x, mc, ms, backend)
