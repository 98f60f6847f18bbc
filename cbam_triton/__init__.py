"""cbam-triton: CBAM (Woo et al., ECCV 2018) as fused Triton kernels behind drop-in modules.

Public API:

* :class:`CBAM`, :class:`ChannelGate`, :class:`SpatialGate`: same constructors and state_dict
  keys as :mod:`reference`; ``CBAM.from_reference(module)`` / ``CBAM.to_reference()``.
* :func:`convert` (``fuse_block_tail=True``: ResNet blocks with CBAM become :class:`FusedTailBlock`,
  their eval tail ``relu(CBAM(bn(y)) + shortcut)`` one fused operator).
* :mod:`cbam_triton.functional`: ``cbam(x, ...)`` with explicit weights, and the stages.
* :func:`record_launches`: a context manager listing the Triton launches of the code inside it.
* Deployment (:mod:`cbam_triton.deploy`): ONNX export, ``torch.jit.trace`` and ``torch.export``
  record standard PyTorch ops; :func:`keep_custom_ops` keeps the custom ops in ``torch.export``;
  :func:`package_kernels` records the fused kernels for an AOTInductor package (CUDA, static shapes).
"""

from cbam_triton import functional
from cbam_triton._backend import interpreter_active, resolve_backend, triton_available
from cbam_triton.checkpoint import load_state_dict_from, to_reference_state_dict
from cbam_triton.converted import ConvertedCBAM, DialectSpec
from cbam_triton.converter import UnsupportedCBAM, convert, convert_with_report, from_module
from cbam_triton.deploy import keep_custom_ops, package_kernels
from cbam_triton.modules import CBAM, ChannelGate, SpatialGate
from cbam_triton.ops import decompositions
from cbam_triton.tail_block import FusedTailBlock

__version__ = "0.1.0"


def record_launches():  # noqa: ANN201 - returns a context manager yielding list[Launch]
    """Context manager yielding the list of Triton launches made inside it (for tests/benchmarks)."""
    from cbam_triton.launchers._common import record_launches as _record

    return _record()




def to_reference(module: "CBAM") -> "object":
    """The equivalent :class:`reference.CBAM` of a :class:`CBAM` (for equivalence checks)."""
    if not isinstance(module, CBAM):
        raise TypeError(f"to_reference expects a cbam_triton.CBAM, got {type(module).__name__}; other "
                        "dialects keep their own modules (ConvertedCBAM shares them)")
    return module.to_reference()


__all__ = [
    "CBAM", "ChannelGate", "ConvertedCBAM", "DialectSpec", "FusedTailBlock", "SpatialGate", "UnsupportedCBAM",
    "convert",
    "convert_with_report", "decompositions", "from_module", "functional", "keep_custom_ops", "load_state_dict_from",
    "package_kernels",
    "to_reference",
    "to_reference_state_dict", "interpreter_active", "record_launches",
    "resolve_backend", "triton_available", "__version__",
]
