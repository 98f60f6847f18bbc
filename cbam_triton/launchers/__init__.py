"""Launchers: shapes, strides, tile rules, grids, dtypes and allocations for each kernel."""

from cbam_triton.launchers._common import Launch, record_launches
from cbam_triton.launchers.gate import gate, plan_gate
from cbam_triton.launchers.gate_backward import gate_backward, plan_gate_backward
from cbam_triton.launchers.input_grad import input_grad, plan_input_grad
from cbam_triton.launchers.pool import channel_pool, channel_pool_counts, plan_channel_pool
from cbam_triton.launchers.spatial_pool import plan_spatial_pool, spatial_pool, spatial_pool_counts
from cbam_triton.launchers.spatial_pool_backward import plan_spatial_pool_backward, spatial_pool_backward

__all__ = [
    "Launch", "channel_pool", "channel_pool_counts", "gate", "gate_backward", "input_grad",
    "plan_channel_pool", "plan_gate", "plan_gate_backward", "plan_input_grad", "plan_spatial_pool",
    "plan_spatial_pool_backward", "record_launches", "spatial_pool", "spatial_pool_backward",
    "spatial_pool_counts",
]
