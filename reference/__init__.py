"""Pure-PyTorch reference CBAM (Woo et al., ECCV 2018), the spec that ``cbam_triton`` matches.

It follows the official implementation (Jongchan/attention-module) in math and in
``state_dict`` layout, with two deliberate modernisations that do not change values:
global pooling is written as ``mean``/``amax`` reductions (so it exports as a global
reduction and propagates NaN like ``torch.amax``), and ``lp``/``lse`` pools are not offered.
"""

from reference.cbam import CBAM, ChannelGate, SpatialGate, validate_config
from reference.tail import ResidualTail

__all__ = ["CBAM", "ChannelGate", "ResidualTail", "SpatialGate", "validate_config"]
