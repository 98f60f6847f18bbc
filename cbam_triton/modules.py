"""Drop-in ``nn.Module``s: same constructors and ``state_dict`` keys as :mod:`reference`.

``CBAM.forward`` does not call its submodules' ``forward``: it runs the fused three-stage
pipeline of :func:`cbam_triton.functional.cbam` with their parameters (except a spatial norm with
behaviour of its own — ``SyncBatchNorm`` in training, a subclass with its own ``forward`` — which is
called as the module it is; see :mod:`cbam_triton.norms`). The submodules also work
on their own (``ChannelGate(x) = x * Mc``, ``SpatialGate(x) = x * Ms``), each with two passes over x.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cbam_triton import compiled, dispatch
from cbam_triton.deploy import script_error
from cbam_triton.functional import channel_attention, spatial_attention
from cbam_triton.fused_parts import ChannelMLP, SpatialConv, spatial_conv
from cbam_triton.norms import bn_state, check, copy_for
from cbam_triton.reference import CBAM as ReferenceCBAM
from cbam_triton.reference import validate_config  # the spec's own config rules
from cbam_triton.schedule import validate_budget, validate_schedule

_POOLS = ("avg", "max")
_is_compiling = torch.compiler.is_compiling


def _pool_mode(pool_types: Sequence[str]) -> str:
    """The fused kernel's channel-branch mode for a pool_types tuple."""
    return "avg+max" if {"avg", "max"} <= set(pool_types) else ("avg" if "avg" in pool_types else "max")


class Scheduled:
    """``schedule`` / ``l2_budget_bytes`` of the fused inference forward (see
    :mod:`cbam_triton.schedule`); plain attributes, not part of the state_dict."""

    schedule: str = "auto"
    l2_budget_bytes: int | None = None

    def set_schedule(self, schedule: str = "auto", l2_budget_bytes: int | None = None) -> None:
        """Choose the schedule (``"auto"``, ``"l2"``, ``"stream"``) and optionally the L2 budget (bytes)."""
        self.schedule = validate_schedule(schedule)
        self.l2_budget_bytes = validate_budget(l2_budget_bytes)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` refuses every cbam-triton module with an error saying what to use
        instead (trace or export; see :mod:`cbam_triton.deploy`)."""
        raise script_error(self)


class ChannelGate(Scheduled, nn.Module):
    """Channel attention ``x -> x * sigmoid(sum_p mlp(pool_p(x)))`` (same keys as the reference)."""

    def __init__(self, channels: int, hidden_channels: int, pool_types: Sequence[str] = _POOLS):
        super().__init__()
        self.channels = channels
        self.pool_types = tuple(pool_types)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden_channels), nn.ReLU(), nn.Linear(hidden_channels, channels)
        )

    def channel_map(self, avg: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
        """``Mc`` (N, C) in fp32/fp64 from the pooled (N, C) maps."""
        fc1, fc2 = self.mlp[0], self.mlp[2]
        return channel_attention(avg if "avg" in self.pool_types else None,
                                 mx if "max" in self.pool_types else None,
                                 fc1.weight, fc1.bias, fc2.weight, fc2.bias)

    def fused_mlp(self) -> ChannelMLP:
        """The MLP as the fused forward's kernels compute it."""
        fc1, fc2 = self.mlp[0], self.mlp[2]
        return ChannelMLP(fc1.weight, fc1.bias, fc2.weight, fc2.bias, _pool_mode(self.pool_types), "relu")

    def forward(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """``x * Mc`` (the path of a call: :mod:`cbam_triton.dispatch`)."""
        return dispatch.module_forward(self, x, backend, backend is None)

    def dispatch_spec(self) -> tuple[int, Callable[..., torch.Tensor], None]:
        """``(channels, channel map, spatial map)`` for :func:`cbam_triton.dispatch.module_forward`."""
        return self.channels, self.channel_map, None

    def fused_parts(self) -> tuple[ChannelMLP, None]:
        """``(mlp, None)`` for the fused forward."""
        return self.fused_mlp(), None


class SpatialGate(Scheduled, nn.Module):
    """Spatial attention ``x -> x * sigmoid(bn(conv(cat([max_C x, mean_C x]))))``."""

    def __init__(self, kernel_size: int = 7, spatial_norm: bool = True):
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1) if spatial_norm else None

    def spatial_map(self, pooled: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        """``Ms`` (N, 1, H, W) from the (N, 2, H, W) ``[max, mean]`` map (BN folded in eval;
        ``update_stats=False``: BN's running statistics are left alone)."""
        return spatial_attention(pooled, self.conv.weight, self.conv.bias, **bn_state(self.bn, update_stats))

    def fused_conv(self) -> SpatialConv | str:
        """The conv + BatchNorm as the fused forward's kernels compute them, or why they can't."""
        return spatial_conv(self.conv, self.bn)

    def fused_parts(self) -> tuple[None, SpatialConv] | str:
        """``(None, conv)`` for the fused forward, or why it can't run fused."""
        conv = self.fused_conv()
        return conv if isinstance(conv, str) else (None, conv)

    def forward(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """``x * Ms`` (the path of a call: :mod:`cbam_triton.dispatch`)."""
        return dispatch.module_forward(self, x, backend, backend is None)

    def dispatch_spec(self) -> tuple[None, None, Callable[..., torch.Tensor]]:
        """``(channels, channel map, spatial map)`` for :func:`cbam_triton.dispatch.module_forward`."""
        return None, None, self.spatial_map


class CBAM(Scheduled, compiled.Compilable, nn.Module):
    """Fused CBAM (channel gate, then spatial gate); drop-in for :class:`reference.CBAM`.

    Same constructor and ``state_dict`` keys as the reference, so checkpoints load both ways.
    The forward streams x three times (pool, gated channel pool, gate) and writes the output once;
    only the output is a full-size allocation. Inputs: float16/bfloat16/float32/float64
    (N, C, H, W), NCHW or channels_last read in place (output in the same memory format); other
    views whose H and W cannot be merged are copied to NCHW first. Runs the Triton kernels on CUDA
    (and on CPU under ``TRITON_INTERPRET=1``), the same math in PyTorch elsewhere; when autograd
    needs gradients they are the reference's (see :mod:`cbam_triton.stages`).

    Args:
        channels: C.
        reduction_ratio: r; MLP hidden width ``max(1, C // r)`` unless ``hidden_channels``.
        spatial_kernel_size: odd k of the spatial convolution (padding ``k // 2``).
        pool_types: ``("avg", "max")`` (default), ``("avg",)`` or ``("max",)``.
        spatial_norm: BatchNorm2d(1) after the spatial convolution (folded into it in eval mode).
        hidden_channels: explicit MLP hidden width.
        backend: ``"auto"`` (default), ``"triton"`` or ``"torch"``; not part of the state_dict.
        schedule: ``"auto"`` (default), ``"l2"`` or ``"stream"``: how the fused inference forward
            cuts the batch (see :mod:`cbam_triton.schedule`); ``set_schedule`` changes it later.
        l2_budget_bytes: bytes of x one chunk of the ``"l2"`` schedule may hold (default: half the
            device's L2, or ``$CBAM_TRITON_L2_BYTES``).
    """

    def __init__(
        self,
        channels: int,
        reduction_ratio: int = 16,
        spatial_kernel_size: int = 7,
        pool_types: Sequence[str] = _POOLS,
        spatial_norm: bool = True,
        hidden_channels: int | None = None,
        *,
        backend: str | None = None,
        schedule: str = "auto",
        l2_budget_bytes: int | None = None,
    ):
        super().__init__()
        self.set_schedule(schedule, l2_budget_bytes)
        pools, hidden = validate_config(channels, reduction_ratio, spatial_kernel_size, pool_types,
                                         hidden_channels)
        self.channels = channels
        self.reduction_ratio = reduction_ratio
        self.spatial_kernel_size = spatial_kernel_size
        self.pool_types = pools
        self.spatial_norm = bool(spatial_norm)
        self.hidden_channels = hidden
        self.backend = backend
        self.channel_gate = ChannelGate(channels, hidden, pools)
        self.spatial_gate = SpatialGate(spatial_kernel_size, self.spatial_norm)
        compiled.attach(self)  # (torch.compile: the block as one operator call; cbam_triton/compiled.py)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, hidden_channels={self.hidden_channels}, "
                f"spatial_kernel_size={self.spatial_kernel_size}, pool_types={self.pool_types}, "
                f"spatial_norm={self.spatial_norm}")

    def fused_parts(self) -> tuple[ChannelMLP, SpatialConv] | str:
        """``(mlp, conv)`` as the fused forward's kernels compute them, or why they can't
        (BatchNorm with batch statistics)."""
        conv = self.spatial_gate.fused_conv()
        return conv if isinstance(conv, str) else (self.channel_gate.fused_mlp(), conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x * Mc * Ms``: traced by torch.compile, one operator call; eager, the cached launches after a
        guard, or the full path (the path of a call, in one place: :mod:`cbam_triton.dispatch`)."""
        return dispatch.module_forward(self, x, self.backend, True)

    def dispatch_spec(self) -> tuple[int, Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
        """``(channels, channel map, spatial map)`` for :func:`cbam_triton.dispatch.module_forward`."""
        return self.channels, self.channel_gate.channel_map, self.spatial_gate.spatial_map

    @classmethod
    def from_reference(cls, module: nn.Module, *, backend: str | None = None, schedule: str = "auto",
                       l2_budget_bytes: int | None = None) -> CBAM:
        """A ``cbam_triton.CBAM`` with the configuration, weights, device, dtype and mode of a
        :class:`reference.CBAM` (or of another ``cbam_triton.CBAM``); ``schedule`` and
        ``l2_budget_bytes`` as in the constructor."""
        for attr in ("channels", "reduction_ratio", "spatial_kernel_size", "pool_types",
                     "spatial_norm", "hidden_channels"):
            if not hasattr(module, attr):
                raise TypeError(f"from_reference expects a reference.CBAM, got {type(module).__name__} "
                                f"(no attribute {attr!r})")
        new = cls(module.channels, module.reduction_ratio, module.spatial_kernel_size,
                  module.pool_types, module.spatial_norm, module.hidden_channels, backend=backend,
                  schedule=schedule, l2_budget_bytes=l2_budget_bytes)
        return _copy_state(module, new)

    def to_reference(self) -> nn.Module:
        """The equivalent :class:`reference.CBAM` (same weights, device, dtype and mode)."""
        ref = ReferenceCBAM(self.channels, self.reduction_ratio, self.spatial_kernel_size,
                           self.pool_types, self.spatial_norm, self.hidden_channels)
        return _copy_state(self, ref)


def _copy_state(src: nn.Module, dst: nn.Module) -> Any:
    src_bn = getattr(src.spatial_gate, "bn", None)
    if src_bn is not None:  # same BatchNorm configuration (eps, momentum, affine, running stats)
        check(src_bn, "spatial_gate.bn")
        dst.spatial_gate.bn = copy_for(src_bn)  # a norm with behaviour of its own keeps its type
    first = next(src.parameters(), None)
    if first is not None:
        dst.to(device=first.device, dtype=first.dtype)
    dst.load_state_dict(src.state_dict())
    for (_, a), (_, b) in zip(src.named_modules(), dst.named_modules()):
        b.training = a.training
    frozen = {k for k, p in src.named_parameters() if not p.requires_grad}  # e.g. a frozen channel MLP
    for k, p in dst.named_parameters():
        p.requires_grad_(k not in frozen)
    return dst
