"""Launches bound once and replayed per call: the launch half of :mod:`cbam_triton.fastpath`.

A :class:`BoundLaunch` is a recorded :class:`~cbam_triton.launchers._common.Launch` whose arguments
are fixed except for per-call *holes*: x, the output and, where the caller passes them per call
(the custom op's host path, :mod:`cbam_triton.launchers.replay`), the weights — or views of them at
fixed offsets. It is generic over the launch list: whatever kernels, workspaces, arguments and
meta-parameters the planners produce, every tensor argument that is not a hole is kept as recorded.
A :class:`BoundPlan` is the whole recorded forward of one configuration (its launches, the output's
layout, the stream, the token that lets one call at a time use its workspaces); :func:`bind_plan`
makes one from a recorded call (:func:`cbam_triton.launchers.forward.recording`). The module fast
path (:mod:`cbam_triton.fastpath`) and the op's host path both replay through it.

Direct launches: on a GPU, ``kernel[grid](...)`` binds and specialises every argument on every
call (~5-10 us per launch) before Triton's launcher runs. A bound launch keeps the compiled kernel
that the recorded launch returned and calls its launcher with a pre-bound argument list — exactly
the call ``JITFunction.run`` ends with in Triton 3.6-3.9 — so that binding is paid once. Elsewhere
(Triton's interpreter, another Triton version, a kernel with pre-run hooks or one that is not a
plain ``triton.jit`` function) it launches ``kernel[grid](...)`` as :class:`Launch` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from cbam_triton.launchers._common import INTERPRETER_LOCK, LAUNCH_HOOKS, Launch, reset_counters

#: hole roles: which per-call tensor fills an argument (``PARAM + i``: the i-th per-call weight)
X, OUT, PARAM = 0, 1, 2
#: set False to launch every bound launch through ``kernel[grid](...)`` (tests compare both paths)
DIRECT = True
#: how a :class:`BoundPlan` replays: launch by launch, or its flattened loop of direct or interpreted launches
_EACH, _DIRECT, _INTERPRETED = 0, 1, 2
#: Triton versions whose ``JITFunction.run`` ends with the launcher call a direct :class:`BoundLaunch` makes
SUPPORTED_TRITON = ((3, 6), (3, 7), (3, 8), (3, 9))


def _triton_supported() -> bool:
    import triton

    try:
        version = tuple(int(v) for v in triton.__version__.split(".")[:2])
    except ValueError:
        return False
    return version in SUPPORTED_TRITON


_RUNTIME: list[Any] = []  # triton.knobs.runtime, imported on the first direct launch


def _launch_hooks() -> tuple[Any, Any] | None:
    """Triton's launch enter/exit hooks (profilers) when any is installed, else None."""
    if not _RUNTIME:
        from triton import knobs

        _RUNTIME.append(knobs.runtime)
    enter, leave = _RUNTIME[0].launch_enter_hook, _RUNTIME[0].launch_exit_hook
    if all(h is None or getattr(h, "calls", None) == [] for h in (enter, leave)):
        return None
    return enter, leave


def directly_launchable(kernel: Any, compiled: Any) -> bool:
    """Whether ``compiled`` (what ``kernel[grid](...)`` returned) can be launched again directly."""
    from triton.runtime.jit import JITFunction

    return (DIRECT and type(kernel) is JITFunction and not kernel.pre_run_hooks and _triton_supported()
            and type(compiled).__name__ == "CompiledKernel"
            and all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata", "launch_metadata")))


class BoundLaunch:
    """One launch of a recorded plan, replayed with a call's x and output (see the module docstring).

    ``holes``: ``(position, role, view)`` with role :data:`X`, :data:`OUT` or ``PARAM + i`` (the
    i-th of ``params``, the per-call weights) and view None (the tensor itself) or ``(size, stride,
    element offset, byte offset)`` relative to it.
    """

    __slots__ = ("kernel", "grid", "args", "kwargs", "holes", "launch", "compiled", "run", "function",
                 "packed", "values", "grid3", "interpreted", "empty", "interp_kwargs")

    def __init__(self, launch: Launch, compiled: Any, x: torch.Tensor, out: torch.Tensor,
                 params: Sequence[torch.Tensor | None] = ()) -> None:
        # for the launch hooks: the launch without the recorded call's tensors (nothing of it is kept)
        self.launch = dataclasses.replace(launch, args=())
        self.kernel = launch.kernel
        self.interpreted = type(launch.kernel).__name__ == "InterpretedFunction"
        self.grid = launch.grid
        self.empty = min(launch.grid) == 0
        self.kwargs = {**launch.meta, "num_warps": launch.num_warps}
        # the interpreter: what kernel[grid](...) would pass to InterpretedFunction.run (same in 3.6-3.9)
        self.interp_kwargs = {**self.kwargs, "grid": self.grid, "warmup": False}
        args: list[Any] = []
        holes: list[tuple[int, int, Any]] = []
        for pos, a in enumerate(launch.args):
            role = _role(a, x, out, params) if isinstance(a, torch.Tensor) else None
            if role is None:
                args.append(a)
                continue
            holes.append((pos, role[0], role[1]))
            args.append(None)  # nothing of the recorded call is kept
        self.args = args
        self.holes = tuple(holes)
        self.compiled = None
        if compiled is not None and directly_launchable(self.kernel, compiled):
            params = self.kernel.signature.parameters
            bound = self.kernel.signature.bind(*launch.args, **{k: v for k, v in launch.meta.items() if k in params})
            bound.apply_defaults()
            self.values = list(bound.arguments.values())  # every parameter in order, constexprs included
            for pos, _, _ in self.holes:
                self.values[pos] = None
            self.compiled = compiled
            self.run = compiled.run
            self.function = compiled.function
            self.packed = compiled.packed_metadata
            self.grid3 = (*self.grid, 1, 1)[:3]

    @property
    def direct(self) -> bool:
        """Whether this launch goes straight to Triton's launcher (GPU) rather than ``kernel[grid]``."""
        return self.compiled is not None

    def __call__(self, x: torch.Tensor, out: torch.Tensor, stream: int | None,
                 params: Sequence[torch.Tensor | None] = ()) -> None:
        if LAUNCH_HOOKS:
            seen = dataclasses.replace(self.launch, args=tuple(self._fill(list(self.args), x, out, False, params)))
            for hook in LAUNCH_HOOKS:
                hook(seen)
        if self.compiled is not None:
            hooks = _launch_hooks()
            values = self._fill(self.values.copy(), x, out, hooks is None, params)  # (hooks see tensors)
            g0, g1, g2 = self.grid3
            if hooks is None:
                self.run(g0, g1, g2, stream, self.function, self.packed, None, None, None, *values)
            else:
                meta = self.compiled.launch_metadata(self.grid, stream, *values)
                self.run(g0, g1, g2, stream, self.function, self.packed, meta, hooks[0], hooks[1], *values)
            return
        if self.empty:
            return
        args = self.args.copy()
        for pos, role, view in self.holes:
            t = x if role == X else out if role == OUT else params[role - PARAM]
            args[pos] = t if view is None else t.as_strided(view[0], view[1], t.storage_offset() + view[2])  # type: ignore[union-attr]
        if self.interpreted:  # (the fast path runs only while no dispatch mode is active: nothing to hide)
            with INTERPRETER_LOCK:
                self.kernel.run(*args, **self.interp_kwargs)
        else:
            self.kernel[self.grid](*args, **self.kwargs)

    def _fill(self, args: list[Any], x: torch.Tensor, out: torch.Tensor, raw: bool,
              params: Sequence[torch.Tensor | None]) -> list[Any]:
        for pos, role, view in self.holes:
            t: Any = x if role == X else out if role == OUT else params[role - PARAM]
            if view is None:
                args[pos] = t
            elif raw:  # Triton's launcher takes a device address for a pointer argument
                args[pos] = t.data_ptr() + view[3]
            else:
                args[pos] = t.as_strided(view[0], view[1], t.storage_offset() + view[2])
        return args


class BoundPlan:
    """The recorded launches of one configuration, replayed per call into a new output.

    The tensors the launches keep (workspaces, arrival counters, and weights that are not holes)
    are reused by every replay: one call at a time (the token ``free``; a call that finds it taken
    gets None and takes its caller's full path), in stream order (a plan belongs to one stream).
    """

    __slots__ = ("launches", "size", "stride", "dtype", "device", "stream", "free", "steps", "mode", "like_x")

    def __init__(self, launches: list[BoundLaunch], out: torch.Tensor, stream: int | None,
                 x: torch.Tensor | None = None) -> None:
        self.launches = launches
        self.size, self.stride, self.dtype, self.device = out.shape, out.stride(), out.dtype, out.device
        # the output laid out as x (the common case; every replay's x has the recorded x's shape,
        # strides and dtype): torch.empty_like(x), a little cheaper than empty_strided
        self.like_x = x is not None and x.dtype == out.dtype and x.device == out.device and x.shape == out.shape
        if self.like_x:
            self.like_x = torch.empty_like(x).stride() == out.stride()
        self.stream = stream
        self.free = [True]  # the workspaces' token: one call at a time uses them
        # the replay's inner loop, flattened (no call per launch besides the launch itself): each
        # step is (launcher or interpreted kernel, its fixed arguments, its argument list with
        # holes, the holes as (position, role)); a plan with a hole that is a view replays launch
        # by launch
        self.steps: tuple[tuple[Any, ...], ...] = ()
        self.mode = _EACH
        live = [launch for launch in launches if launch.compiled is not None or not launch.empty]
        if all(view is None for launch in live for _, _, view in launch.holes):
            holes = [tuple((pos, role) for pos, role, _ in launch.holes) for launch in live]
            if live and all(launch.compiled is not None for launch in live):
                self.mode = _DIRECT
                self.steps = tuple(
                    (launch.run, (*launch.grid3, stream, launch.function, launch.packed, None, None, None),
                     launch.values, h) for launch, h in zip(live, holes))
            elif all(launch.interpreted for launch in live):
                self.mode = _INTERPRETED
                self.steps = tuple((launch.kernel, launch.interp_kwargs, launch.args, h)
                                   for launch, h in zip(live, holes))

    def run(self, x: torch.Tensor, params: Sequence[torch.Tensor | None] = ()) -> torch.Tensor | None:
        """A new output filled by the recorded launches with this call's x (and weights, where they
        are holes); None: another thread is using the workspaces."""
        try:
            self.free.pop()
        except IndexError:
            return None
        try:
            out = (torch.empty_like(x) if self.like_x else
                   torch.empty_strided(self.size, self.stride, dtype=self.dtype, device=self.device))
            mode = self.mode
            if LAUNCH_HOOKS or mode == _EACH or (mode == _DIRECT and _launch_hooks() is not None):
                for launch in self.launches:
                    launch(x, out, self.stream, params)
            elif mode == _DIRECT:  # (what BoundLaunch.__call__ does without hooks, inlined)
                sources = (x, out, *params)  # (indexed by role: X, OUT, PARAM + i)
                for run, head, values, holes in self.steps:
                    values = values.copy()
                    for pos, role in holes:
                        values[pos] = sources[role]
                    run(*head, *values)
            else:
                sources = (x, out, *params)
                with INTERPRETER_LOCK:  # (the fast path runs only while no dispatch mode is active)
                    for kernel, kwargs, args, holes in self.steps:
                        args = args.copy()
                        for pos, role in holes:
                            args[pos] = sources[role]
                        kernel.run(*args, **kwargs)
        except BaseException:  # a launch stopped part-way: no arrival counter may stay non-zero
            reset_counters(self.device)
            raise
        finally:
            self.free.append(True)  # later launches on this stream run after these (stream order)
        return out


def bind_plan(x: torch.Tensor, out: torch.Tensor, launches: Sequence[Launch], results: Sequence[Any],
              stream: int | None, params: Sequence[torch.Tensor | None] = (), keep: frozenset[int] = frozenset(),
              limit: int | float = float("inf")) -> BoundPlan | None:
    """A :class:`BoundPlan` of a recorded call (``launches`` planned for x and out, ``results``:
    what each returned), with x, the output and ``params`` as holes; None when it cannot be
    replayed safely: two of x, the output and ``params`` share a storage (a hole would be
    ambiguous), or the tensors it would keep besides those in ``keep`` (storage addresses: the
    module's own weights) — workspaces, counters, copies — exceed ``limit`` bytes or include one
    as large as x (see :func:`workspace_bytes`)."""
    storages = [t.untyped_storage().data_ptr() for t in (x, out, *params) if t is not None]
    if len(set(storages)) != len(storages) or keep.intersection(storages[:2]):
        return None
    bound = [BoundLaunch(launch, result, x, out, params) for launch, result in zip(launches, results)]
    if workspace_bytes(bound, keep, x) > limit:
        return None
    return BoundPlan(bound, out, stream, x)


def workspace_bytes(launches: Sequence[BoundLaunch], keep: frozenset[int] | set[int], x: torch.Tensor) -> float:
    """Bytes of the tensors a replay reuses besides holes and those in ``keep`` (storage
    addresses): workspaces, counters, copies of weights; infinite when one is as large as x (x >=
    4096 elements): the launches read x only through x and views of it (the planners never copy x:
    tests/test_allocations.py), and a replay must not reuse what could be a copy of the recorded
    call's x."""
    sizes: dict[int, int] = {}
    for launch in launches:
        for a in launch.args:
            if isinstance(a, torch.Tensor):
                storage = a.untyped_storage()
                if storage.data_ptr() not in keep:
                    sizes[storage.data_ptr()] = storage.nbytes()
                    if a.numel() >= x.numel() >= 4096:
                        return float("inf")
    return sum(sizes.values())


def _role(a: torch.Tensor, x: torch.Tensor, out: torch.Tensor,
          params: Sequence[torch.Tensor | None] = ()) -> tuple[int, Any] | None:
    """(role, view) when ``a`` is x, the output, one of ``params`` or a view of one, else None
    (the caller makes sure that no two of them share a storage)."""
    bases = ((X, x), (OUT, out), *((PARAM + i, p) for i, p in enumerate(params) if p is not None))
    for role, base in bases:
        if a is base:
            return role, None
        if a.untyped_storage().data_ptr() == base.untyped_storage().data_ptr() and a.dtype == base.dtype:
            offset = a.storage_offset() - base.storage_offset()
            if offset == 0 and a.shape == base.shape and a.stride() == base.stride():
                return role, None
            return role, (tuple(a.shape), a.stride(), offset, offset * a.element_size())
    return None

