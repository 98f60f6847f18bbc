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
