"""Custom operators for the training path's kernels (``torch.ops.cbam_triton.*``), without autograd.

* ``channel_pool_counts`` / ``spatial_pool_counts``: the forward pools plus, per max, how many
  elements reach it (int32) — the backward splits a max's gradient evenly among ties, as
  ``torch.amax`` does.
* ``gate_backward``, ``spatial_pool_backward``, ``input_grad``: the three backward kernels.

Each has a fake implementation (shapes, dtypes, strides) so ``torch.compile`` and AOT autograd can
trace the backward graph that :mod:`cbam_triton.training` builds. Absent optional outputs are
returned as empty ``(0,)`` tensors (an operator cannot return None).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cbam_triton._layout import compute_dtype, empty_output
from cbam_triton.ops import define_op


def _absent(like: Tensor) -> Tensor:
    """The (0,) placeholder returned for an absent optional output."""
    return like.new_empty((0,), dtype=compute_dtype(like))


# ------------------------------------------------------------------------------ forward + counts
@define_op("channel_pool_counts")
def channel_pool_counts(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(avg, max, count): (N, C) fp32/fp64 avg and max over H*W, int32 count of elements at the max."""
    from cbam_triton.launchers import channel_pool_counts as launch

    avg, mx, cnt = launch(x)
    return avg.contiguous(), mx.contiguous(), cnt.contiguous()


@channel_pool_counts.register_fake
def _(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n, c = x.shape[:2]
    acc = compute_dtype(x)
    return x.new_empty((n, c), dtype=acc), x.new_empty((n, c), dtype=acc), x.new_empty((n, c), dtype=torch.int32)


@define_op("spatial_pool_counts")
def spatial_pool_counts(x: Tensor, mc: Tensor | None) -> tuple[Tensor, Tensor]:
    """(pooled, count): the (N, 2, H, W) ``[max_C, mean_C]`` of ``x * mc`` and the int32 (N, H, W)
    number of channels at the max."""
    from cbam_triton.launchers import spatial_pool_counts as launch

    n, _, h, w = x.shape
    pooled, cnt = launch(x, mc)
    return pooled.contiguous(), cnt.reshape(n, h, w).contiguous()


@spatial_pool_counts.register_fake
def _(x: Tensor, mc: Tensor | None) -> tuple[Tensor, Tensor]:
    n, _, h, w = x.shape
    return x.new_empty((n, 2, h, w), dtype=compute_dtype(x)), x.new_empty((n, h, w), dtype=torch.int32)


# -------------------------------------------------------------------------------------- backward
@define_op("gate_backward")
def gate_backward(g: Tensor, x: Tensor, mc: Tensor | None, ms: Tensor | None) -> tuple[Tensor, Tensor]:
    """(d_mc (N, C), d_ms (N, 1, H, W)) of ``out = x * mc * ms`` from the output gradient g; an
    absent map's gradient is an empty (0,) tensor."""
    from cbam_triton.launchers import gate_backward as launch

    n, _, h, w = x.shape
    dmc, dms = launch(g, x, mc, ms)
    return (dmc.contiguous() if dmc is not None else _absent(x),
            dms.reshape(n, 1, h, w).contiguous() if dms is not None else _absent(x))


@gate_backward.register_fake
def _(g: Tensor, x: Tensor, mc: Tensor | None, ms: Tensor | None) -> tuple[Tensor, Tensor]:
    n, c, h, w = x.shape
    acc = compute_dtype(x)
    dmc = x.new_empty((n, c), dtype=acc) if mc is not None else _absent(x)
    dms = x.new_empty((n, 1, h, w), dtype=acc) if ms is not None else _absent(x)
    return dmc, dms


@define_op("spatial_pool_backward")
def spatial_pool_backward(x: Tensor, mc: Tensor, pmax: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``d_mc[n, c] = sum_p x * (a * [x * mc == pmax] + b)`` (N, C), per-pixel a, b, pmax."""
    from cbam_triton.launchers import spatial_pool_backward as launch

    return launch(x, mc, pmax, a, b).contiguous()


@spatial_pool_backward.register_fake
def _(x: Tensor, mc: Tensor, pmax: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return x.new_empty(tuple(x.shape[:2]), dtype=compute_dtype(x))


@define_op("input_grad")
def input_grad(g: Tensor | None, x: Tensor, mc: Tensor | None, ms: Tensor | None, pmax: Tensor | None,
               a: Tensor | None, b: Tensor | None, cmax: Tensor | None, avg_g: Tensor | None,
               max_g: Tensor | None) -> Tensor:
    """The block's input gradient in one pass (see :func:`cbam_triton.launchers.input_grad`)."""
    from cbam_triton.launchers import input_grad as launch

    return launch(g, x, mc=mc, ms=ms, pmax=pmax, a=a, b=b, cmax=cmax, avg_g=avg_g, max_g=max_g)


@input_grad.register_fake
def _(g, x, mc, ms, pmax, a, b, cmax, avg_g, max_g) -> Tensor:  # noqa: ANN001
    return empty_output(x)[0]
