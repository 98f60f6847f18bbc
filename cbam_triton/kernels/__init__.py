"""Triton kernels (``@triton.jit`` only; launchers live in :mod:`cbam_triton.launchers`).

Every kernel sees the 4-D input as ``x[n, c, p]`` with ``p = h * W + w`` and explicit strides
``(stride_n, stride_c, stride_p)``, so NCHW (``stride_p == 1``) and channels_last
(``stride_c == 1``) are both read natively; Triton specialises the unit stride to a constant,
which makes that axis contiguous for coalescing and 128-bit vectorisation.
"""

from cbam_triton.kernels.gate import gate_kernel
from cbam_triton.kernels.pool import channel_pool_kernel
from cbam_triton.kernels.spatial_pool import spatial_pool_kernel

ALL_KERNELS = (channel_pool_kernel, spatial_pool_kernel, gate_kernel)

__all__ = ["ALL_KERNELS", "channel_pool_kernel", "gate_kernel", "spatial_pool_kernel"]
