"""Checkpoint loading: state_dicts of other CBAM dialects into ``cbam_triton.CBAM`` / ``reference.CBAM``.

The reference layout (``channel_gate.mlp.{0,2}``, ``spatial_gate.conv``, ``spatial_gate.bn``) is the
target. Linear <-> 1x1 convolution weights are reshaped, missing MLP biases become zeros, and a
``[mean, max]`` spatial convolution has its two input channels swapped to the reference's
``[max, mean]`` order. A ``module.`` prefix (DataParallel / DDP) is stripped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

#: dialect -> (MLP layer 1 keys, MLP layer 2 keys, spatial conv key, spatial BN prefix, concat order)
_LAYOUTS = {
    "official": (("ChannelGate.mlp.1",), ("ChannelGate.mlp.3",), "SpatialGate.spatial.conv.weight",
                 "SpatialGate.spatial.bn.", "max,mean"),
    "timm": (("channel.fc1",), ("channel.fc2",), "spatial.conv.conv.weight", "spatial.conv.bn.", "mean,max"),
    "luuuyi": (("ca.fc.0", "ca.fc1"), ("ca.fc.2", "ca.fc2"), "sa.conv1.weight", None, "mean,max"),
    "reference": (("channel_gate.mlp.0",), ("channel_gate.mlp.2",), "spatial_gate.conv.weight",
                  "spatial_gate.bn.", "max,mean"),
}
DIALECTS = tuple(_LAYOUTS)


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module."):]
        if prefix:
            if not k.startswith(prefix):
                continue
            k = k[len(prefix):]
        out[k] = v
    return out


def to_reference_state_dict(state_dict: Mapping[str, torch.Tensor], dialect: str = "official",
                            prefix: str = "") -> dict[str, torch.Tensor]:
    """Map one CBAM's state_dict of ``dialect`` to the reference layout.

    ``prefix`` selects one CBAM inside a whole-model checkpoint (e.g. ``"layer1.0.cbam."``; a leading
    ``module.`` is stripped first). Raises ``ValueError`` naming missing keys or an unknown dialect.
    """
    if dialect not in _LAYOUTS:
        raise ValueError(f"unknown dialect {dialect!r}; known: {', '.join(DIALECTS)}")
    sd = _strip(state_dict, prefix)
    fc1_keys, fc2_keys, conv_key, bn_prefix, order = _LAYOUTS[dialect]
    out: dict[str, torch.Tensor] = {}
    for src_keys, dst in ((fc1_keys, "channel_gate.mlp.0"), (fc2_keys, "channel_gate.mlp.2")):
        src = next((k for k in src_keys if f"{k}.weight" in sd), None)
        if src is None:
            raise ValueError(f"{dialect} state_dict has no {' or '.join(k + '.weight' for k in src_keys)} "
                             f"(keys: {sorted(sd)[:8]}...)")
        w = sd[f"{src}.weight"]
        w = w.reshape(w.shape[0], w.shape[1])  # 1x1 conv (out, in, 1, 1) -> Linear (out, in)
        out[f"{dst}.weight"] = w
        out[f"{dst}.bias"] = sd.get(f"{src}.bias", torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    if conv_key not in sd:
        raise ValueError(f"{dialect} state_dict has no {conv_key}")
    conv = sd[conv_key]
    out["spatial_gate.conv.weight"] = conv.flip(1) if order == "mean,max" else conv
    if bn_prefix is not None:
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if bn_prefix + name in sd:
                out[f"spatial_gate.bn.{name}"] = sd[bn_prefix + name]
    return out


def load_state_dict_from(module: nn.Module, state_dict: Mapping[str, torch.Tensor], dialect: str = "official",
                         prefix: str = "", strict: bool = True) -> nn.Module:
    """Load a ``dialect`` CBAM state_dict into a ``cbam_triton.CBAM`` (or ``reference.CBAM``); returns it.

    The module must have the matching configuration (channels, hidden width, kernel size, and
    ``spatial_norm=False`` for dialects without BatchNorm, such as luuuyi).
    """
    module.load_state_dict(to_reference_state_dict(state_dict, dialect, prefix), strict=strict)
    return module
