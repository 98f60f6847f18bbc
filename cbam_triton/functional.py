"""Functional CBAM: the fused forward with every weight passed explicitly.

The three big-tensor stages (global pooling, gated channel pooling, gating) run as Triton kernels
on CUDA tensors (and on CPU tensors under ``TRITON_INTERPRET=1``), otherwise in PyTorch; the tiny
parts (MLP on N*C values, k x k convolution + BatchNorm + sigmoid on N*2*H*W values) are PyTorch
ops in fp32 (fp64 for fp64 inputs). See :func:`cbam`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from cbam_triton import dispatch, stages
from cbam_triton._backend import resolve_backend
from cbam_triton.fused_parts import TAIL_ACTIVATIONS, BlockTail, ChannelAffine, ChannelMLP, SpatialConv
from cbam_triton.schedule import validate_budget, validate_schedule
from cbam_triton.validation import check_devices, validate_input

__all__ = [
    "apply_gates", "cbam", "cbam_tail", "channel_attention", "channel_pool", "spatial_attention",
    "spatial_pool", "validate_input", "validate_tail",
]

def channel_pool(x: torch.Tensor, *, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Global average and max pooling over H*W in one read of x: ``(avg, max)``, each (N, C).

    Results are fp32 (fp64 for fp64 x); NaN propagates like ``torch.amax``/``torch.mean``.
    """
    validate_input(x)
    return stages.channel_pool(x, resolve_backend(x, backend))


def spatial_pool(x: torch.Tensor, mc: torch.Tensor | None = None, *,
                 backend: str | None = None) -> torch.Tensor:
    """``cat([max_C(x * mc), mean_C(x * mc)], dim=1)``, (N, 2, H, W), without forming ``x * mc``.

    ``mc`` is an (N, C) channel map or None. Result in fp32 (fp64 for fp64 x).
    """
    validate_input(x)
    check_devices(x, {"mc": mc})
    if mc is not None and tuple(mc.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mc must have shape (N, C) = {tuple(x.shape[:2])}, got {tuple(mc.shape)}")
    return stages.spatial_pool(x, mc, resolve_backend(x, backend))


def apply_gates(x: torch.Tensor, mc: torch.Tensor | None = None, ms: torch.Tensor | None = None, *,
                backend: str | None = None) -> torch.Tensor:
    """``x * mc[:, :, None, None] * ms`` in one read and one write of x.

    ``mc``: (N, C) or None; ``ms``: (N, 1, H, W), (N, H, W) or None. The product is formed in fp32
    (fp64) and returned in x's dtype and memory format (NCHW or channels_last).
    """
    validate_input(x)
    check_devices(x, {"mc": mc, "ms": ms})
    n, c, h, w = x.shape
    if mc is not None and tuple(mc.shape) != (n, c):
        raise ValueError(f"mc must have shape (N, C) = {(n, c)}, got {tuple(mc.shape)}")
    if ms is not None and ms.numel() != n * h * w:
        raise ValueError(f"ms must have N*H*W = {n * h * w} elements ((N, 1, H, W)), got shape "
                         f"{tuple(ms.shape)}")
    return stages.gate(x, mc, ms, resolve_backend(x, backend))


def channel_attention(
    avg: torch.Tensor | None,
    mx: torch.Tensor | None,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
) -> torch.Tensor:
    """Channel map ``Mc = sigmoid(sum over given pools of fc2(relu(fc1(pool))))``, (N, C).

    The pooled inputs are (N, C) tensors (None for a pool type that is not used); the MLP runs
    in their dtype (fp32 / fp64), with the weights cast to it.
    """
    pooled = [p for p in (avg, mx) if p is not None]
    if not pooled:
        raise ValueError("channel_attention needs at least one of avg, mx")
    acc = pooled[0].dtype
    w1, w2 = fc1_weight.to(acc), fc2_weight.to(acc)
    b1 = fc1_bias.to(acc) if fc1_bias is not None else None
    b2 = fc2_bias.to(acc) if fc2_bias is not None else None
    logits = None
    for p in pooled:  # same summation order as the reference: avg first, then max
        y = F.linear(F.relu(F.linear(p, w1, b1)), w2, b2)
        logits = y if logits is None else logits + y
    return torch.sigmoid(logits)


def spatial_attention(
    pooled: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None = None,
    *,
    bn_weight: torch.Tensor | None = None,
    bn_bias: torch.Tensor | None = None,
    bn_running_mean: torch.Tensor | None = None,
    bn_running_var: torch.Tensor | None = None,
    bn_training: bool = False,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    use_bn: bool = False,
    gate: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
) -> torch.Tensor:
    """Spatial map ``Ms = gate(bn(conv(pooled)))``, (N, 1, H, W), in pooled's dtype (gate: sigmoid).

    ``pooled`` is the (N, Cin, H, W) map (Cin = 2: ``[max, mean]``); ``conv_weight`` is (1, Cin, k, k), padding
    ``k // 2``. With ``use_bn``: in eval (``bn_training=False`` with running statistics) the
    BatchNorm is folded into the convolution; otherwise batch statistics are used and the running
    statistics (if given) are updated in place with ``bn_momentum``, exactly as ``F.batch_norm``.
    """
    acc = pooled.dtype
    w = conv_weight.to(acc)
    b = conv_bias.to(acc) if conv_bias is not None else None
    pad = conv_weight.shape[-1] // 2
    if not use_bn:
        return gate(F.conv2d(pooled, w, b, padding=pad))
    have_stats = bn_running_mean is not None and bn_running_var is not None
    if not bn_training and have_stats:
        scale = torch.rsqrt(bn_running_var.to(acc) + bn_eps)
        if bn_weight is not None:
            scale = scale * bn_weight.to(acc)
        shift = -bn_running_mean.to(acc) * scale
        if b is not None:
            shift = shift + b * scale
        if bn_bias is not None:
            shift = shift + bn_bias.to(acc)
        return gate(F.conv2d(pooled, w * scale.reshape(-1, 1, 1, 1), shift, padding=pad))
    y = F.conv2d(pooled, w, b, padding=pad)
    rm, rv = bn_running_mean, bn_running_var
    tmp_rm = rm.to(acc) if rm is not None and rm.dtype != acc else rm
    tmp_rv = rv.to(acc) if rv is not None and rv.dtype != acc else rv
    y = F.batch_norm(y, tmp_rm, tmp_rv,
                     bn_weight.to(acc) if bn_weight is not None else None,
                     bn_bias.to(acc) if bn_bias is not None else None,
                     True, bn_momentum, bn_eps)
    if tmp_rm is not rm and rm is not None:  # running stats kept in a lower precision
        with torch.no_grad():
            rm.copy_(tmp_rm)
            rv.copy_(tmp_rv)
    return gate(y)


def cbam(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None = None,
    *,
    pool_types: Sequence[str] = ("avg", "max"),
    bn_weight: torch.Tensor | None = None,
    bn_bias: torch.Tensor | None = None,
    bn_running_mean: torch.Tensor | None = None,
    bn_running_var: torch.Tensor | None = None,
    bn_training: bool = False,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
    use_bn: bool | None = None,
    backend: str | None = None,
    schedule: str = "auto",
    l2_budget_bytes: int | None = None,
) -> torch.Tensor:
    """Fused CBAM forward: ``out = (x * Mc) * Ms``.

    Args:
        x: (N, C, H, W) float16/bfloat16/float32/float64 tensor, NCHW or channels_last (read in
            place); other strided views whose H and W cannot be merged are copied to NCHW first.
        fc1_weight, fc1_bias: first MLP layer, (hidden, C) and (hidden,) (bias may be None).
        fc2_weight, fc2_bias: second MLP layer, (C, hidden) and (C,).
        conv_weight, conv_bias: spatial convolution, (1, 2, k, k) with odd k, input order [max, mean].
        pool_types: ``("avg", "max")``, ``("avg",)`` or ``("max",)``.
        bn_*: BatchNorm2d(1) after the convolution, used when ``use_bn`` (default: when
            ``bn_running_var`` or ``bn_weight`` is given); see :func:`spatial_attention`.
        backend: ``"auto"`` (default), ``"triton"`` or ``"torch"``; see
            :func:`cbam_triton._backend.resolve_backend`.
        schedule, l2_budget_bytes: the fused inference forward's schedule (``"auto"``, ``"l2"``,
            ``"stream"``) and L2 budget; see :mod:`cbam_triton.schedule`.

    Returns:
        Tensor of x's shape, dtype and memory format. Inference on the Triton backend is three
        launches per chunk with the MLP and the conv + BN + sigmoid inside the kernels; x is read
        once from DRAM under the ``"l2"`` schedule (three times under ``"stream"``) and the output
        written once; only the output is a full-size allocation.
    """
    weights = {"fc1_weight": fc1_weight, "fc1_bias": fc1_bias, "fc2_weight": fc2_weight,
               "fc2_bias": fc2_bias, "conv_weight": conv_weight, "conv_bias": conv_bias,
               "bn_weight": bn_weight, "bn_bias": bn_bias,
               "bn_running_mean": bn_running_mean, "bn_running_var": bn_running_var}
    be = dispatch.prepare(x, fc1_weight.shape[1] if fc1_weight.dim() == 2 else None, weights, backend)
    c = x.shape[1]
    hidden = fc1_weight.shape[0]
    if fc1_weight.shape != (hidden, c) or fc2_weight.shape != (c, hidden):
        raise ValueError(f"MLP weights must be (hidden, C) and (C, hidden) with C = {c}; got "
                         f"{tuple(fc1_weight.shape)} and {tuple(fc2_weight.shape)}")
    if conv_weight.dim() != 4 or conv_weight.shape[:2] != (1, 2) or conv_weight.shape[2] != conv_weight.shape[3] \
            or conv_weight.shape[2] % 2 == 0:
        raise ValueError(f"conv_weight must be (1, 2, k, k) with odd k, got {tuple(conv_weight.shape)}")
    pools = (pool_types,) if isinstance(pool_types, str) else tuple(pool_types)
    if not pools or any(p not in ("avg", "max") for p in pools) or len(set(pools)) != len(pools):
        raise ValueError(f"pool_types must be a non-empty subset of ('avg', 'max'), got {pool_types!r}")
    if use_bn is None:
        use_bn = bn_running_var is not None or bn_weight is not None
    validate_schedule(schedule)
    validate_budget(l2_budget_bytes)

    def channel_map(avg: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
        return channel_attention(avg if "avg" in pools else None, mx if "max" in pools else None,
                                 fc1_weight, fc1_bias, fc2_weight, fc2_bias)

    def spatial_map(pooled: torch.Tensor, update_stats: bool) -> torch.Tensor:
        batch_stats = bn_training or bn_running_mean is None or bn_running_var is None
        keep = update_stats or not batch_stats  # the recomputation must not update the statistics
        return spatial_attention(pooled, conv_weight, conv_bias, bn_weight=bn_weight, bn_bias=bn_bias,
                                 bn_running_mean=bn_running_mean if keep else None,
                                 bn_running_var=bn_running_var if keep else None,
                                 bn_training=bn_training, bn_momentum=bn_momentum, bn_eps=bn_eps,
                                 use_bn=use_bn)

    def fused_parts() -> tuple[ChannelMLP, SpatialConv] | str:
        mode = "avg+max" if len(pools) == 2 else pools[0]
        mlp = ChannelMLP(fc1_weight, fc1_bias, fc2_weight, fc2_bias, mode, "relu")
        if not use_bn:
            return mlp, SpatialConv(conv_weight, conv_bias)
        if bn_training or bn_running_mean is None or bn_running_var is None:
            return "BatchNorm with batch statistics (bn_training or no running statistics)"
        affine = bn_weight is not None and bn_bias is not None
        if (bn_weight is None) != (bn_bias is None):
            return "BatchNorm with only one of bn_weight, bn_bias"
        return mlp, SpatialConv(conv_weight, conv_bias, "max,mean", bn_running_mean, bn_running_var,
                                bn_weight if affine else None, bn_bias if affine else None, float(bn_eps))

    return dispatch.run(x, be, channel_map, spatial_map, weights.values(), fused_parts, schedule, l2_budget_bytes)


def validate_tail(y: torch.Tensor, residual: object, activation: str) -> None:
    """Check a block tail's residual (a tensor of y's shape, dtype and device; any strides) and
    activation (a key of :data:`cbam_triton.fused_parts.TAIL_ACTIVATIONS`): ``TypeError`` for a
    non-tensor or another dtype, ``ValueError`` otherwise."""
    if activation not in TAIL_ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(TAIL_ACTIVATIONS)}, got {activation!r}")
    if residual is None:
        return
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"residual must be a torch.Tensor or None, got {type(residual).__name__}")
    if residual.dtype != y.dtype:
        raise TypeError(f"residual must have y's dtype {y.dtype} (the fused tail adds it in the gate's store "
                        f"without a cast), got {residual.dtype}; cast it first")
    if tuple(residual.shape) != tuple(y.shape):
        raise ValueError(f"residual must have y's shape {tuple(y.shape)} (no broadcasting), got "
                         f"{tuple(residual.shape)}")
    if residual.device != y.device:
        raise ValueError(f"residual is on {residual.device} but y is on {y.device}")


def cbam_tail(
    y: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None = None,
    *,
    pool_types: Sequence[str] = ("avg", "max"),
    bn_weight: torch.Tensor | None = None,
    bn_bias: torch.Tensor | None = None,
    bn_running_mean: torch.Tensor | None = None,
    bn_running_var: torch.Tensor | None = None,
    bn_eps: float = 1e-5,
    use_bn: bool | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_bias: torch.Tensor | None = None,
    norm_running_mean: torch.Tensor | None = None,
    norm_running_var: torch.Tensor | None = None,
    norm_eps: float = 1e-5,
    residual: torch.Tensor | None = None,
    activation: str = "relu",
    backend: str | None = None,
    schedule: str = "auto",
    l2_budget_bytes: int | None = None,
) -> torch.Tensor:
    """A ResNet block's inference tail: ``activation(cbam(norm(y)) + residual)``.

    ``norm`` is the block's last BatchNorm in eval mode (``norm_running_mean``/``_var`` (C,), optional
    ``norm_weight``/``norm_bias``; none of them: no norm); the CBAM arguments are :func:`cbam`'s (its
    spatial BatchNorm in eval mode); ``residual`` (y's shape and dtype, any strides, None: no
    addition) and ``activation`` (``"relu"``, ``"silu"`` or ``"identity"``) follow. On the Triton backend in
    inference this is one custom operator (``torch.ops.cbam_triton.fused_tail``, three launches per
    chunk: y and the residual read once, the output written once where the kernels do the tail
    themselves, see :func:`cbam_triton.launchers.forward.fused_tail`). When autograd records, while
    exporting, and on the torch backend it is composed of standard ops and :func:`cbam` (same values).

    Returns a tensor of y's shape, dtype and memory format.
    """
    be = dispatch.prepare(y, fc1_weight.shape[1] if fc1_weight.dim() == 2 else None,
                 {"fc1_weight": fc1_weight, "fc1_bias": fc1_bias, "fc2_weight": fc2_weight, "fc2_bias": fc2_bias,
                  "conv_weight": conv_weight, "conv_bias": conv_bias, "bn_weight": bn_weight, "bn_bias": bn_bias,
                  "bn_running_mean": bn_running_mean, "bn_running_var": bn_running_var, "norm_weight": norm_weight,
                  "norm_bias": norm_bias, "norm_running_mean": norm_running_mean,
                  "norm_running_var": norm_running_var}, backend)
    validate_tail(y, residual, activation)
    c = y.shape[1]
    if (norm_running_mean is None) != (norm_running_var is None):
        raise ValueError("norm_running_mean and norm_running_var go together (the block's last BatchNorm in eval)")
    if norm_running_mean is None and (norm_weight is not None or norm_bias is not None):
        raise ValueError("norm_weight/norm_bias need norm_running_mean and norm_running_var (eval-mode BatchNorm)")
    for name, t in (("norm_weight", norm_weight), ("norm_bias", norm_bias), ("norm_running_mean", norm_running_mean),
                    ("norm_running_var", norm_running_var)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"{name} must have shape (C,) = ({c},), got {tuple(t.shape)}")
    spatial_stats = bn_running_mean is not None and bn_running_var is not None
    if use_bn is None:
        use_bn = bn_running_var is not None or bn_weight is not None

    def composed() -> torch.Tensor:
        z = y if norm_running_mean is None else F.batch_norm(y, norm_running_mean, norm_running_var, norm_weight,
                                                              norm_bias, False, 0.0, norm_eps)
        out = cbam(z, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, pool_types=pool_types,
                   bn_weight=bn_weight, bn_bias=bn_bias, bn_running_mean=bn_running_mean,
                   bn_running_var=bn_running_var, bn_eps=bn_eps, use_bn=use_bn, backend=be, schedule=schedule,
                   l2_budget_bytes=l2_budget_bytes)
        if residual is not None:
            out = out + residual
        if activation == "relu":
            return torch.relu(out)
        return F.silu(out) if activation == "silu" else out

    params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, bn_weight, bn_bias,
              norm_weight, norm_bias)
    if be != "triton" or y.shape[0] == 0 or dispatch.needs_grad(y, params) or (residual is not None
                                                                             and dispatch.needs_grad(residual, ())) \
            or (use_bn and not spatial_stats) or (bn_weight is None) != (bn_bias is None):
        return composed()
    pools = (pool_types,) if isinstance(pool_types, str) else tuple(pool_types)
    if not pools or any(p not in ("avg", "max") for p in pools) or len(set(pools)) != len(pools):
        raise ValueError(f"pool_types must be a non-empty subset of ('avg', 'max'), got {pool_types!r}")
    hidden = fc1_weight.shape[0]
    if fc1_weight.shape != (hidden, c) or fc2_weight.shape != (c, hidden):
        raise ValueError(f"MLP weights must be (hidden, C) and (C, hidden) with C = {c}; got "
                         f"{tuple(fc1_weight.shape)} and {tuple(fc2_weight.shape)}")
    if conv_weight.dim() != 4 or conv_weight.shape[:2] != (1, 2) or conv_weight.shape[2] != conv_weight.shape[3] \
            or conv_weight.shape[2] % 2 == 0:
        raise ValueError(f"conv_weight must be (1, 2, k, k) with odd k, got {tuple(conv_weight.shape)}")
    validate_schedule(schedule)
    validate_budget(l2_budget_bytes)
    mlp = ChannelMLP(fc1_weight, fc1_bias, fc2_weight, fc2_bias, "avg+max" if len(pools) == 2 else pools[0], "relu")
    conv = SpatialConv(conv_weight, conv_bias, "max,mean", bn_running_mean if use_bn else None,
                       bn_running_var if use_bn else None, bn_weight if use_bn else None,
                       bn_bias if use_bn else None, float(bn_eps))
    affine = (ChannelAffine(norm_running_mean, norm_running_var, norm_weight, norm_bias, float(norm_eps))
              if norm_running_mean is not None else None)
    return dispatch.fused_tail(y, mlp, conv, BlockTail(affine, residual, activation), schedule, l2_budget_bytes)
