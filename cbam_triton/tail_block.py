"""``FusedTailBlock``: a ResNet block with CBAM whose eval forward ends in the fused block tail.

ResNet blocks that carry CBAM (timm's ``BasicBlock``/``Bottleneck`` with ``attn_layer="cbam"``, the
official Jongchan/attention-module ``BasicBlock``/``Bottleneck``) end with
``act(cbam(norm(y)) + shortcut)``. In eval mode a converted block runs everything before its last
norm as the original does (convolutions, norms, activations: plain modules), the shortcut branch
(identity or the ``downsample`` modules), then one custom operator for the tail
(:func:`cbam_triton.dispatch.fused_tail`: the norm folded into the CBAM kernels' loads, the residual
added and the activation applied in the gate's store).

Everything else runs **the original block's forward** (the source class's ``forward`` on this
module, whose children are the source's: its CBAM child converted as :func:`cbam_triton.convert`
converts it): ``train()`` mode (BatchNorm batch statistics, running-statistic updates, gradients:
exactly the original block's math), eval mode when autograd records, while exporting or tracing
(standard ops), on the PyTorch backend, and whenever a part cannot be folded exactly at call time
(:meth:`FusedTailBlock.tail_parts` says why): a last norm with behaviour of its own or batch
statistics (called as the module it is), forward hooks on the parts the fused tail would not call,
a drop-path that drops in the current mode, a CBAM whose small parts the kernels don't compute.

The module keeps the source's children under the same names and its plain attributes, so its
``state_dict`` is the source's (checkpoints load both ways).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cbam_triton import dispatch
from cbam_triton._backend import block_backend
from cbam_triton.deploy import fx_leaf_call
from cbam_triton.fused_parts import (
    TAIL_ACTIVATIONS_TEXT,
    BlockTail,
    ChannelAffine,
    ChannelMLP,
    SpatialConv,
    channel_affine,
    tail_activation_name,
)
from cbam_triton.modules import Scheduled

#: what :meth:`FusedTailBlock.tail_parts` gives when the fused tail can run
TailParts = tuple[ChannelMLP, SpatialConv | None, ChannelAffine | None, str]


@dataclass(frozen=True)
class TailSpec:
    """Where a block's parts are, as names of its children (or plain attributes).

    Attributes:
        kind: a name for reports (``"timm Bottleneck"``, ``"official BasicBlock"``, ...).
        prelude: the children applied in order to the block's input to give y, the last norm's
            input (None-valued entries are skipped).
        norm: the block's last norm (a per-channel BatchNorm: folded in eval).
        attn: the CBAM (converted: ``cbam_triton.CBAM`` or ``ConvertedCBAM``).
        drop_path: the drop-path module applied to the attention's output, or None.
        downsample: the shortcut branch (None-valued: identity shortcut), or None.
        act: the activation after the residual addition.
    """

    kind: str
    prelude: tuple[str, ...]
    norm: str
    attn: str
    drop_path: str | None
    downsample: str | None
    act: str


_OWN = ("tail_spec", "source_type", "backend", "schedule", "l2_budget_bytes")


class FusedTailBlock(Scheduled, nn.Module):
    """A residual block with CBAM; in eval, its tail ``act(cbam(norm(y)) + shortcut)`` is fused."""

    def __init__(self, source: nn.Module, spec: TailSpec, *, backend: str | None = None,
                 schedule: str = "auto", l2_budget_bytes: int | None = None):
        super().__init__()
        clash = [k for k in _OWN if k in source.__dict__ or k in source._modules]
        if clash:
            raise TypeError(f"{type(source).__name__} has attributes named {clash}, which FusedTailBlock uses")
        for name, child in source._modules.items():  # the same children under the same names (None included)
            self.add_module(name, child)
        for name, value in source.__dict__.items():  # plain attributes the source's forward may read
            if not name.startswith("_") and name != "training":
                self.__dict__[name] = value
        for klass in type(source).__mro__:  # and plain class attributes (e.g. ``expansion``)
            if klass in nn.Module.__mro__:
                break
            for name, value in vars(klass).items():
                if not name.startswith("_") and not callable(value) and not hasattr(value, "__get__") \
                        and name not in self.__dict__:
                    self.__dict__[name] = value
        self.tail_spec = spec
        self.source_type = type(source)
        self.backend = backend
        self.set_schedule(schedule, l2_budget_bytes)
        self.train(source.training)

    def extra_repr(self) -> str:
        return f"kind={self.tail_spec.kind!r}, source={self.source_type.__module__}.{self.source_type.__qualname__}"

    def _part(self, name: str | None) -> Any:
        return None if name is None else getattr(self, name, None)

    def tail_parts(self, x: torch.Tensor) -> TailParts | str:
        """What the fused tail computes for input x in the block's current state, or why the
        original forward runs instead (a reason string)."""
        s = self.tail_spec
        if self.training:
            return "training mode: the original block's forward"
        if x.dim() != 4 or x.shape[0] == 0:
            return "not a non-empty 4-D input"
        if block_backend(x, self.backend) != "triton":
            return "the PyTorch backend (or exporting): the original block's forward"
        if dispatch.needs_grad(x, self.parameters()):
            return "autograd records: the original block's forward"
        if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return "global forward hooks: every module is called"
        attn, norm, act, drop = self._part(s.attn), self._part(s.norm), self._part(s.act), self._part(s.drop_path)
        for what, m in (("attention", attn), ("last norm", norm), ("activation", act), ("drop-path", drop)):
            if m is not None and (m._forward_hooks or m._forward_pre_hooks):
                return f"its {what} has forward hooks: it is called as the module it is"
        if drop is not None and drop.training and float(getattr(drop, "drop_prob", 0.0) or 0.0) > 0.0:
            return "its drop-path drops in its current (training) mode"
        fused_parts = getattr(attn, "fused_parts", None)
        parts = fused_parts() if fused_parts is not None else "its attention is not a converted CBAM"
        if isinstance(parts, str):
            return parts
        mlp, conv = parts
        if mlp is None:
            return "its CBAM has no channel branch"
        affine = channel_affine(norm)
        if isinstance(affine, str):
            return affine
        act_name = tail_activation_name(act)
        if act_name is None:
            return f"activation {type(act).__name__} (the fused tail applies {TAIL_ACTIVATIONS_TEXT})"
        return mlp, conv, affine, act_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (traced := fx_leaf_call(self, x)) is not None:  # torch.fx.symbolic_trace: one leaf node
            return traced
        parts = self.tail_parts(x) if isinstance(x, torch.Tensor) else "not a tensor"
        if isinstance(parts, str):
            return self.source_type.forward(self, x)
        mlp, conv, affine, act = parts
        y = x
        for name in self.tail_spec.prelude:
            m = self._part(name)
            if m is not None:
                y = m(y)
        downsample = self._part(self.tail_spec.downsample)
        shortcut = downsample(x) if downsample is not None else x
        if shortcut.dtype != y.dtype or shortcut.shape != y.shape:  # what the original's `+=` would make of it
            return self.source_type.forward(self, x)
        return dispatch.fused_tail(y, mlp, conv, BlockTail(affine, shortcut, act), self.schedule, self.l2_budget_bytes)
