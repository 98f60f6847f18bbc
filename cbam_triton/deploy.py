"""Deployment: what a cbam-triton module records when a model is exported or traced.

A deployed graph must run without cbam-triton and without Triton (ONNX Runtime, TensorRT,
libtorch, ExecuTorch, AOTInductor). So while one of these records a model:

* ``torch.onnx.export`` (either exporter: ``dynamo=True`` runs ``torch.export``, ``dynamo=False``
  runs the TorchScript tracer),
* ``torch.jit.trace``,
* ``torch.export.export`` (and what is built on it: AOTInductor, Torch-TensorRT's dynamo path),

every cbam-triton module (and the functional API) takes the PyTorch backend: standard ops computing
exactly the module's function — the reference math of its dialect, BatchNorm folded as in eval
(batch statistics in training mode), global max pooling as ``amax`` over H and W (a ``ReduceMax``
in ONNX, valid for any input size, never a fixed-size pooling window), batch, H and W left symbolic.
:func:`exporting` is that test; :func:`cbam_triton._backend.resolve_backend` applies it.

``torch.export.export`` inside :func:`keep_custom_ops` records the custom operators instead
(``torch.ops.cbam_triton.channel_pool`` / ``spatial_pool`` / ``gate``): such a program runs only in
a Python process that imports cbam_triton, and ``run_decompositions(cbam_triton.decompositions())``
lowers it to standard ops later. Inside :func:`package_kernels` it records the fused forward as
``torch.library.triton_op`` operators instead, whose Triton kernels AOTInductor compiles into its
package (CUDA, static shapes). ONNX export and tracing always record standard ops.

``torch.fx.symbolic_trace`` records every cbam-triton module as a leaf ``call_module`` node
(:func:`fx_leaf_call`): the traced ``GraphModule`` calls the module itself, fused kernels included, and
graph passes see the block as one node.

``torch.jit.script`` cannot compile the Triton dispatch; :meth:`__prepare_scriptable__` of every
cbam-triton module raises :func:`script_error`, which names the module and says what to use.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["exporting", "fx_leaf_call", "keep_custom_ops", "package_kernels", "packaging", "quiet_shape_checks",
           "script_error"]

_keep = [0]  # nesting depth of keep_custom_ops()
_package = threading.local()  # .depth: nesting depth of package_kernels() in this thread
_tracing_state = torch._C._get_tracing_state  # dynamo folds this to None (not tracing) when compiling
_is_exporting = torch.compiler.is_exporting


def exporting() -> bool:
    """True while the current forward is being recorded for deployment (ONNX export with either
    exporter, ``torch.jit.trace``, or ``torch.export`` outside :func:`keep_custom_ops`): the module
    must then record standard PyTorch ops. About 0.1 µs when nothing is exporting."""
    if _tracing_state() is not None:  # torch.jit.trace, and torch.onnx.export(dynamo=False)
        return True
    if not _is_exporting():  # eager calls and torch.compile
        return False
    return not _keep[0] or torch.onnx.is_in_onnx_export()


def packaging() -> bool:
    """True while ``torch.export`` (not ONNX export) records inside :func:`package_kernels` in this
    thread: a whole block's fused inference forward then records its Triton kernels
    (:func:`cbam_triton._backend.block_backend`); everything else records standard ops, as
    :func:`exporting` says."""
    return bool(getattr(_package, "depth", 0)) and _is_exporting() and not torch.onnx.is_in_onnx_export()


def quiet_shape_checks() -> None:
    """Under ``torch.jit.trace`` (and the TorchScript ONNX exporter) the input's sizes are traced
    tensors, so cbam-triton's eager shape checks (channel count, empty input, N == 0) would warn that
    "the trace might not generalize". They are guards, not data flow (the recorded ops are
    shape-generic: dynamic batch, H and W work), so their TracerWarnings are silenced — only those
    raised in cbam_triton's own code, and only once a trace has reached it."""
    if _tracing_state() is not None:
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"cbam_triton\.")


@contextmanager
def keep_custom_ops() -> Iterator[None]:
    """Inside this context ``torch.export.export`` records cbam-triton's custom operators rather
    than standard ops (a program for a Python process with cbam_triton imported; lower it later
    with ``program.run_decompositions(cbam_triton.decompositions())``). ONNX export and
    ``torch.jit.trace`` are unaffected: they always record standard ops."""
    _keep[0] += 1
    try:
        yield
    finally:
        _keep[0] -= 1


@contextmanager
def package_kernels() -> Iterator[None]:
    """Inside this context (in this thread) ``torch.export.export`` records every block forward the
    kernels fuse (a converted CBAM or gate, ``functional.cbam``, the fused residual tail) as
    ``torch.ops.cbam_triton.fused_forward_kernels`` / ``fused_tail_kernels``: ``torch.library.triton_op``
    operators whose bodies plan the forward and launch its Triton kernels through
    ``torch.library.wrap_triton``. ``torch._inductor.aoti_compile_and_package`` then plans them (on
    its machine's GPU, cbam_triton imported there) and compiles the kernels into the package, which
    runs them without Python and without planning per call: launches, grids and workspaces are
    fixed in the package. CUDA tensors of static shape only: the plan depends on every extent, so
    export without ``dynamic_shapes`` (a symbolic extent, or a traced input not on a CUDA device,
    raises ``ValueError``), one package per input shape. Everything else (the stage functions, a
    configuration the kernels do not fuse, modules with ``backend="torch"``) records standard ops as
    without this context; ONNX export and ``torch.jit.trace`` are unaffected."""
    _package.depth = getattr(_package, "depth", 0) + 1
    try:
        yield
    finally:
        _package.depth -= 1


def script_error(module: nn.Module) -> RuntimeError:
    """The error ``torch.jit.script`` raises on a cbam-triton module (its forward dispatches to Triton
    kernels at run time, which TorchScript cannot compile)."""
    what = f"{type(module).__module__}.{type(module).__qualname__}({module.extra_repr()})"
    return RuntimeError(
        f"torch.jit.script cannot compile {what}: its forward dispatches to Triton kernels at run time. "
        "Use torch.jit.trace(model, (x,)), torch.onnx.export(model, (x,), path) or "
        "torch.export.export(model, (x,)) instead: while they record, cbam-triton modules record "
        "standard PyTorch ops (see cbam_triton.deploy); or script the model before cbam_triton.convert.")


def fx_leaf_call(module: nn.Module, x: object) -> object | None:
    """Under ``torch.fx.symbolic_trace`` (x is an ``fx.Proxy``): record ``module`` as one leaf
    ``call_module`` node and return its proxy; None otherwise. A symbolic tracer cannot run the
    module's data-dependent checks and kernel launches on a proxy, and the module computes its own
    forward exactly when the traced graph calls it."""
    if not isinstance(x, torch.fx.Proxy):
        return None
    tracer = x.tracer
    return tracer.create_proxy("call_module", tracer.path_of_module(module), (x,), {})
