"""Pure-PyTorch reference CBAM (Woo et al., ECCV 2018), the spec that ``cbam_triton`` matches.

The code lives in :mod:`cbam_triton.reference` (the installed package carries it: ``CBAM.to_reference``
and the converter need it); this top-level package, importable from a clone, names the same objects
(``reference.CBAM is cbam_triton.reference.CBAM``) for the tests and the benchmark.

It follows the official implementation (Jongchan/attention-module) in math and in
``state_dict`` layout, with two deliberate modernisations that do not change values:
global pooling is written as ``mean``/``amax`` reductions (so it exports as a global
reduction and propagates NaN like ``torch.amax``), and ``lp``/``lse`` pools are not offered.
"""

from cbam_triton.reference import CBAM, ChannelGate, SpatialGate, validate_config
from reference.tail import ResidualTail

__all__ = ["CBAM", "ChannelGate", "ResidualTail", "SpatialGate", "validate_config"]
