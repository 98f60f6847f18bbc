"""PyTorch custom operators for the three big-tensor stages (``torch.ops.cbam_triton.*``).

Registered with ``torch.library.custom_op``: the Triton launchers are opaque to the compiler, each op
has a fake (meta) implementation giving the real output's shape, dtype and strides, and autograd is
registered (backward: recompute the stage in PyTorch and differentiate it — the reference's
gradients). ``torch.compile(fullgraph=True)`` therefore sees opaque nodes and no graph
break, and the ops work under the interpreter too (where ``triton_op``/``wrap_triton`` cannot be
traced). The inference op ``fused_forward`` (what a compiled eval-mode block calls) is registered with
the low-level API instead (:func:`define_inference_op`: no Python autograd wrapper per call) and
runs through its host path (:mod:`cbam_triton.launchers.replay`: a configuration seen before
replays its bound launches). Exports record standard ops instead (:mod:`cbam_triton.deploy`); a
program exported with the ops kept is lowered by :func:`decompositions`, which maps each op to its
PyTorch math. Inside :func:`cbam_triton.package_kernels` export records
:func:`fused_forward_kernels` / :func:`fused_tail_kernels` instead: ``torch.library.triton_op`` operators
whose Triton kernels AOTInductor compiles into its package (CUDA, static shapes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cbam_triton import _torch_stages
from cbam_triton._layout import compute_dtype, empty_output
from cbam_triton.fused_parts import TAIL_ACTIVATIONS

#: op overload -> the plain Python implementation (lets a TorchDispatchMode look inside the ops)
IMPLEMENTATIONS: dict[object, Callable[..., object]] = {}


def define_op(name: str) -> Callable[[Callable[..., object]], object]:
    """Decorator: register ``fn`` as the custom operator ``cbam_triton::name`` (no mutation) and
    record its plain implementation in :data:`IMPLEMENTATIONS`."""

    def wrap(fn: Callable[..., object]) -> object:
        op = torch.library.custom_op(f"cbam_triton::{name}", mutates_args=())(fn)
        IMPLEMENTATIONS[getattr(torch.ops.cbam_triton, name).default] = fn
        return op

    return wrap


_LIB = torch.library.Library("cbam_triton", "FRAGMENT")  # the inference ops' low-level registrations


def define_inference_op(name: str) -> Callable[[Callable[..., object]], object]:
    """Decorator: register ``fn`` as ``cbam_triton::name`` (schema from its annotations, no mutation)
    with a kernel for every device (``CompositeExplicitAutograd``) and no autograd formula, and
    record it in :data:`IMPLEMENTATIONS`; returns the op overload.

    For an op that only inference calls (autograd takes the training path): the dispatcher then
    calls ``fn`` without the Python autograd wrapper of :func:`torch.library.custom_op` (a
    redispatch through Python: several microseconds of host time per call, what a batch-1
    forward inside a compiled graph pays). Register its fake implementation with
    :func:`torch.library.register_fake`."""

    def wrap(fn: Callable[..., object]) -> object:
        _LIB.define(name + torch.library.infer_schema(fn, mutates_args=()))
        _LIB.impl(name, fn, "CompositeExplicitAutograd")
        op = getattr(torch.ops.cbam_triton, name).default
        IMPLEMENTATIONS[op] = fn
        return op

    return wrap


#: "is anything active that could intercept an op call" (None: this torch lacks one: always dispatch)
_MODE_PROBES = tuple(getattr(torch._C, name, None) for name in (
    "_len_torch_dispatch_stack", "_len_torch_function_stack", "_are_functorch_transforms_active"))
_MODE_PROBES = None if None in _MODE_PROBES else _MODE_PROBES


def direct_call_ok(*tensors: Tensor | None) -> bool:
    """Whether an op's plain implementation may run without the dispatcher: eager (not traced by
    dynamo or export), plain tensors (no subclass such as FakeTensor), and no dispatch mode,
    function mode or functorch transform active. The dispatcher would then only call the same
    implementation; skipping it saves tens of microseconds of host time per call (what a
    launch-bound batch-1 forward pays)."""
    if _MODE_PROBES is None or torch.compiler.is_compiling() or any(probe() for probe in _MODE_PROBES):
        return False
    return all(t is None or type(t) in (Tensor, torch.nn.Parameter) for t in tensors)


# ---------------------------------------------------------------------------------- channel_pool
def _channel_pool_impl(x: Tensor) -> tuple[Tensor, Tensor]:
    """(avg, max) over H*W as (N, C) fp32 (fp64) tensors, one read of x."""
    from cbam_triton.launchers import channel_pool as launch

    avg, mx = launch(x)
    return avg.contiguous(), mx.contiguous()


channel_pool = define_op("channel_pool")(_channel_pool_impl)


@channel_pool.register_fake
def _(x: Tensor) -> tuple[Tensor, Tensor]:
    n, c = x.shape[:2]
    return x.new_empty((n, c), dtype=compute_dtype(x)), x.new_empty((n, c), dtype=compute_dtype(x))


# ---------------------------------------------------------------------------------- spatial_pool
def _spatial_pool_impl(x: Tensor, mc: Tensor | None) -> Tensor:
    """(N, 2, H, W) ``[max_C, mean_C]`` of ``x * mc``, fp32 (fp64), one read of x."""
    from cbam_triton.launchers import spatial_pool as launch

    return launch(x, mc).contiguous()


spatial_pool = define_op("spatial_pool")(_spatial_pool_impl)


@spatial_pool.register_fake
def _(x: Tensor, mc: Tensor | None) -> Tensor:
    n, _, h, w = x.shape
    return x.new_empty((n, 2, h, w), dtype=compute_dtype(x))


# ------------------------------------------------------------------------------------------ gate
def _gate_impl(x: Tensor, mc: Tensor | None, ms: Tensor | None) -> Tensor:
    """``x * mc * ms`` in x's dtype and memory format, one read and one write."""
    from cbam_triton.launchers import gate as launch

    return launch(x, mc, ms)


gate = define_op("gate")(_gate_impl)


@gate.register_fake
def _(x: Tensor, mc: Tensor | None, ms: Tensor | None) -> Tensor:
    return empty_output(x)[0]


# --------------------------------------------------------------------------------- fused_forward
def fused_forward_impl(x: Tensor, fc1_weight: Tensor | None, fc1_bias: Tensor | None, fc2_weight: Tensor | None,
                        fc2_bias: Tensor | None, conv_weight: Tensor | None, conv_bias: Tensor | None,
                        bn_mean: Tensor | None, bn_var: Tensor | None, bn_weight: Tensor | None,
                        bn_bias: Tensor | None, bn_eps: float, pools: str, act: str, spatial_input: str,
                        schedule: str, l2_budget_bytes: int | None) -> Tensor:
    """The whole inference forward (small parts inside the kernels; see
    :mod:`cbam_triton.launchers.forward`). ``fc1_weight`` None: no channel branch; ``conv_weight``
    None: no spatial branch. ``schedule``/``l2_budget_bytes``: see :mod:`cbam_triton.schedule`."""
    from cbam_triton.fused_parts import ChannelMLP, SpatialConv
    from cbam_triton.launchers.forward import fused_forward
    from cbam_triton.schedule import l2_budget, plan_schedule

    mlp = ChannelMLP(fc1_weight, fc1_bias, fc2_weight, fc2_bias, pools, act) if fc1_weight is not None else None
    conv = (SpatialConv(conv_weight, conv_bias, spatial_input, bn_mean, bn_var, bn_weight, bn_bias, bn_eps)
            if conv_weight is not None else None)
    n, c, h, w = x.shape
    plan = plan_schedule(n, c * h * w * x.element_size(), schedule, l2_budget(x.device, l2_budget_bytes),
                         device_type=x.device.type)
    return fused_forward(x, mlp, conv, plan)


_grad_enabled = torch._C.is_grad_enabled
_HOST_PATH: list[Callable[..., Tensor]] = []  # cbam_triton.launchers.replay.fused_forward, imported on first use


def _host_path() -> Callable[..., Tensor]:
    """The ops' host path (:func:`cbam_triton.launchers.replay.fused_forward`), imported on first use."""
    if not _HOST_PATH:
        from cbam_triton.launchers.replay import fused_forward as host_path

        _HOST_PATH.append(host_path)
    return _HOST_PATH[0]


def _fused_forward_op(x: Tensor, fc1_weight: Tensor | None, fc1_bias: Tensor | None, fc2_weight: Tensor | None,
                      fc2_bias: Tensor | None, conv_weight: Tensor | None, conv_bias: Tensor | None,
                      bn_mean: Tensor | None, bn_var: Tensor | None, bn_weight: Tensor | None,
                      bn_bias: Tensor | None, bn_eps: float, pools: str, act: str, spatial_input: str,
                      schedule: str, l2_budget_bytes: int | None) -> Tensor:
    """The op's kernel: :func:`fused_forward_impl` through the op's host path (a configuration
    seen before replays its bound launches; see :mod:`cbam_triton.launchers.replay`). Inference
    only: refused while autograd would record it (it has no autograd formula)."""
    params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, bn_mean, bn_var, bn_weight, bn_bias)
    if _grad_enabled() and (x.requires_grad or any(t is not None and t.requires_grad for t in params)):
        raise RuntimeError("cbam_triton::fused_forward is an inference op (no autograd formula): call it under "
                           "torch.no_grad() or with inputs that don't require grad (the modules differentiate "
                           "the block through their training path)")
    return _host_path()(x, params, (bn_eps, pools, act, spatial_input, schedule, l2_budget_bytes), fused_forward_impl)


fused_forward = define_inference_op("fused_forward")(_fused_forward_op)


@torch.library.register_fake("cbam_triton::fused_forward", lib=_LIB)
def _(x: Tensor, *args: object) -> Tensor:
    return empty_output(x)[0]


# ------------------------------------------------------------------------------------ fused_tail
def fused_tail_impl(y: Tensor, fc1_weight: Tensor, fc1_bias: Tensor | None, fc2_weight: Tensor | None,
                     fc2_bias: Tensor | None, conv_weight: Tensor | None, conv_bias: Tensor | None,
                     bn_mean: Tensor | None, bn_var: Tensor | None, bn_weight: Tensor | None,
                     bn_bias: Tensor | None, bn_eps: float, norm_mean: Tensor | None, norm_var: Tensor | None,
                     norm_weight: Tensor | None, norm_bias: Tensor | None, norm_eps: float, residual: Tensor | None,
                     pools: str, act: str, spatial_input: str, tail_act: str, schedule: str,
                     l2_budget_bytes: int | None) -> Tensor:
    """A residual block's inference tail ``tail_act(CBAM(norm(y)) + residual)`` (see
    :func:`cbam_triton.launchers.forward.fused_tail`): ``norm_mean`` None: no norm (else the block's
    last BatchNorm in eval mode, ``norm_*`` its running statistics, affine parameters and eps);
    ``residual`` None: no addition. The CBAM arguments are :func:`fused_forward`'s.

    Through the ops' host path (:mod:`cbam_triton.launchers.replay`): a configuration seen before
    (y's, the residual's and every weight's shape, strides, dtype and alignment, the scalars)
    replays its bound launches with this call's y, residual and weights — an eager converted block
    and a compiled graph alike pay no planning per call. (A tail the kernels do not fuse, composed of
    PyTorch ops around the fused CBAM — no spatial branch — is not replayed: its launches are only part
    of it.)"""
    params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, bn_mean, bn_var, bn_weight, bn_bias,
              norm_mean, norm_var, norm_weight, norm_bias, residual)
    scalars = (bn_eps, norm_eps, pools, act, spatial_input, tail_act, schedule, l2_budget_bytes)
    if conv_weight is None or tail_act not in TAIL_ACTIVATIONS:  # composed (launchers.forward.tail_unfused_reason)
        return _tail_full(y, *params, *scalars)
    return _host_path()(y, params, scalars, _tail_full)


def _tail_full(y: Tensor, fc1_weight: Tensor, fc1_bias: Tensor | None, fc2_weight: Tensor | None,
               fc2_bias: Tensor | None, conv_weight: Tensor | None, conv_bias: Tensor | None, bn_mean: Tensor | None,
               bn_var: Tensor | None, bn_weight: Tensor | None, bn_bias: Tensor | None, norm_mean: Tensor | None,
               norm_var: Tensor | None, norm_weight: Tensor | None, norm_bias: Tensor | None,
               residual: Tensor | None, bn_eps: float, norm_eps: float, pools: str, act: str, spatial_input: str,
               tail_act: str, schedule: str, l2_budget_bytes: int | None) -> Tensor:
    """:func:`fused_tail_impl` planned (or rebound from the plan cache) and launched: the host path's
    full path, its arguments in the host path's order (y, the tensors, the scalars)."""
    from cbam_triton.fused_parts import BlockTail, ChannelAffine, ChannelMLP, SpatialConv
    from cbam_triton.launchers.forward import fused_tail
    from cbam_triton.schedule import l2_budget, plan_schedule

    mlp = ChannelMLP(fc1_weight, fc1_bias, fc2_weight, fc2_bias, pools, act)
    conv = (SpatialConv(conv_weight, conv_bias, spatial_input, bn_mean, bn_var, bn_weight, bn_bias, bn_eps)
            if conv_weight is not None else None)
    affine = ChannelAffine(norm_mean, norm_var, norm_weight, norm_bias, norm_eps) if norm_mean is not None else None
    n, c, h, w = y.shape
    plan = plan_schedule(n, c * h * w * y.element_size(), schedule, l2_budget(y.device, l2_budget_bytes),
                         device_type=y.device.type)
    return fused_tail(y, mlp, conv, BlockTail(affine, residual, tail_act), plan)


fused_tail = define_op("fused_tail")(fused_tail_impl)


@fused_tail.register_fake
def _(y: Tensor, *args: object) -> Tensor:
    return empty_output(y)[0]


# ------------------------------------------------------------------- packaged kernels (AOTInductor)
def _packable(x: Tensor) -> None:
    """Refuse what a package of the kernels cannot hold: a symbolic extent (the launch plan — tiles,
    grids, workspaces — depends on every one). (An input not on a CUDA device is refused before:
    :func:`cbam_triton._backend.block_backend`.)"""
    if not all(isinstance(d, int) for d in x.shape):
        raise ValueError(f"cbam_triton.package_kernels() needs static shapes (got {tuple(x.shape)}): the launch "
                         "plan depends on every extent. Export without dynamic_shapes (one package per input "
                         "shape), or export outside package_kernels() (standard ops, dynamic shapes).")


@torch.library.triton_op("cbam_triton::fused_forward_kernels", mutates_args=())
def fused_forward_kernels(x: Tensor, fc1_weight: Tensor | None, fc1_bias: Tensor | None, fc2_weight: Tensor | None,
                          fc2_bias: Tensor | None, conv_weight: Tensor | None, conv_bias: Tensor | None,
                          bn_mean: Tensor | None, bn_var: Tensor | None, bn_weight: Tensor | None,
                          bn_bias: Tensor | None, bn_eps: float, pools: str, act: str, spatial_input: str,
                          schedule: str, l2_budget_bytes: int | None) -> Tensor:
    """:func:`fused_forward_impl` as a ``torch.library.triton_op``: what ``torch.export`` records inside
    :func:`cbam_triton.package_kernels`. Traced, its launches are ``wrap_triton`` kernel calls and its
    workspaces and arrival counters allocations of the graph, so AOTInductor compiles the kernels into
    its package; called eagerly it plans and launches like :func:`fused_forward_impl` (no plan cache)."""
    from cbam_triton.launchers._common import wrapped_launches

    _packable(x)
    with wrapped_launches():
        return fused_forward_impl(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, bn_mean,
                                  bn_var, bn_weight, bn_bias, bn_eps, pools, act, spatial_input, schedule,
                                  l2_budget_bytes)


@torch.library.triton_op("cbam_triton::fused_tail_kernels", mutates_args=())
def fused_tail_kernels(y: Tensor, fc1_weight: Tensor, fc1_bias: Tensor | None, fc2_weight: Tensor | None,
                       fc2_bias: Tensor | None, conv_weight: Tensor | None, conv_bias: Tensor | None,
                       bn_mean: Tensor | None, bn_var: Tensor | None, bn_weight: Tensor | None,
                       bn_bias: Tensor | None, bn_eps: float, norm_mean: Tensor | None, norm_var: Tensor | None,
                       norm_weight: Tensor | None, norm_bias: Tensor | None, norm_eps: float,
                       residual: Tensor | None, pools: str, act: str, spatial_input: str, tail_act: str,
                       schedule: str, l2_budget_bytes: int | None) -> Tensor:
    """:func:`fused_tail_impl` as a ``torch.library.triton_op`` (see :func:`fused_forward_kernels`)."""
    from cbam_triton.launchers._common import wrapped_launches

    _packable(y)
    with wrapped_launches():
        return _tail_full(y, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, bn_mean, bn_var,
                          bn_weight, bn_bias, norm_mean, norm_var, norm_weight, norm_bias, residual, bn_eps,
                          norm_eps, pools, act, spatial_input, tail_act, schedule, l2_budget_bytes)


# -------------------------------------------------------------------------------------- autograd
def _recompute(fn: Callable[..., object], inputs: tuple[Tensor | None, ...], needs: tuple[bool, ...],
               grads: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(need) if t is not None else None for t, need in zip(inputs, needs)]
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
        wanted = [t for t, need in zip(leaves, needs) if t is not None and need]
        if not pairs or not wanted:
            return tuple(None for _ in inputs)
        got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
    return tuple(next(got) if t is not None and need else None for t, need in zip(inputs, needs))


def _setup(ctx, inputs, output) -> None:  # noqa: ANN001
    ctx.save_for_backward(*inputs)


def _needs(ctx) -> tuple[bool, ...]:  # noqa: ANN001
    return tuple(ctx.needs_input_grad)


def _channel_pool_bwd(ctx, g_avg, g_max):  # noqa: ANN001, ANN202
    return _recompute(_torch_stages.channel_pool, ctx.saved_tensors, _needs(ctx), (g_avg, g_max))


def _spatial_pool_bwd(ctx, g):  # noqa: ANN001, ANN202
    return _recompute(_torch_stages.spatial_pool, ctx.saved_tensors, _needs(ctx), (g,))


def _gate_bwd(ctx, g):  # noqa: ANN001, ANN202
    return _recompute(_torch_stages.gate, ctx.saved_tensors, _needs(ctx), (g,))


channel_pool.register_autograd(_channel_pool_bwd, setup_context=_setup)
spatial_pool.register_autograd(_spatial_pool_bwd, setup_context=_setup)
gate.register_autograd(_gate_bwd, setup_context=_setup)


def decompositions() -> dict[object, Callable[..., object]]:
    """``{op: PyTorch implementation}`` for ``ExportedProgram.run_decompositions``: lowers a program
    exported inside :func:`cbam_triton.keep_custom_ops` to standard ops computing the same function
    (plain ``torch.export.export`` records standard ops already; see :mod:`cbam_triton.deploy`)."""
    return {
        torch.ops.cbam_triton.channel_pool.default: _torch_stages.channel_pool,
        torch.ops.cbam_triton.spatial_pool.default: _torch_stages.spatial_pool,
        torch.ops.cbam_triton.gate.default: _torch_stages.gate,
    }

