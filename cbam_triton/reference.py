"""Reference CBAM in plain PyTorch: the specification every cbam_triton result is tested against.

Math (Woo et al., 2018; official code Jongchan/attention-module):

* channel gate: ``Mc = sigmoid(sum_{p in pool_types} mlp(pool_p(x)))`` with global average / max
  pooling over H x W and the shared ``mlp = Linear(C, hidden) -> ReLU -> Linear(hidden, C)``;
  ``x1 = x * Mc``.
* spatial gate: ``Ms = sigmoid(bn(conv_kxk(cat([max_C(x1), mean_C(x1)]))))`` with a ``2 -> 1``
  convolution without bias, padding ``k // 2``, and ``BatchNorm2d(1)`` when ``spatial_norm``;
  ``out = x1 * Ms``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_POOL_TYPES = ("avg", "max")


def validate_config(
    channels: int,
    reduction_ratio: int,
    spatial_kernel_size: int,
    pool_types: Sequence[str],
    hidden_channels: int | None,
) -> tuple[tuple[str, ...], int]:
    """Check a CBAM configuration; return ``(pool_types as a tuple, hidden width)``.

    Raises ``TypeError``/``ValueError`` naming the offending argument.
    """
    for name, value in (("channels", channels), ("reduction_ratio", reduction_ratio),
                        ("spatial_kernel_size", spatial_kernel_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if spatial_kernel_size % 2 == 0:
        raise ValueError(f"spatial_kernel_size must be odd (3, 5, 7, ...), got {spatial_kernel_size}")
    if isinstance(pool_types, str):
        pool_types = (pool_types,)
    pools = tuple(pool_types)
    if not pools:
        raise ValueError("pool_types must name at least one of 'avg', 'max'")
    unknown = [p for p in pools if p not in _POOL_TYPES]
    if unknown:
        raise ValueError(f"unsupported pool_types {unknown}: only 'avg' and 'max' are supported")
    if len(set(pools)) != len(pools):
        raise ValueError(f"pool_types has duplicates: {pools}")
    if hidden_channels is None:
        hidden = max(1, channels // reduction_ratio)
    else:
        if isinstance(hidden_channels, bool) or not isinstance(hidden_channels, int):
            raise TypeError(f"hidden_channels must be an int or None, got {type(hidden_channels).__name__}")
        if hidden_channels < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden_channels}")
        hidden = hidden_channels
    return pools, hidden


class ChannelGate(nn.Module):
    """``x -> x * sigmoid(sum_p mlp(pool_p(x)))``; ``mlp`` is ``Linear -> ReLU -> Linear``."""

    def __init__(self, channels: int, hidden_channels: int, pool_types: Sequence[str] = _POOL_TYPES):
        super().__init__()
        self.channels = channels
        self.pool_types = tuple(pool_types)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden_channels), nn.ReLU(), nn.Linear(hidden_channels, channels)
        )

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel map ``Mc`` of shape ``(N, C, 1, 1)``, in x's dtype."""
        att = None
        for pool in self.pool_types:
            pooled = x.mean(dim=(2, 3)) if pool == "avg" else x.amax(dim=(2, 3))
            logits = self.mlp(pooled)
            att = logits if att is None else att + logits
        return torch.sigmoid(att)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class SpatialGate(nn.Module):
    """``x -> x * sigmoid(bn(conv(cat([max_C x, mean_C x]))))``."""

    def __init__(self, kernel_size: int = 7, spatial_norm: bool = True):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1) if spatial_norm else None

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial map ``Ms`` of shape ``(N, 1, H, W)``, in x's dtype."""
        compressed = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        y = self.conv(compressed)
        if self.bn is not None:
            y = self.bn(y)
        return torch.sigmoid(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel gate, then spatial gate.

    Args:
        channels: C, the number of input channels.
        reduction_ratio: r; the MLP's hidden width is ``max(1, C // r)`` unless ``hidden_channels``.
        spatial_kernel_size: odd k of the spatial k x k convolution (padding ``k // 2``).
        pool_types: which global pools feed the shared MLP: ``("avg", "max")``, ``("avg",)``, ``("max",)``.
        spatial_norm: apply ``BatchNorm2d(1)`` after the spatial convolution (official code: yes).
        hidden_channels: explicit hidden width of the MLP (overrides ``reduction_ratio``).
    """

    def __init__(
        self,
        channels: int,
        reduction_ratio: int = 16,
        spatial_kernel_size: int = 7,
        pool_types: Sequence[str] = _POOL_TYPES,
        spatial_norm: bool = True,
        hidden_channels: int | None = None,
    ):
        super().__init__()
        pools, hidden = validate_config(channels, reduction_ratio, spatial_kernel_size, pool_types,
                                        hidden_channels)
        self.channels = channels
        self.reduction_ratio = reduction_ratio
        self.spatial_kernel_size = spatial_kernel_size
        self.pool_types = pools
        self.spatial_norm = bool(spatial_norm)
        self.hidden_channels = hidden
        self.channel_gate = ChannelGate(channels, hidden, pools)
        self.spatial_gate = SpatialGate(spatial_kernel_size, self.spatial_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_gate(self.channel_gate(x))

