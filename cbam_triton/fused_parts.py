"""The small parts that the fused forward computes inside its kernels.

The fused forward (:mod:`cbam_triton.launchers.forward`) folds the channel MLP + sigmoid into the
pooling kernel and the spatial k x k convolution + eval-mode BatchNorm + sigmoid into the gating
kernel. It can do so for the configurations described here; anything else (another activation or
gate, BatchNorm with batch statistics) runs the small parts in PyTorch between the kernels instead.
Modules describe themselves with :class:`ChannelMLP` / :class:`SpatialConv` (None: not fusable).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from cbam_triton.norms import foldable, fused_fields

#: channel-branch inputs: mlp(avg) + mlp(max), mlp(avg), mlp(max), mlp(0.5 * avg + 0.5 * max)
POOL_MODES = {"avg+max": 0, "avg": 1, "max": 2, "light": 3}
#: hidden activations the kernel implements
ACTIVATIONS = {"identity": 0, "relu": 1}
#: what the spatial convolution reads: [max, mean], [mean, max], or one channel 0.5*mean + 0.5*max
SPATIAL_INPUTS = {"max,mean": 0, "mean,max": 1, "light": 2}
#: activations of the fused block tail, applied after the residual addition
TAIL_ACTIVATIONS = {"identity": 0, "relu": 1, "silu": 2}
#: the modules the fused block tail applies as its activation (in place or not), by TAIL_ACTIVATIONS key
TAIL_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Identity: "identity"}
#: how messages name what the fused tail applies
TAIL_ACTIVATIONS_TEXT = "ReLU, SiLU or identity"


class ChannelMLP(NamedTuple):
    """``Mc = sigmoid(sum over the pools of fc2(act(fc1(pool))))``; fc2 may be absent (one layer:
    then fc1 maps C -> C and its output is the logit)."""

    fc1_weight: torch.Tensor            #: (hidden, C) or a 1x1 conv's (hidden, C, 1, 1)
    fc1_bias: torch.Tensor | None
    fc2_weight: torch.Tensor | None     #: (C, hidden) or (C, hidden, 1, 1)
    fc2_bias: torch.Tensor | None
    pools: str = "avg+max"              #: a key of POOL_MODES
    act: str = "relu"                   #: a key of ACTIVATIONS

    @property
    def hidden(self) -> int:
        return self.fc1_weight.shape[0]


class SpatialConv(NamedTuple):
    """``Ms = sigmoid(bn(conv(input)))`` with a (1, Cin, k, k) conv (padding k // 2) and an optional
    eval-mode BatchNorm2d(1) given by its running statistics (and affine parameters)."""

    weight: torch.Tensor                #: (1, 2, k, k) ((1, 1, k, k) for the "light" input)
    bias: torch.Tensor | None
    input: str = "max,mean"             #: a key of SPATIAL_INPUTS
    bn_mean: torch.Tensor | None = None
    bn_var: torch.Tensor | None = None
    bn_weight: torch.Tensor | None = None
    bn_bias: torch.Tensor | None = None
    bn_eps: float = 1e-5

    @property
    def ksize(self) -> int:
        return self.weight.shape[-1]


def activation_name(act: nn.Module | None) -> str | None:
    """``"relu"`` / ``"identity"`` for the activations the kernel implements, else None."""
    if act is None or isinstance(act, nn.Identity):
        return "identity"
    if type(act) is nn.ReLU:
        return "relu"
    return None


def is_sigmoid(gate: nn.Module | None) -> bool:
    """Whether a gate module (None: the default) is the logistic sigmoid (torch's or timm's)."""
    if gate is None or type(gate) is nn.Sigmoid:
        return True
    return type(gate).__name__ == "Sigmoid" and type(gate).__module__.startswith("timm.layers") \
        and not list(gate.parameters())


def spatial_conv(conv: nn.Conv2d, bn: nn.Module | None, spatial_input: str = "max,mean") -> SpatialConv | str:
    """The spatial conv + norm as the fused kernels compute them, or why they can't (a norm that is
    not folded runs as the module it is: see :mod:`cbam_triton.norms`)."""
    reason = foldable(bn)
    if reason is not None:
        return reason
    return SpatialConv(conv.weight, conv.bias, spatial_input, **fused_fields(bn))


class ChannelAffine(NamedTuple):
    """A residual block's last BatchNorm in eval mode, per channel:
    ``(y - mean) * rsqrt(var + eps) * weight + bias`` (weight and bias optional), read in place."""

    mean: torch.Tensor                  #: (C,) running mean
    var: torch.Tensor                   #: (C,) running variance
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    eps: float = 1e-5


class BlockTail(NamedTuple):
    """What the fused block tail adds around CBAM: ``act(cbam(affine(y)) + residual)``."""

    affine: ChannelAffine | None        #: None: y enters CBAM as it is
    residual: torch.Tensor | None       #: y's shape and dtype, any strides; None: no addition
    act: str = "relu"                   #: a key of TAIL_ACTIVATIONS


def channel_affine(bn: nn.Module | None) -> ChannelAffine | None | str:
    """A block's last norm as the fused tail computes it (None: no norm), or why it can't (a norm
    that is not folded runs as the module it is: see :mod:`cbam_triton.norms`)."""
    if bn is None:
        return None
    reason = foldable(bn, "last norm")
    if reason is not None:
        return reason
    f = fused_fields(bn)
    return ChannelAffine(f["bn_mean"], f["bn_var"], f["bn_weight"], f["bn_bias"], f["bn_eps"])


def tail_activation_name(act: nn.Module | None) -> str | None:
    """``"relu"`` / ``"silu"`` / ``"identity"`` for the activations the fused tail applies after the
    addition (``nn.ReLU``, ``nn.SiLU``, in place or not; ``nn.Identity`` or None), else None (a subclass
    may compute something else: not recognised)."""
    if act is None:
        return "identity"
    return TAIL_ACTIVATION_MODULES.get(type(act))
