"""The training path: a fused forward whose backward is three Triton kernels.

When autograd needs gradients, :func:`forward` runs the forward in two phases:

1. Without autograd: the pools (with tie counts), the small maps ``Mc`` and ``Ms`` (BatchNorm's
   running statistics updated here, once).
2. With autograd, as a graph of three custom operators around the *recomputed* small parts (the
   MLP and the k x k convolution on N*C and N*2*H*W values — cheap):

   ``train_anchor(x, saved small maps) -> (avg, max, pooled_proxy, out_proxy)``
       its outputs stand for x's contributions: avg/max are the pools' values, the proxies are
       zeros (stride 0, nothing allocated) that enter the pooled map and the output additively,
       so autograd hands their gradients — d_pooled and the output gradient g — to its backward;
   ``train_spatial_pool(mc, pooled_proxy) -> pooled``  backward: d_mc through the spatial pool
       (one read of x);
   ``train_gate(mc, ms, out_proxy) -> out``  forward: the gate kernel; backward: d_mc and d_ms
       (one read of g and x).

   Autograd runs ``train_anchor``'s backward last, once every small gradient is known, and it
   computes the whole input gradient in one kernel (read g and x, write dx). The gradient is the
   exact chain rule of the reference (max ties split evenly, as ``torch.amax``).

Saved for backward: x and small tensors only (N*C, N*H*W); never ``x * Mc``, the output or any
other full-size tensor. Big-tensor traffic of the backward: 6*|x| (g and x read twice, x once
more, dx written once). Every reduction is a fixed-order sum of per-program partials: gradients
are bitwise reproducible run to run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cbam_triton import backward_ops  # noqa: F401 (registers the backward operators)
from cbam_triton._layout import compute_dtype, empty_output
from cbam_triton.ops import define_op

ChannelMap = Callable[[Tensor, Tensor], Tensor]
SpatialMap = Callable[[Tensor, bool], Tensor]


def _stride0(shape: tuple[int, ...], like: Tensor, dtype: torch.dtype) -> Tensor:
    """A zero tensor of ``shape`` that owns one element (all strides 0): a proxy, never read."""
    return torch.zeros((), dtype=dtype, device=like.device).expand(shape)


def _clone_or_empty(t: Tensor | None, like: Tensor) -> Tensor:
    return t.clone() if t is not None else like.new_empty((0,), dtype=compute_dtype(like))


# ------------------------------------------------------------------------------------ train_anchor
@define_op("train_anchor")
def train_anchor(x: Tensor, avg: Tensor | None, mx: Tensor | None, max_count: Tensor | None,
                 mc: Tensor | None, ms: Tensor | None, pooled: Tensor | None,
                 pooled_count: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(avg, max, pooled_proxy, out_proxy); see the module docstring."""
    n, _, h, w = x.shape
    return (_clone_or_empty(avg, x), _clone_or_empty(mx, x),
            _stride0((n, 2, h, w), x, compute_dtype(x)), _stride0(tuple(x.shape), x, x.dtype))


@train_anchor.register_fake
def _(x, avg, mx, max_count, mc, ms, pooled, pooled_count):  # noqa: ANN001, ANN202
    n, c, h, w = x.shape
    acc = compute_dtype(x)
    pool = lambda t: x.new_empty((n, c), dtype=acc) if t is not None else x.new_empty((0,), dtype=acc)  # noqa: E731
    return (pool(avg), pool(mx), x.new_empty((), dtype=acc).expand(n, 2, h, w),
            x.new_empty((), dtype=x.dtype).expand(x.shape))


def _anchor_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    x, avg, mx, max_count, mc, ms, pooled, pooled_count = inputs
    ctx.has = (avg is not None, mx is not None, pooled is not None)
    ctx.save_for_backward(x, mx, max_count, mc, ms, pooled, pooled_count)


def _defined(t: Tensor | None) -> bool:
    return t is not None and t.numel() > 0


def _spatial_pool_coefficients(d_pooled: Tensor, pooled_count: Tensor, channels: int,
                               acc: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per pixel, what the gradient of ``[max_C, mean_C]`` gives each channel:
    ``a = d_max / ties`` (for the channels at the max) and ``b = d_mean / C`` (for all)."""
    d = d_pooled.to(acc)
    return d[:, 0] / pooled_count.to(acc), d[:, 1] / channels


def _anchor_backward(ctx, d_avg, d_max, d_pooled, g):  # noqa: ANN001, ANN202
    x, mx, max_count, mc, ms, pooled, pooled_count = ctx.saved_tensors
    has_avg, has_max, has_pool = ctx.has
    n, c, h, w = x.shape
    acc = compute_dtype(x)
    avg_g = d_avg.to(acc) / (h * w) if has_avg and _defined(d_avg) else None
    max_g = d_max.to(acc) / max_count.to(acc) if has_max and _defined(d_max) else None
    pmax = a = b = None
    if has_pool and _defined(d_pooled):
        pmax = pooled[:, 0]
        a, b = _spatial_pool_coefficients(d_pooled, pooled_count, c, acc)
    if g is None and avg_g is None and max_g is None and pmax is None:
        return (torch.zeros_like(x),) + (None,) * 7
    dx = torch.ops.cbam_triton.input_grad(g, x, mc, ms, pmax, a, b, mx if max_g is not None else None,
                                          avg_g, max_g)
    return (dx,) + (None,) * 7


train_anchor.register_autograd(_anchor_backward, setup_context=_anchor_setup)


# ------------------------------------------------------------------------------ train_spatial_pool
@define_op("train_spatial_pool")
def train_spatial_pool(x: Tensor, mc_in: Tensor | None, proxy: Tensor, mc: Tensor | None, pooled: Tensor,
                       pooled_count: Tensor) -> Tensor:
    """The pooled map (a copy of the phase-1 value, N*2*H*W) as a function of ``mc_in`` and the proxy."""
    return pooled.clone()


@train_spatial_pool.register_fake
def _(x, mc_in, proxy, mc, pooled, pooled_count):  # noqa: ANN001, ANN202
    return pooled.new_empty(pooled.shape)


def _spool_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    x, mc_in, proxy, mc, pooled, pooled_count = inputs
    ctx.has_mc = mc_in is not None
    ctx.save_for_backward(x, mc, pooled, pooled_count)


def _spool_backward(ctx, d_pooled):  # noqa: ANN001, ANN202
    x, mc, pooled, pooled_count = ctx.saved_tensors
    d_mc = None
    if ctx.has_mc and ctx.needs_input_grad[1]:
        a, b = _spatial_pool_coefficients(d_pooled, pooled_count, x.shape[1], compute_dtype(x))
        d_mc = torch.ops.cbam_triton.spatial_pool_backward(x, mc, pooled[:, 0], a, b)
    return None, d_mc, d_pooled, None, None, None


train_spatial_pool.register_autograd(_spool_backward, setup_context=_spool_setup)


# -------------------------------------------------------------------------------------- train_gate
@define_op("train_gate")
def train_gate(x: Tensor, mc: Tensor | None, ms: Tensor | None, proxy: Tensor) -> Tensor:
    """``x * mc * ms`` (the gate kernel), a function of mc, ms and the output proxy."""
    from cbam_triton.launchers import gate as launch

    return launch(x, mc, ms)


@train_gate.register_fake
def _(x, mc, ms, proxy):  # noqa: ANN001, ANN202
    return empty_output(x)[0]


def _gate_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    x, mc, ms, proxy = inputs
    ctx.ms_shape = tuple(ms.shape) if ms is not None else None
    ctx.save_for_backward(x, mc, ms)


def _gate_backward(ctx, g):  # noqa: ANN001, ANN202
    x, mc, ms = ctx.saved_tensors
    need_mc = mc is not None and ctx.needs_input_grad[1]
    need_ms = ms is not None and ctx.needs_input_grad[2]
    d_mc = d_ms = None
    if need_mc or need_ms:
        d_mc, d_ms = torch.ops.cbam_triton.gate_backward(g, x, mc, ms)
        d_mc = d_mc if need_mc else None
        d_ms = d_ms.reshape(ctx.ms_shape) if need_ms else None
    return None, d_mc, d_ms, g


train_gate.register_autograd(_gate_backward, setup_context=_gate_setup)


# ----------------------------------------------------------------------------------------- forward
def forward(x: Tensor, channel_map: ChannelMap | None, spatial_map: SpatialMap | None) -> Tensor:
    """CBAM forward for training: same values as the inference path, Triton backward.

    ``channel_map(avg, max) -> Mc`` (N, C) and ``spatial_map(pooled, update_stats) -> Ms``
    (N, 1, H, W) are the small parts (PyTorch, differentiable); either may be None (a lone gate).
    ``spatial_map`` is called twice, with ``update_stats=True`` once (BatchNorm's running
    statistics) and ``False`` for the differentiable recomputation.
    """
    ops = torch.ops.cbam_triton
    avg = mx = max_count = mc = pooled = pooled_count = ms = None
    with torch.no_grad():
        if channel_map is not None:
            avg, mx, max_count = ops.channel_pool_counts(x)
            mc = channel_map(avg, mx)
        if spatial_map is not None:
            pooled, pooled_count = ops.spatial_pool_counts(x, mc)
            ms = spatial_map(pooled, True)
    avg2, mx2, pooled_proxy, out_proxy = ops.train_anchor(x, avg, mx, max_count, mc, ms, pooled, pooled_count)
    xd = x.detach()
    mc2 = channel_map(avg2, mx2) if channel_map is not None else None
    ms2 = None
    if spatial_map is not None:
        pooled2 = ops.train_spatial_pool(xd, mc2, pooled_proxy, mc, pooled, pooled_count)
        ms2 = spatial_map(pooled2, False)
    return ops.train_gate(xd, mc2, ms2, out_proxy)
