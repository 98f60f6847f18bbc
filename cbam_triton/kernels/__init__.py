"""Triton kernels (``@triton.jit`` only; launchers live in :mod:`cbam_triton.launchers`).

Every kernel sees the 4-D input as ``x[n, c, p]`` with ``p = h * W + w`` and explicit strides
``(stride_n, stride_c, stride_p)``, so NCHW (``stride_p == 1``) and channels_last
(``stride_c == 1``) are both read natively; Triton specialises the unit stride to a constant,
which makes that axis contiguous for coalescing and 128-bit vectorisation.
"""

from cbam_triton.kernels.channel_map import channel_map_kernel
from cbam_triton.kernels.gate import gate_kernel
from cbam_triton.kernels.gate_backward import gate_backward_kernel
from cbam_triton.kernels.gate_conv import gate_conv_kernel
from cbam_triton.kernels.input_grad import input_grad_kernel
from cbam_triton.kernels.pool import channel_pool_kernel
from cbam_triton.kernels.pool_mlp import channel_pool_mlp_kernel
from cbam_triton.kernels.spatial_pool import spatial_pool_kernel
from cbam_triton.kernels.spatial_pool_backward import spatial_pool_backward_kernel

#: forward: stage 1, 2, 3 (small parts in PyTorch between them: training, unfusable configurations)
FORWARD_KERNELS = (channel_pool_kernel, spatial_pool_kernel, gate_kernel)
#: the fused inference forward: stage 1 with the MLP, stage 2 (spatial_pool_kernel, COMBINE), stage 3
#: with the conv + BN + sigmoid, and the channel-map launch (Mc of a chunk from the MLP's last layer)
FUSED_KERNELS = (channel_pool_mlp_kernel, gate_conv_kernel, channel_map_kernel)
#: backward: map gradients of stage 3, of stage 2, then the input gradient of the whole block
BACKWARD_KERNELS = (gate_backward_kernel, spatial_pool_backward_kernel, input_grad_kernel)
ALL_KERNELS = FORWARD_KERNELS + FUSED_KERNELS + BACKWARD_KERNELS

__all__ = [
    "ALL_KERNELS", "BACKWARD_KERNELS", "FORWARD_KERNELS", "FUSED_KERNELS", "channel_map_kernel", "channel_pool_kernel",
    "channel_pool_mlp_kernel", "gate_backward_kernel", "gate_conv_kernel", "gate_kernel", "input_grad_kernel",
    "spatial_pool_backward_kernel", "spatial_pool_kernel",
]
