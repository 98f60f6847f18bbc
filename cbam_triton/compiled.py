"""A module's forward inside ``torch.compile``: the whole block as one opaque operator call.

Traced by dynamo, a module's own forward becomes a graph with the ten weight tensors as inputs of
``cbam_triton::fused_forward``: every call then pays for them — dynamo's guards on each, the
compiled graph's per-input wrappers, the operator's dispatch of eleven tensors and its host path's
key over all of them — about three times the eager fast path's whole forward (``python -m
bench.host``). Instead, while dynamo traces an eval-mode block with grad mode off on the Triton
backend, :func:`forward` records one call of ``cbam_triton::block_forward(x, block)``: ``block`` is
the module's :class:`BlockRef`, an opaque object (``torch._library.opaque_object``, symbolic: a
graph input guarded on its type, so every block of the class shares the compiled code), and the
operator runs the module's own eager forward — its guarded fast path
(:mod:`cbam_triton.fastpath`), or the full forward — at run time. The output is therefore bitwise
the eager module's, the weights are read when the operator runs (an in-place update, a replaced
parameter, ``load_state_dict``: the fast path's guard sees each), and the graph holds one tensor
input.

The traced forward reads only the module's ``training`` flag, its backend and its
:class:`BlockRef` (a handful of dynamo guards). Anything else — training mode, grad mode on,
``torch.export`` (standard ops: :mod:`cbam_triton.deploy`), the PyTorch backend (inductor compiles
its math), x not a floating 4-D tensor, a torch without opaque objects, inductor's C++ wrapper
(``torch._inductor.config.cpp_wrapper`` set while dynamo traces: it cannot pass an opaque object; with
``torch.compile(options={"cpp_wrapper": True})``, which dynamo does not see, :func:`detach` the
blocks first) — traces the module's forward as before.

What the operator cannot see: a weight modified in place *inside the same compiled graph* before the
block (functionalization applies such writes at the graph's end; eager order
applies them first), and, under ``mode="reduce-overhead"``, a weight whose storage is replaced after
the CUDA graph was captured (the graph launches the addresses it captured): call
``torch._dynamo.reset()`` after such a change.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn

from cbam_triton import fastpath
from cbam_triton._backend import backend_for
from cbam_triton._layout import empty_output
from cbam_triton.ops import define_inference_op

__all__ = ["AVAILABLE", "BlockRef", "Compilable", "attach", "block_ref", "detach", "forward"]

_ATTR = "_cbam_triton_block"  # where a module keeps its BlockRef (its __dict__)

try:
    from torch._custom_class_base import CustomClassBase
    from torch._library.opaque_object import register_custom_class
except ImportError:  # a torch without symbolic opaque objects: the modules' forward is traced as it is
    CustomClassBase, register_custom_class = object, None  # type: ignore[assignment, misc]


class BlockRef(CustomClassBase):  # type: ignore[misc, valid-type]
    """A weak reference to a cbam-triton module, passed to ``cbam_triton::block_forward`` (an opaque
    object: dynamo makes it a graph input and guards on its type only). A module holds its own
    (:func:`attach`); a copy of the module (deep, shallow, unpickled, a replica) holds one to the copy."""

    __slots__ = ("module",)

    def __init__(self, module: nn.Module) -> None:
        self.module = weakref.ref(module)

    def __deepcopy__(self, memo: dict[int, Any]) -> BlockRef:
        module = self.module()
        return BlockRef(memo.get(id(module), module))  # (the copied module, when copied with it)

    def __reduce__(self) -> tuple[Any, ...]:
        return BlockRef, (self.module(),)


AVAILABLE = False
if register_custom_class is not None:
    try:
        register_custom_class(BlockRef, typ="symbolic")
        AVAILABLE = True
    except (TypeError, ValueError, RuntimeError, AssertionError):  # (an API that changed shape)
        AVAILABLE = False

_grad_enabled = torch._C.is_grad_enabled
_is_exporting = torch.compiler.is_exporting


def attach(module: nn.Module) -> None:
    """Give ``module`` its :class:`BlockRef` (its constructor calls this; so does a data-parallel
    replica's creation)."""
    if AVAILABLE:
        module.__dict__[_ATTR] = BlockRef(module)


def detach(module: nn.Module) -> None:
    """Drop ``module``'s :class:`BlockRef`: dynamo then traces the module's forward as it is (the
    fused operator with the weights as graph inputs; benchmarks compare both)."""
    module.__dict__.pop(_ATTR, None)


def block_ref(module: nn.Module) -> BlockRef | None:
    """``module``'s :class:`BlockRef` (None: it has none)."""
    return module.__dict__.get(_ATTR)


class Compilable:
    """Mixin of the modules that :func:`forward` serves: a shallow copy (``copy.copy``) and a
    data-parallel replica, which copy their source's ``__dict__``, get a :class:`BlockRef` of their own."""

    def __copy__(self) -> nn.Module:
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)  # (what copy.copy does for a module)
        attach(new)
        return new

    def _replicate_for_data_parallel(self) -> nn.Module:
        replica = super()._replicate_for_data_parallel()  # type: ignore[misc]
        attach(replica)
        return replica


def _block_forward_op(x: Tensor, block: BlockRef) -> Tensor:
    """The operator's kernel: ``module(x)`` through the module's own eager forward, without autograd."""
    module = block.module()
    if module is None:
        raise RuntimeError("cbam_triton::block_forward: the module of this BlockRef no longer exists")
    if _grad_enabled():
        with torch.no_grad():
            return _block_forward_op(x, block)
    out = fastpath.forward(module, x)  # a configuration seen before: the guard, then the launches
    if out is None:
        out = type(module).forward(module, x)  # (not compiling now: the module's eager full path)
        expected, _ = empty_output(x)
        if out.stride() != expected.stride():  # (the layout the fake implementation gave the compiler)
            out = expected.copy_(out)
    return out


block_forward: Any = None  #: the operator overload (None: a torch without opaque objects)
if AVAILABLE:
    block_forward = define_inference_op("block_forward")(_block_forward_op)

    @torch.library.register_fake("cbam_triton::block_forward")
    def _(x: Tensor, block: object) -> Tensor:
        return empty_output(x)[0]


@torch.compiler.assume_constant_result  # (evaluated while dynamo traces, its result kept: no guards)
def _traced_as_block(device_type: str, backend: str | None) -> bool:
    """Whether a block on a ``device_type`` tensor with ``backend`` is traced as one operator call:
    not exporting, the Triton backend, and inductor's Python wrapper (its C++ wrapper,
    ``cpp_wrapper``, cannot pass an opaque object to an operator). Its arguments are constants of
    the trace (the module's ``backend`` is guarded, x's device is part of its tensor guard); the
    ``CBAM_TRITON_BACKEND`` environment variable is read once, when tracing, as dynamo reads any
    environment variable."""
    from torch._inductor import config

    try:
        runs_triton = backend_for(device_type, backend) == "triton"
    except ValueError:  # (a backend that cannot run: the forward traced as it is raises it, as eager does;
        return False    # raised here, dynamo would wrap it in an error of its own)
    return not _is_exporting() and runs_triton and not config.cpp_wrapper


def forward(module: nn.Module, x: Tensor) -> Tensor | None:
    """Called first by a module's forward while dynamo traces it: the block as one call of
    ``cbam_triton::block_forward``, or None: trace the module's forward (see the module docstring)."""
    block = module.__dict__.get(_ATTR)
    if (block is None or module.training or _grad_enabled() or type(x) is not Tensor or x.dim() != 4
            or not x.is_floating_point() or not _traced_as_block(x.device.type, module.backend)):
        return None
    return block_forward(x, block)
