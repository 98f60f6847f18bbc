"""cbam-triton: CBAM (Woo et al., ECCV 2018) as fused Triton kernels behind drop-in modules.

Public API:

* :class:`CBAM`, :class:`ChannelGate`, :class:`SpatialGate`: same constructors and state_dict
  keys as :mod:`reference`; ``CBAM.from_reference(module)`` / ``CBAM.to_reference()``.
* :mod:`cbam_triton.functional`: ``cbam(x, ...)`` with explicit weights, and the stages.
* :func:`record_launches`: a context manager listing the Triton launches of the code inside it.
"""

from cbam_triton import functional
from cbam_triton._backend import interpreter_active, resolve_backend, triton_available
from cbam_triton.modules import CBAM, ChannelGate, SpatialGate

__version__ = "0.1.0"


def record_launches():  # noqa: ANN201 - returns a context manager yielding list[Launch]
    """Context manager yielding the list of Triton launches made inside it (for tests/benchmarks)."""
    from cbam_triton.launchers._common import record_launches as _record

    return _record()


__all__ = [
    "CBAM", "ChannelGate", "SpatialGate", "functional", "interpreter_active", "record_launches",
    "resolve_backend", "triton_available", "__version__",
]
