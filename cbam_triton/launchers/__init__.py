"""Launchers: shapes, strides, tile rules, grids, dtypes and allocations for each kernel."""

from cbam_triton.launchers._common import Launch, record_launches
from cbam_triton.launchers.gate import gate, plan_gate
from cbam_triton.launchers.pool import channel_pool, plan_channel_pool
from cbam_triton.launchers.spatial_pool import plan_spatial_pool, spatial_pool

__all__ = [
    "Launch", "channel_pool", "gate", "plan_channel_pool", "plan_gate", "plan_spatial_pool",
    "record_launches", "spatial_pool",
]
