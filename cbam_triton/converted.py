"""``ConvertedCBAM``: the fused three-kernel forward for a CBAM written in another dialect.

A converted module keeps the source module's children under the same names (so its
``state_dict`` keys are exactly the source's, checkpoints load both ways, and optimizers that hold
the parameters keep working) and replaces only ``forward``. Dialects differ only in the small
parts, described by a :class:`DialectSpec`; the three big-tensor kernels are shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cbam_triton import compiled, dispatch
from cbam_triton.functional import spatial_attention
from cbam_triton.fused_parts import ChannelMLP, SpatialConv, activation_name, is_sigmoid, spatial_conv
from cbam_triton.modules import Scheduled
from cbam_triton.norms import bn_state

#: How the channel branch combines the pooled vectors.
CHANNEL_POOLS = ("avg+max", "avg", "max", "light")
#: What the spatial convolution reads: 2 channels in either order, or 0.5*mean + 0.5*max.
SPATIAL_INPUTS = ("max,mean", "mean,max", "light")
_is_compiling = torch.compiler.is_compiling


@dataclass(frozen=True)
class DialectSpec:
    """The small parts of one CBAM dialect, as paths to the source module's submodules.

    Attributes:
        dialect: a name for reports ("timm CbamModule", "official", ...).
        channels: C.
        channel_pool: ``"avg+max"`` (``mlp(avg) + mlp(max)``), ``"avg"``, ``"max"`` or ``"light"``
            (``mlp(0.5 * avg + 0.5 * max)``).
        fc1, fc2: paths to the MLP layers (``nn.Linear`` or 1x1 ``nn.Conv2d``); ``fc2`` may be None
            (a single layer, as in ultralytics).
        act: path to the hidden activation (stateless module) or None.
        channel_gate, spatial_gate: paths to the gate modules (stateless), or None for sigmoid.
        spatial_input: ``"max,mean"``, ``"mean,max"`` or ``"light"``; None: no spatial branch.
        conv: path to the spatial ``nn.Conv2d`` (1 or 2 input channels, odd k, padding k // 2).
        bn: path to a one-feature norm after the convolution (``BatchNorm2d(1)``, ``SyncBatchNorm``,
            ``FrozenBatchNorm2d``, a subclass: see :mod:`cbam_triton.norms`), or None.
    """

    dialect: str
    channels: int
    channel_pool: str
    fc1: str
    fc2: str | None
    act: str | None
    channel_gate: str | None
    spatial_input: str | None
    conv: str | None
    bn: str | None
    spatial_gate: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def _matrix(layer: nn.Module, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = layer.weight
    if w.dim() == 4:  # 1x1 convolution
        w = w.reshape(w.shape[0], w.shape[1])
    return w.to(acc), (layer.bias.to(acc) if layer.bias is not None else None)


class ConvertedCBAM(Scheduled, compiled.Compilable, nn.Module):
    """Fused CBAM forward over the submodules of a CBAM of another dialect (see :class:`DialectSpec`)."""

    def __init__(self, source: nn.Module, spec: DialectSpec, *, backend: str | None = None,
                 schedule: str = "auto", l2_budget_bytes: int | None = None):
        super().__init__()
        self.set_schedule(schedule, l2_budget_bytes)
        for name, child in source.named_children():
            self.add_module(name, child)
        for attr in ("f", "i", "type", "np"):  # ultralytics' graph bookkeeping on every layer
            if attr in source.__dict__:
                setattr(self, attr, source.__dict__[attr])
        self.spec = spec
        self.backend = backend
        self.source_class = f"{type(source).__module__}.{type(source).__qualname__}"
        self.train(source.training)
        compiled.attach(self)  # (torch.compile: the block as one operator call; cbam_triton/compiled.py)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"dialect={s.dialect!r}, channels={s.channels}, channel_pool={s.channel_pool!r}, "
                f"spatial_input={s.spatial_input!r}, bn={s.bn is not None}")

    def _sub(self, path: str | None) -> Any:
        return None if path is None else self.get_submodule(path)

    def _gate(self, path: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
        return torch.sigmoid if path is None else self.get_submodule(path)

    def channel_map(self, avg: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
        """``Mc`` (N, C) in fp32/fp64 from the pooled (N, C) maps."""
        s = self.spec
        acc = avg.dtype
        inputs = {"avg+max": [avg, mx], "avg": [avg], "max": [mx], "light": [0.5 * avg + 0.5 * mx]}[s.channel_pool]
        w1, b1 = _matrix(self.get_submodule(s.fc1), acc)
        fc2 = self._sub(s.fc2)
        act = self._sub(s.act)
        logits = None
        for v in inputs:
            h = F.linear(v, w1, b1)
            if act is not None:
                h = act(h)
            if fc2 is not None:
                w2, b2 = _matrix(fc2, acc)
                h = F.linear(h, w2, b2)
            logits = h if logits is None else logits + h
        return self._gate(s.channel_gate)(logits)

    def spatial_map(self, pooled: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        """``Ms`` (N, 1, H, W) from the (N, 2, H, W) ``[max, mean]`` map (``update_stats=False``:
        BN's running statistics are left alone)."""
        s = self.spec
        if s.spatial_input == "mean,max":
            pooled = pooled.flip(1)
        elif s.spatial_input == "light":
            pooled = 0.5 * pooled[:, 1:2] + 0.5 * pooled[:, 0:1]
        conv = self.get_submodule(s.conv)
        kwargs = bn_state(self._sub(s.bn), update_stats, self._gate(s.spatial_gate))
        return spatial_attention(pooled, conv.weight, conv.bias, **kwargs)

    def fused_parts(self) -> tuple[ChannelMLP, SpatialConv | None] | str:
        """The small parts as the fused forward's kernels compute them, or why they can't
        (an activation other than ReLU/identity, a gate other than sigmoid, batch-statistics BN)."""
        s = self.spec
        act = activation_name(self._sub(s.act))
        if act is None:
            return f"hidden activation {type(self._sub(s.act)).__name__} (the kernels implement ReLU and identity)"
        for path in (s.channel_gate, s.spatial_gate if s.spatial_input is not None else None):
            if not is_sigmoid(self._sub(path)):
                return f"gate {type(self._sub(path)).__name__} (the kernels implement sigmoid)"
        fc1, fc2 = self.get_submodule(s.fc1), self._sub(s.fc2)
        mlp = ChannelMLP(fc1.weight, fc1.bias, fc2.weight if fc2 is not None else None,
                         fc2.bias if fc2 is not None else None, s.channel_pool, act)
        if s.spatial_input is None:
            return mlp, None
        conv = spatial_conv(self.get_submodule(s.conv), self._sub(s.bn), s.spatial_input)
        return conv if isinstance(conv, str) else (mlp, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The source's function with the shared kernels (the path of a call: :mod:`cbam_triton.dispatch`)."""
        return dispatch.module_forward(self, x, self.backend, True)

    def dispatch_spec(self) -> tuple[int, Callable[..., torch.Tensor], Callable[..., torch.Tensor] | None]:
        """``(channels, channel map, spatial map)`` for :func:`cbam_triton.dispatch.module_forward`."""
        return self.spec.channels, self.channel_map, self.spatial_map if self.spec.spatial_input is not None else None
