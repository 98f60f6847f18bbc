"""Small ``@triton.jit`` helpers shared by the kernels."""

import triton
import triton.language as tl


@triton.jit
def max_propagate_nan(x, axis: tl.constexpr):
    """``tl.max`` along ``axis`` that propagates NaN like ``torch.amax``.

    ``tl.max`` alone drops NaN (PTX ``max.f32``). A ``tl.reduce`` with a NaN-propagating combine
    function would do, but is very slow in the interpreter; this uses two native reductions.
    """
    m = tl.max(x, axis=axis)
    has_nan = tl.max((x != x).to(tl.int32), axis=axis)
    return tl.where(has_nan > 0, float("nan"), m)


@triton.jit
def track_max_count(acc_max, acc_cnt, v, mask):
    """One step of a running per-lane (max, count of elements equal to it), masked lanes ignored.

    ``v`` must already be ``-inf`` where ``mask`` is false. A NaN freezes the lane's count (its
    max becomes NaN, which nothing equals): the final count is then 0, as ``torch.amax``'s backward
    sees it (no element equals a NaN maximum).
    """
    gt = v > acc_max
    eq = (v == acc_max) & mask
    acc_cnt = tl.where(gt, 1, tl.where(eq, acc_cnt + 1, acc_cnt))
    acc_max = tl.maximum(acc_max, v, propagate_nan=tl.PropagateNan.ALL)
    return acc_max, acc_cnt


@triton.jit
def count_at_max(acc_max, acc_cnt, total_max, axis: tl.constexpr):
    """Elements equal to the reduced maximum: the lane counts of the lanes that reached it."""
    if axis == 0:
        hit = acc_max == total_max[None, :]
    else:
        hit = acc_max == total_max[:, None]
    return tl.sum(tl.where(hit, acc_cnt, 0), axis=axis)
