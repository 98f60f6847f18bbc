"""The residual tail of a ResNet block with CBAM, in plain PyTorch: the spec of ``cbam_triton``'s fused tail.

Every ResNet-style network that carries CBAM (timm's ``BasicBlock``/``Bottleneck`` with
``attn_layer="cbam"``, the official Jongchan/attention-module ResNet) ends its blocks with
``act(cbam(norm(y)) + shortcut)``: the block's last BatchNorm (eval mode: a per-channel affine map),
the attention, the residual addition and the activation (ReLU).
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualTail(nn.Module):
    """``act(attn(norm(y)) + shortcut)``; ``norm``/``attn``/``act`` may be None (left out), and
    ``shortcut`` None means no residual addition."""

    def __init__(self, norm: nn.Module | None, attn: nn.Module | None, act: nn.Module | None = None):
        super().__init__()
        self.norm = norm
        self.attn = attn
        self.act = act if act is not None else nn.ReLU()

    def forward(self, y: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm is not None:
            y = self.norm(y)
        if self.attn is not None:
            y = self.attn(y)
        if shortcut is not None:
            y = y + shortcut
        return self.act(y)
