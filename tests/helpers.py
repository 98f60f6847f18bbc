"""Builders shared by the tests: reference modules with non-trivial weights, inputs in many layouts."""

from __future__ import annotations

import torch

import reference

LAYOUTS = ("nchw", "channels_last", "sliced_c", "sliced_w", "transposed", "expanded", "offset")


def make_reference(channels: int, *, reduction_ratio: int = 16, kernel_size: int = 7,
                   pool_types: tuple[str, ...] = ("avg", "max"), spatial_norm: bool = True,
                   hidden_channels: int | None = None, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu", train: bool = False) -> reference.CBAM:
    """A reference CBAM with random weights, non-zero biases and non-trivial BN statistics."""
    ref = reference.CBAM(channels, reduction_ratio, kernel_size, pool_types, spatial_norm, hidden_channels)
    with torch.no_grad():
        for layer in (ref.channel_gate.mlp[0], ref.channel_gate.mlp[2]):  # 2x PyTorch's init range
            bound = 2.0 / layer.in_features ** 0.5
            layer.weight.uniform_(-bound, bound)
            layer.bias.uniform_(-bound, bound)
        ref.spatial_gate.conv.weight.uniform_(-0.4, 0.4)
        bn = ref.spatial_gate.bn
        if bn is not None:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.num_batches_tracked.fill_(7)
    return ref.to(device=device, dtype=dtype).train(train)


def make_input(shape: tuple[int, int, int, int], dtype: torch.dtype = torch.float32,
               layout: str = "nchw", device: torch.device | str = "cpu") -> torch.Tensor:
    """x of ``shape`` in one of LAYOUTS (all but nchw/channels_last are non-contiguous views)."""
    n, c, h, w = shape
    g = lambda *s: torch.randn(*s, dtype=torch.float32, device=device).to(dtype)  # noqa: E731
    if layout == "nchw":
        return g(n, c, h, w)
    if layout == "channels_last":
        return g(n, c, h, w).to(memory_format=torch.channels_last)
    if layout == "sliced_c":  # channel slice of a bigger tensor: strided, H/W still mergeable
        return g(n, c + 3, h, w)[:, 2:2 + c]
    if layout == "sliced_w":  # W slice: H and W can't be merged -> copied
        return g(n, c, h, w + 2)[..., 1:1 + w]
    if layout == "transposed":  # (N, C, W, H) storage seen as (N, C, H, W)
        return g(n, c, w, h).transpose(2, 3)
    if layout == "expanded":  # stride-0 batch
        return g(1, c, h, w).expand(n, c, h, w)
    if layout == "offset":  # storage offset, channels_last
        base = g(n + 1, c, h, w).to(memory_format=torch.channels_last)
        return base[1:]
    raise ValueError(layout)


def expected_channels_last(x: torch.Tensor) -> bool:
    """Whether an eager elementwise op on x would return a channels_last tensor."""
    return torch.empty_like(x).is_contiguous(memory_format=torch.channels_last) and not \
        torch.empty_like(x).is_contiguous()
