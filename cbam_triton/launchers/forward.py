"""The fused inference forward: three launches per chunk of the batch (four where the MLP's last layer
gets its own).

Per chunk (see :mod:`cbam_triton.schedule`): stage 1 pools and computes Mc (MLP folded in), stage 2
pools ``x * Mc`` across channels (splits combined in-kernel), stage 3 computes Ms (conv + BN +
sigmoid folded in) and writes the output slice. Where the streaming programs would read the MLP's
last layer too often (:func:`~cbam_triton.launchers.channel_map.map_launch_pays`), a small launch
between stages 1 and 2 computes the chunk's Mc once, reading those weights once per chunk, and
stages 2 and 3 read Mc as a vector. No PyTorch op runs between the launches; a lone channel gate
uses the plain gate kernel as its second launch.

Host time matters at batch 1 (without CUDA graphs the forward is launch-bound), so a plan is built
once per configuration and then *rebound* (:class:`PlanCache`): a later call with the same shapes,
strides, dtypes, devices, schedule and settings reuses the cached launches with its own tensors —
x, the weights, a fresh output and fresh workspaces — instead of re-running the tile rules.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch

from cbam_triton import _torch_stages
from cbam_triton.fused_parts import TAIL_ACTIVATIONS, BlockTail, ChannelMLP, SpatialConv
from cbam_triton.launchers._common import (
    Launch,
    as_ncp,
    compute_dtype,
    counter_buffer,
    empty_output,
    launches_wrapped,
    nbytes,
    reset_counters,
)
from cbam_triton.launchers.channel_map import map_launch_pays, plan_channel_map
from cbam_triton.launchers.gate import plan_gate
from cbam_triton.launchers.gate_conv import plan_gate_conv
from cbam_triton.launchers.pool_mlp import plan_channel_pool_mlp
from cbam_triton.launchers.spatial_pool import plan_spatial_pool
from cbam_triton.schedule import Schedule


def plan_chunk(x: torch.Tensor, out: torch.Tensor, mlp: ChannelMLP | None, conv: SpatialConv | None,
               hints: bool, tail: BlockTail | None = None) -> list[Launch]:
    """The launches of one chunk (x and out: the chunk's slices; ``tail``: the block tail, its
    residual the chunk's slice), in order.

    Stage 1 pools and runs the MLP's first layer, spread over its channel blocks; stage 2 computes
    Mc per channel tile from the last layer as it streams (and stores it for stage 3), or, where
    that reads the weights too often, the channel-map launch computes the chunk's Mc first and
    stage 2 loads it; a lone channel gate computes it per tile in the gating kernel. The block tail
    (both branches needed, :func:`tail_unfused_reason`): every stage applies the affine to x as it
    loads it (stage 1 leaves the (scale, shift) vectors for the others), and stage 3 adds the
    residual and applies the activation before its store."""
    if mlp is None and conv is None:
        raise ValueError("the fused forward needs a channel MLP, a spatial conv, or both")
    if tail is not None and (reason := tail_unfused_reason(mlp, conv, tail)) is not None:
        raise ValueError(f"plan_chunk: {reason}")
    affine = tail.affine if tail is not None else None
    launches: list[Launch] = []
    channel = None
    if mlp is not None:
        launch, channel = plan_channel_pool_mlp(x, mlp, hints=hints, affine=affine)
        launches.append(launch)
    if conv is None:
        launch, _ = plan_gate(x, None, None, hints=hints, out=out, channel=channel)
        launches.append(launch)
    else:
        mc = torch.empty(x.shape[:2], dtype=compute_dtype(x), device=x.device) if channel is not None else None
        launch, pooled, _ = plan_spatial_pool(x, None, hints=hints, combine=True, channel=channel, mc_out=mc)
        if channel is not None and mc is not None and \
                map_launch_pays(x, channel, launches[0].weight_bytes + launch.weight_bytes):
            # the MLP's last layer off the stream: Mc of the whole chunk in one small launch
            launches.append(plan_channel_map(x, channel, mc))
            launch, pooled, _ = plan_spatial_pool(x, mc, hints=hints, combine=True, affine=channel.affine)
        launches.append(launch)
        launch, _ = plan_gate_conv(x, mc, pooled, conv, hints=hints, out=out,
                                   tail_affine=channel.affine if channel is not None else None,
                                   residual=tail.residual if tail is not None else None,
                                   act=tail.act if tail is not None else "identity")
        launches.append(launch)
    if hints:  # x re-read by the later stages: served by L2 (the schedule's premise)
        for launch in launches[1:]:
            if launch.name != "channel_map":
                launch.l2_bytes = nbytes(x)
    return launches


def plan_fused_forward(x: torch.Tensor, mlp: ChannelMLP | None, conv: SpatialConv | None,
                       schedule: Schedule, tail: BlockTail | None = None) -> tuple[list[Launch], torch.Tensor]:
    """Every launch of the fused forward of x under ``schedule`` (with ``tail``: a residual block's
    fused tail, see :func:`fused_tail`), and the output they fill."""
    x, _ = as_ncp(x)  # a view whose H and W don't merge is copied once, not once per chunk
    if tail is not None and tail.residual is not None:
        tail = tail._replace(residual=as_ncp(tail.residual)[0])
    out, _ = empty_output(x)
    launches: list[Launch] = []
    n = x.shape[0]
    for start, end in schedule.chunks(n):
        whole = (start, end) == (0, n)  # one chunk: no slicing (and no dispatch of view ops)
        part = tail
        if tail is not None and tail.residual is not None and not whole:
            part = tail._replace(residual=tail.residual[start:end])
        launches += plan_chunk(x if whole else x[start:end], out if whole else out[start:end], mlp, conv,
                               schedule.hints, part)
    return launches, out


def _params(mlp: ChannelMLP | None, conv: SpatialConv | None,
            tail: BlockTail | None = None) -> list[torch.Tensor | None]:
    """The weight tensors the kernels read, in a fixed order (None where absent); with a block tail
    also its norm's tensors and the residual."""
    fields: list[torch.Tensor | None] = list(mlp[:4]) if mlp is not None else [None] * 4
    fields += [conv.weight, conv.bias, conv.bn_mean, conv.bn_var, conv.bn_weight, conv.bn_bias] if conv is not None \
        else [None] * 6
    if tail is not None:
        a = tail.affine
        fields += [a.mean, a.var, a.weight, a.bias] if a is not None else [None] * 4
        fields.append(tail.residual)
    return fields


def _sig(t: torch.Tensor | None) -> tuple[Any, ...] | None:
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


class PlanCache:
    """Plans of the fused forward, rebound to new tensors (LRU, :data:`SIZE` entries).

    Every tensor argument of a cached launch is recorded as a view of a *root*: x (after
    :func:`as_ncp`), the output, one of the weights, the arrival-counter buffer, a copy the planner
    made of a weight (a non-contiguous conv weight made contiguous), or a workspace the plan
    allocated. Rebinding takes the same view (size, stride, offset relative to the root) of the
    call's own roots: x and the weights as given, a new output, the current counter buffer of the
    stream, a new copy of the weight, new workspaces of the same sizes. The key holds everything the plan depends on:
    shapes, strides, dtypes and devices of x and every weight, the dialect fields, the schedule,
    the stream and the environment overrides of the tile rules. Not used while a CUDA graph is
    being captured (the counters are then fresh zeros inside the graph).
    """

    SIZE = 64
    ENV = ("CBAM_TRITON_CONV_TAPS", "CBAM_TRITON_TARGET_PROGRAMS", "CBAM_TRITON_MC_LAUNCH", "CBAM_TRITON_L1_GROUP")

    def __init__(self) -> None:
        #: key -> (how to make each tensor argument, [(launch without tensors, its arguments with _Refs)])
        self._plans: OrderedDict[tuple[Any, ...], tuple[list[tuple[Any, ...]], list[tuple[Launch, tuple[Any, ...]]]]] \
            = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()  # forwards may run in several threads

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)

    @classmethod
    def key(cls, x: torch.Tensor, mlp: ChannelMLP | None, conv: SpatialConv | None,
            params: list[torch.Tensor | None], schedule: Schedule, tail: BlockTail | None = None) -> tuple[Any, ...]:
        """What the plan depends on (``params``: :func:`_params` of mlp, conv and tail)."""
        dialect = (mlp.pools, mlp.act) if mlp is not None else None
        spatial = (conv.input, float(conv.bn_eps)) if conv is not None else None
        if tail is not None:
            spatial = (spatial, tail.act, float(tail.affine.eps) if tail.affine is not None else None)
        stream = torch.cuda.current_stream(x.device).stream_id if x.device.type == "cuda" else 0
        return (_sig(x), tuple(_sig(t) for t in params), dialect, spatial, schedule.kind,
                schedule.chunk, stream, tuple(os.environ.get(k) for k in cls.ENV))

    def store(self, key: tuple[Any, ...], launches: list[Launch], x: torch.Tensor, out: torch.Tensor,
              params: list[torch.Tensor | None]) -> None:
        """Record ``launches`` (planned for x, out, params) under ``key``; skipped if a tensor
        argument can't be told apart from the roots unambiguously."""
        roots: dict[int, tuple[str, Any, torch.Tensor]] = {}

        def add(ptr: int, role: tuple[str, Any], t: torch.Tensor) -> bool:
            if ptr in roots and roots[ptr][:2] != role:
                return False
            roots.setdefault(ptr, (*role, t))
            return True

        ok = add(x.untyped_storage().data_ptr(), ("x", None), x)
        ok &= add(out.untyped_storage().data_ptr(), ("out", None), out)
        for i, t in enumerate(params):
            if t is not None:
                ok &= add(t.untyped_storage().data_ptr(), ("param", i), t)
        counters = counter_buffer(x.device, 0)
        ok &= add(counters.untyped_storage().data_ptr(), ("counter", None), counters)
        if not ok:
            return
        specs: dict[tuple[Any, ...], int] = {}   # how to make each distinct tensor argument
        scratch: dict[int, tuple[int, torch.dtype]] = {}
        skeletons = []
        for launch in launches:
            args: list[Any] = []
            for a in launch.args:
                if not isinstance(a, torch.Tensor):
                    args.append(a)
                    continue
                ptr = a.untyped_storage().data_ptr()
                view = (tuple(a.shape), a.stride())
                if ptr in roots:
                    kind, index, root = roots[ptr]
                    if a.dtype != root.dtype:
                        return
                    spec: tuple[Any, ...] = (kind, index, *view, a.storage_offset() - root.storage_offset())
                elif a.dtype == torch.int32:  # arrival counters of a buffer replaced while planning
                    return
                elif (src := _copy_of(a, params)) is not None:  # a weight copied while planning (e.g.
                    spec = ("copy", src, *view, 0, a.dtype)    # .contiguous() of a channels_last conv)
                else:  # a workspace of this plan: its whole storage is allocated anew per call
                    slot, dtype = scratch.setdefault(ptr, (len(scratch), a.dtype))
                    if dtype != a.dtype:
                        return
                    numel = a.untyped_storage().nbytes() // a.element_size()
                    whole = a.storage_offset() == 0 and a.numel() == numel and a.is_contiguous()
                    spec = ("scratch", slot, *view, a.storage_offset(), numel, a.dtype, whole)
                args.append(_Ref(specs.setdefault(spec, len(specs))))
            # the launch without this call's tensors (nothing of the call is kept alive)
            skeletons.append((Launch(launch.kernel, launch.grid, (), launch.meta, launch.num_warps, launch.name,
                                     launch.bytes_read, launch.bytes_written, launch.l2_bytes), tuple(args)))
        with self._lock:
            self._plans[key] = (list(specs), skeletons)
            while len(self._plans) > self.SIZE:
                self._plans.popitem(last=False)

    def rebind(self, key: tuple[Any, ...], x: torch.Tensor,
               params: list[torch.Tensor | None]) -> tuple[list[Launch], torch.Tensor] | None:
        """The cached launches bound to x, params, a new output and new workspaces (None: not cached)."""
        with self._lock:
            plan = self._plans.get(key)
            if plan is None:
                return None
            self._plans.move_to_end(key)
        specs, skeletons = plan
        out, _ = empty_output(x)
        roots = {"x": x, "out": out, "counter": counter_buffer(x.device, 0)}
        bases: dict[int, torch.Tensor] = {}
        tensors = []
        for kind, index, size, stride, offset, *alloc in specs:
            if kind == "copy":  # the same copy of this call's weight
                tensors.append(torch.empty_strided(size, stride, dtype=alloc[0], device=x.device)
                               .copy_(params[index].reshape(size)))
                continue
            if kind == "scratch":
                numel, dtype, whole = alloc
                base = bases.get(index)
                if base is None and whole:  # the view is the whole workspace: allocate it as such
                    tensors.append(torch.empty_strided(size, stride, dtype=dtype, device=x.device))
                    bases[index] = tensors[-1]
                    continue
                if base is None:
                    base = bases[index] = torch.empty(numel, dtype=dtype, device=x.device)
                tensors.append(base.as_strided(size, stride, offset))
                continue
            root = params[index] if kind == "param" else roots[kind]
            if offset == 0 and size == root.shape and stride == root.stride():
                tensors.append(root)
            else:
                tensors.append(root.as_strided(size, stride, root.storage_offset() + offset))
        launches = [Launch(s.kernel, s.grid, tuple(tensors[a.index] if type(a) is _Ref else a for a in args),
                           s.meta, s.num_warps, s.name, s.bytes_read, s.bytes_written, s.l2_bytes)
                    for s, args in skeletons]
        return launches, out


def _copy_of(t: torch.Tensor, params: list[torch.Tensor | None]) -> int | None:
    """Index of the weight whose values (cast to t's dtype, bit for bit) a tensor argument holds, if
    any: a copy the planner made of it, which a rebound plan must make again (not a workspace).
    Only weights a planner could have copied (non-contiguous, or of another dtype) are compared."""
    for i, p in enumerate(params):
        if p is not None and (not p.is_contiguous() or p.dtype != t.dtype) and p.numel() == t.numel() \
                and p.device == t.device and torch.equal(_bits(p.to(t.dtype)), _bits(t)):
            return i
    return None


def _bits(t: torch.Tensor) -> torch.Tensor:
    """t's values as raw bytes in logical order (NaN compares equal to itself)."""
    return t.reshape(-1).contiguous().view(torch.uint8)


class _Ref:
    """A tensor argument of a cached launch: the ``index``-th tensor made by :meth:`PlanCache.rebind`."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


#: the process-wide plan cache of :func:`fused_forward`
PLANS = PlanCache()


def fused_forward(x: torch.Tensor, mlp: ChannelMLP | None, conv: SpatialConv | None,
                  schedule: Schedule, tail: BlockTail | None = None) -> torch.Tensor:
    """``x * Mc * Ms`` with the small parts inside the kernels: 3 (or 4) launches per chunk
    (planned once per configuration, see :class:`PlanCache`); with ``tail`` the block tail
    ``act(CBAM(affine(x)) + residual)`` in the same launches (:func:`fused_tail`)."""
    # no plan cache while capturing a CUDA graph or tracing the launches as Triton kernel calls
    capturing = launches_wrapped() or (x.device.type == "cuda" and torch.cuda.is_current_stream_capturing())
    x, _ = as_ncp(x)  # the same copy decision for every call with these strides: before the lookup
    if tail is not None and tail.residual is not None:
        tail = tail._replace(residual=as_ncp(tail.residual)[0])
    params = _params(mlp, conv, tail)
    key = None if capturing else PLANS.key(x, mlp, conv, params, schedule, tail)
    got = PLANS.rebind(key, x, params) if key is not None else None
    if got is not None:
        PLANS.hits += 1
        launches, out = got
    else:
        launches, out = plan_fused_forward(x, mlp, conv, schedule, tail)
        if key is not None:
            PLANS.misses += 1
            PLANS.store(key, launches, x, out, params)
    try:
        results = [launch() for launch in launches]
    except BaseException:  # a launch stopped part-way: no arrival counter may stay non-zero
        reset_counters(x.device)
        raise
    sinks = getattr(_RECORDING, "sinks", None)
    if sinks:  # cbam_triton.fastpath / the op's host path build their replays from this call
        for sink in sinks:
            sink.append((x, out, launches, results))
    return out


def tail_unfused_reason(mlp: ChannelMLP | None, conv: SpatialConv | None, tail: BlockTail) -> str | None:
    """None when the three launches compute the block tail themselves; otherwise why the tail is
    composed (the fused CBAM between a PyTorch norm and a PyTorch epilogue): the kernels fuse the
    tail into a CBAM with both branches (the spatial gate's kernel adds the residual)."""
    if mlp is None or conv is None:
        return "the fused tail needs both CBAM branches (a lone gate's tail is composed)"
    if tail.act not in TAIL_ACTIVATIONS:
        return f"activation {tail.act!r} (the kernels apply {', '.join(TAIL_ACTIVATIONS)})"
    return None


def fused_tail(y: torch.Tensor, mlp: ChannelMLP | None, conv: SpatialConv | None, tail: BlockTail,
               schedule: Schedule) -> torch.Tensor:
    """A residual block's inference tail ``act(CBAM(affine(y)) + residual)``.

    Where :func:`tail_unfused_reason` allows, the three launches of the fused forward do it all: the
    affine is applied to every element of y as it is loaded, the residual added and the activation
    applied in the gate's store: y and the residual read once, the output written once. Otherwise
    composed: the affine in PyTorch (what ``nn.BatchNorm2d`` in eval computes), the fused CBAM
    forward, then ``out += residual; act(out)`` in place, as the blocks do."""
    if tail_unfused_reason(mlp, conv, tail) is None:
        return fused_forward(y, mlp, conv, schedule, tail)
    a = tail.affine
    z = _torch_stages.channel_affine(y, a.mean, a.var, a.weight, a.bias, a.eps) if a is not None else y
    out = fused_forward(z, mlp, conv, schedule)
    return _torch_stages.tail_epilogue(out, tail.residual, tail.act)


_RECORDING = threading.local()


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[torch.Tensor, torch.Tensor, list[Launch], list[Any]]]]:
    """Collect, in this thread, every :func:`fused_forward` call made inside: ``(x after as_ncp,
    out, launches, what each launch returned)`` — what :mod:`cbam_triton.fastpath` and
    :mod:`cbam_triton.launchers.replay` replay. Recordings nest (each sees every call inside it)."""
    sinks = _RECORDING.__dict__.setdefault("sinks", [])
    calls: list[tuple[torch.Tensor, torch.Tensor, list[Launch], list[Any]]] = []
    sinks.append(calls)
    try:
        yield calls
    finally:
        del sinks[next(i for i, sink in enumerate(sinks) if sink is calls)]


def is_recording() -> bool:
    """Whether a :func:`recording` is active in this thread."""
    return bool(getattr(_RECORDING, "sinks", None))

