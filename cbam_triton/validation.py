"""Input checks shared by the modules and the functional API: clear ``TypeError`` / ``ValueError`` messages
for what cbam-triton cannot take (see the README's supported matrix)."""

from __future__ import annotations

import torch

__all__ = ["check_devices", "validate_input"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def validate_input(x: object, channels: int | None = None, name: str = "x") -> torch.Tensor:
    """Check that x is a floating (N, C, H, W) tensor with H, W >= 1 (and C == channels).

    Raises ``TypeError`` for a non-tensor or a non-floating dtype (integer, bool, complex) and
    ``ValueError`` for a wrong rank, an empty H or W, or a channel count that does not match.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got a {x.dim()}-D tensor of shape "
                         f"{tuple(x.shape)}")
    n, c, h, w = x.shape
    if channels is not None and c != channels:
        raise ValueError(f"{name} has {c} channels but the module/weights expect {channels} "
                         f"(input shape {tuple(x.shape)})")
    if c < 1 or h < 1 or w < 1:
        raise ValueError(f"{name} needs C, H, W >= 1, got shape {tuple(x.shape)}")
    return x


def check_devices(x: torch.Tensor, tensors: dict[str, torch.Tensor | None]) -> None:
    """Each of ``tensors`` (None allowed) a floating tensor on x's device, or a ``TypeError`` / ``ValueError``
    naming it."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; move the module "
                             "(or the weights) to x's device")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
