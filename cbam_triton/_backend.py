"""Which implementation runs a call: the Triton kernels, or the PyTorch fallback."""

from __future__ import annotations

import importlib.util
import os

import torch

from cbam_triton.deploy import exporting, packaging

BACKENDS = ("auto", "triton", "torch")


_STATE: dict[str, bool] = {}


# (both are constant for the process: torch.compile calls them while tracing and keeps the result,
# instead of guarding on _STATE, which the first call fills: that guard would recompile once)
@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """True when the ``triton`` package is importable (checked once)."""
    if "available" not in _STATE:
        _STATE["available"] = importlib.util.find_spec("triton") is not None
    return _STATE["available"]


@torch.compiler.assume_constant_result
def interpreter_active() -> bool:
    """True when cbam_triton's kernels were built by Triton's CPU interpreter (checked once).

    ``TRITON_INTERPRET=1`` must be set before ``triton`` is first imported; what matters is what
    the kernels actually are, so the kernel objects are inspected rather than the variable.
    """
    if "interpreter" not in _STATE:
        active = False
        if triton_available():
            from cbam_triton.kernels import channel_pool_kernel

            active = type(channel_pool_kernel).__name__ == "InterpretedFunction"
        _STATE["interpreter"] = active
    return _STATE["interpreter"]


def resolve_backend(x: torch.Tensor, backend: str | None) -> str:
    """``"triton"`` or ``"torch"`` for input x.

    ``backend`` (or the ``CBAM_TRITON_BACKEND`` environment variable when None) is ``"auto"``
    (Triton on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``; PyTorch otherwise),
    ``"triton"`` (fail loudly if the kernels cannot run on x) or ``"torch"``. While a model is
    exported or traced for deployment (:func:`cbam_triton.deploy.exporting`): ``"torch"``, whatever
    ``backend`` says, so the recorded graph holds standard ops only.
    """
    return backend_for(x.device.type, backend)


def _requested(backend: str | None) -> str:
    """``backend``, or ``CBAM_TRITON_BACKEND`` when None (default ``"auto"``), checked."""
    if backend is None:
        backend = os.environ.get("CBAM_TRITON_BACKEND", "auto") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def block_backend(x: torch.Tensor, backend: str | None) -> str:
    """:func:`resolve_backend` for a whole block's forward (the modules, ``functional.cbam``, the fused
    tail): inside :func:`cbam_triton.package_kernels` the Triton backend unless ``backend`` (or
    ``CBAM_TRITON_BACKEND``) asks for PyTorch — the export then records the fused forward's kernels
    where the block fuses — and a ``ValueError`` for an input not on a CUDA device (a package holds
    CUDA kernels)."""
    if not packaging():
        return backend_for(x.device.type, backend)
    if _requested(backend) == "torch":
        return "torch"
    if x.device.type != "cuda":
        raise ValueError(f"cbam_triton.package_kernels() packages the CUDA kernels, but the input is on {x.device}: "
                         "export the model and its example input on a CUDA device, or export outside "
                         "package_kernels() (standard ops, any device)")
    return "triton"


def backend_for(device_type: str, backend: str | None) -> str:
    """:func:`resolve_backend` for a tensor on a device of type ``device_type``."""
    if exporting():
        return "torch"
    backend = _requested(backend)
    if backend == "torch":
        return "torch"
    runnable = triton_available() and (
        device_type == "cuda" or (device_type == "cpu" and interpreter_active())
    )
    if runnable:
        return "triton"
    if backend == "triton":
        why = ("triton is not installed" if not triton_available() else
               f"x is on {device_type}; the kernels run on CUDA tensors, or on CPU tensors only with "
               "TRITON_INTERPRET=1 set before triton is imported")
        raise ValueError(f"backend='triton' cannot run here: {why}")
    return "torch"
