"""The rule for the normalisation module after the spatial convolution (``spatial_gate.bn`` and its
dialect equivalents).

What the fused kernels compute is an eval-mode BatchNorm: an affine map of the conv's output given
by running statistics, ``eps`` and (optionally) a weight and a bias. A norm module is therefore

* **folded** into the gate kernel when it computes exactly that function of its attributes
  (:func:`foldable`): ``nn.BatchNorm2d`` and its subclasses that keep its ``forward``, ``nn.SyncBatchNorm``
  in eval mode (it synchronises nothing there), timm's ``BatchNormAct2d``/``SyncBatchNormAct`` with
  identity drop and act, and torchvision's ``FrozenBatchNorm2d`` (in any mode: it has no training
  behaviour);
* **called as the module it is** (on the small (N, 1, H, W) map, between the kernels) otherwise: a
  BatchNorm in training mode or without running statistics, ``SyncBatchNorm`` in training (it
  all-reduces the batch statistics), a subclass with its own ``forward``, any norm with forward hooks;
* **refused** by :func:`check` when it is not a one-feature norm at all — :func:`cbam_triton.convert`
  then leaves that block unconverted with a warning naming why.

Nothing is ever replaced by a module that computes differently.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["bn_state", "check", "copy_for", "foldable", "fused_fields", "is_frozen", "is_plain_batchnorm",
           "num_features"]

_TIMM_BN_ACT = ("BatchNormAct2d", "SyncBatchNormAct")


def _hooked(bn: nn.Module) -> bool:
    return bool(bn._forward_hooks or bn._forward_pre_hooks)


def is_frozen(bn: nn.Module) -> bool:
    """torchvision's ``FrozenBatchNorm2d`` (detection backbones; also re-exported by timm), not subclassed."""
    misc = sys.modules.get("torchvision.ops.misc")
    return misc is not None and type(bn) is getattr(misc, "FrozenBatchNorm2d", None) and not _hooked(bn)


def is_plain_batchnorm(bn: nn.Module) -> bool:
    """Whether ``bn`` computes exactly ``nn.BatchNorm2d``'s function of its attributes (in its current
    mode), so that cbam-triton may compute it itself: ``nn.BatchNorm2d`` and subclasses that keep its
    ``forward``; ``nn.SyncBatchNorm`` (and such subclasses) in eval mode only, where it synchronises
    nothing; timm's ``BatchNormAct2d`` (``SyncBatchNormAct`` in eval) with identity drop and act. A
    module with forward hooks is never plain (the hooks must run)."""
    if _hooked(bn):
        return False
    t = type(bn)
    if t.__name__ in _TIMM_BN_ACT and t.__module__.startswith("timm.layers"):
        identity = all(getattr(bn, n, None) is None or isinstance(getattr(bn, n), nn.Identity) for n in ("drop", "act"))
        return identity and not (isinstance(bn, nn.SyncBatchNorm) and bn.training)
    if isinstance(bn, nn.SyncBatchNorm):
        return not bn.training and t.forward is nn.SyncBatchNorm.forward
    return isinstance(bn, nn.BatchNorm2d) and t.forward is nn.BatchNorm2d.forward


def num_features(bn: nn.Module) -> int | None:
    """The number of channels a norm module normalises (None: not a BatchNorm-like module)."""
    if isinstance(bn, nn.modules.batchnorm._NormBase):
        return bn.num_features
    if type(bn).__name__ == "FrozenBatchNorm2d":  # torchvision's (is_frozen) and look-alikes
        w = getattr(bn, "weight", None)
        return int(w.numel()) if w is not None else None
    return None


def check(bn: nn.Module | None, where: str = "spatial norm") -> None:
    """Raise ``TypeError`` unless ``bn`` is None or a one-feature BatchNorm-like module (any
    ``nn.BatchNorm*``/``SyncBatchNorm`` subclass or ``FrozenBatchNorm2d``) — the norms this project
    folds or calls as they are."""
    if bn is None:
        return
    if num_features(bn) != 1:
        raise TypeError(f"{where} must be a one-feature BatchNorm (BatchNorm2d(1), SyncBatchNorm(1), "
                        f"FrozenBatchNorm2d(1) or a subclass), got {bn!r}")


def foldable(bn: nn.Module | None, what: str = "spatial norm") -> str | None:
    """None when the fused kernels compute ``bn`` exactly (an eval-mode affine of the map, or no
    norm); otherwise why it runs as the module it is. ``what`` names the norm in the reason (the
    spatial norm of a CBAM, or a residual block's last norm, which the fused block tail folds the
    same way per channel)."""
    if bn is None or is_frozen(bn):
        return None
    if not is_plain_batchnorm(bn):
        return (f"its {what} is a {type(bn).__name__} with behaviour of its own (a forward, hooks or, "
                "for SyncBatchNorm, training mode): the module itself runs")
    if bn.training or bn.running_mean is None or bn.running_var is None:
        return f"its {what} normalises with batch statistics (training mode or no running statistics)"
    return None


def fused_fields(bn: nn.Module | None) -> dict[str, Any]:
    """The :class:`~cbam_triton.fused_parts.SpatialConv` BatchNorm fields of a :func:`foldable` norm
    (``{}`` for no norm): its running statistics, affine parameters and eps, read in place."""
    if bn is None:
        return {}
    affine = getattr(bn, "weight", None) is not None and getattr(bn, "bias", None) is not None
    return {"bn_mean": bn.running_mean, "bn_var": bn.running_var, "bn_weight": bn.weight if affine else None,
            "bn_bias": bn.bias if affine else None, "bn_eps": float(bn.eps)}


def copy_for(src: nn.Module) -> nn.Module:
    """A norm of the same kind and configuration as ``src`` for a new module (its values are loaded
    from ``src``'s state_dict afterwards): a fresh ``nn.BatchNorm2d`` for a plain one, a deep copy of
    anything else (its type, forward, hooks and mode kept)."""
    if type(src) is nn.BatchNorm2d:
        return nn.BatchNorm2d(src.num_features, eps=src.eps, momentum=src.momentum, affine=src.affine,
                              track_running_stats=src.track_running_stats)
    return copy.deepcopy(src)


@contextlib.contextmanager
def _buffers_restored(module: nn.Module) -> Iterator[None]:
    """Run a module on copies of its own buffers (running statistics, counters): what it writes into
    them is dropped (the originals are never written, so autograd's saved versions stay valid)."""
    saved = dict(module._buffers)
    module._buffers.update({k: v.clone() for k, v in saved.items() if v is not None})
    try:
        yield
    finally:
        module._buffers.update(saved)


def _called_norm(bn: nn.Module, update_stats: bool,
                 gate: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``y -> gate(bn(y))`` calling the norm module itself, in its parameters' dtype
    (``update_stats=False``: its buffers are restored afterwards)."""
    def norm_then_gate(y: torch.Tensor) -> torch.Tensor:
        p = next(iter(bn.parameters()), None)
        dtype = p.dtype if p is not None and p.is_floating_point() else y.dtype
        with contextlib.nullcontext() if update_stats else _buffers_restored(bn):
            z = bn(y.to(dtype))
        return gate(z.to(y.dtype))

    return norm_then_gate


def bn_state(bn: nn.BatchNorm2d | None, update_stats: bool = True,
              gate: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid) -> dict[str, Any]:
    """Keyword arguments for :func:`spatial_attention` (``gate`` included), with nn.BatchNorm2d's own
    bookkeeping.

    ``update_stats=False`` (the training path's differentiable recomputation): the same values,
    but neither the running statistics nor ``num_batches_tracked`` are touched. A norm that is not a
    plain BatchNorm2d (:func:`_plain_bn`: e.g. ``nn.SyncBatchNorm`` in training, after
    ``convert_sync_batchnorm``) is called as the module it is, never recomputed as a local BatchNorm.
    """
    if bn is None:
        return {"use_bn": False, "gate": gate}
    if not is_plain_batchnorm(bn):
        return {"use_bn": False, "gate": _called_norm(bn, update_stats, gate)}
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if update_stats and bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep_stats = (not bn.training or bn.track_running_stats) and (update_stats or not use_batch_stats)
    return {
        "use_bn": True,
        "bn_weight": bn.weight,
        "bn_bias": bn.bias,
        "bn_running_mean": bn.running_mean if keep_stats else None,
        "bn_running_var": bn.running_var if keep_stats else None,
        "bn_training": use_batch_stats,
        "bn_momentum": momentum,
        "bn_eps": bn.eps,
        "gate": gate,
    }
