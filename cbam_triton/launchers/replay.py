"""The custom op's host path: ``torch.ops.cbam_triton.fused_forward`` at the fast path's cost.

Inside a ``torch.compile``-d graph (inductor calls the op through the dispatcher) and in any direct
``torch.ops.cbam_triton.fused_forward`` call, the module's guarded fast path (:mod:`cbam_triton.fastpath`)
is out of reach. This is the op's own: the first call with a configuration runs the full forward
(plan, or :class:`~cbam_triton.launchers.forward.PlanCache` rebinding) under
:func:`~cbam_triton.launchers.forward.recording` and binds its launches
(:func:`~cbam_triton.launchers.bound.bind_plan`) with x, the output **and the weights** as
per-call holes — the weights are op arguments, so each call's own are launched, and entries are
shared by every block of the same configuration. A later call whose *key* matches — x's shape,
strides, dtype, device and 16-byte alignment, the same of every weight (None where absent), the
scalar arguments, the current device and stream and the ``CBAM_TRITON_*`` environment the planners
read — allocates the output and replays the launches: no planning, no allocation besides the
output (the workspaces and arrival counters of an entry are reused in stream order, one call at a
time), no Python work that grows with the plan beyond filling the holes. A replay is bitwise what
the full path computes: the same kernels, grids and arguments.

The full path runs instead while anything could look inside the call (dispatch or function modes,
functorch transforms, tracing), while a fast-path entry is being recorded, during CUDA-graph
capture (fresh workspaces and counters belong to the graph), for x on a device other than the
current one, and for configurations that cannot be replayed (x copied by the planner, tensors
sharing storage, workspaces over :data:`WORKSPACE_LIMIT`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from cbam_triton.launchers.bound import BoundPlan, bind_plan
from cbam_triton.launchers.forward import PlanCache, is_recording, recording
from cbam_triton.schedule import L2_ENV

__all__ = ["ENABLED", "ENV", "SIZE", "WORKSPACE_LIMIT", "clear", "fused_forward", "info"]

#: set False to run every op call through the full path (tests and benchmarks compare both)
ENABLED = True
#: configurations cached (process-wide, first in first out)
SIZE = 32
#: configurations whose reused workspaces would exceed this many bytes are not cached
WORKSPACE_LIMIT = 4 << 20
#: environment variables the planners read
ENV = (*PlanCache.ENV, L2_ENV)

_MISSING = object()
_ENTRIES: dict[tuple[Any, ...], BoundPlan | None] = {}
_LOCK = threading.Lock()
_STATS = {"recorded": 0}
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._len_torch_function_stack
_transforms = torch._C._are_functorch_transforms_active
_ENVIRON: dict[Any, Any] | None = getattr(os.environ, "_data", None)  # os.environ's own dict (no copy)
_ENV_KEYS = tuple(os.environ.encodekey(k) for k in ENV) if _ENVIRON is not None else ENV  # type: ignore[attr-defined]


def _environment() -> map:
    return map((_ENVIRON if _ENVIRON is not None else os.environ).get, _ENV_KEYS)


def _sig(t: torch.Tensor | None) -> tuple[Any, ...] | None:
    # (a weight's device is not part of it: the planners read only x's, and the full path launches
    # a weight on another device just as a replay does)
    return None if t is None else (t.shape, t.stride(), t.dtype, t.data_ptr() & 15)


def _key(x: torch.Tensor, params: Sequence[torch.Tensor | None], scalars: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """What the recorded launches depend on (None: take the full path now)."""
    device = x.device
    if device.type != "cuda":
        stream = None
    else:
        if torch._C._cuda_isCurrentStreamCapturing():
            return None
        current = torch._C._cuda_getDevice()  # where Triton launches
        if device.index != current:
            return None
        stream = torch._C._cuda_getCurrentRawStream(current)
    return (x.shape, x.stride(), x.dtype, device, x.data_ptr() & 15, *map(_sig, params), scalars, stream,
            *_environment())


def fused_forward(x: torch.Tensor, params: Sequence[torch.Tensor | None], scalars: tuple[Any, ...],
                  full: Callable[..., torch.Tensor]) -> torch.Tensor:
    """The op's output: replayed for a configuration seen before, else ``full(x, *params, *scalars)``
    (the op's implementation), recorded for the next call."""
    # (no tracing check: tracers call the op's fake implementation, with FakeTensors)
    if not ENABLED or _dispatch_modes() or _function_modes() or _transforms() or type(x) is not torch.Tensor:
        return full(x, *params, *scalars)
    key = _key(x, params, scalars)
    if key is None or is_recording():  # (a fast-path entry being recorded needs the full path's launches)
        return full(x, *params, *scalars)
    entry = _ENTRIES.get(key, _MISSING)
    if entry is not _MISSING:
        out = entry.run(x, params) if entry is not None else None
        return out if out is not None else full(x, *params, *scalars)
    with recording() as calls:
        out = full(x, *params, *scalars)
    _store(key, _bind(x, out, params, calls, key[-1 - len(ENV)]))
    return out


def _bind(x: torch.Tensor, out: torch.Tensor, params: Sequence[torch.Tensor | None],
          calls: list[tuple[Any, ...]], stream: int | None) -> BoundPlan | None:
    """The replayable plan of a recorded call, or None (see the module docstring)."""
    if len(calls) != 1:
        return None
    xr, o, launches, results = calls[0]
    if xr is not x or o is not out:  # x copied by the planner (H and W don't merge)
        return None
    # (the planners read every weight in place, through its strides: a replay that keeps none of
    # them sees each call's values; tests/test_compile_host_path.py checks an in-place update)
    return bind_plan(x, out, launches, results, stream, params, limit=WORKSPACE_LIMIT)


def _store(key: tuple[Any, ...], entry: BoundPlan | None) -> None:
    with _LOCK:
        _ENTRIES[key] = entry
        _STATS["recorded"] += 1
        while len(_ENTRIES) > SIZE:
            del _ENTRIES[next(iter(_ENTRIES))]


def clear() -> None:
    """Drop every cached configuration (the next call of each records anew)."""
    with _LOCK:
        _ENTRIES.clear()


def info() -> dict[str, int]:
    """What the cache holds: ``entries`` (and how many of them run the full path,
    ``full_path``), and ``recorded``: configurations recorded since the process started."""
    with _LOCK:
        entries = list(_ENTRIES.values())
        return {"entries": len(entries), "full_path": sum(e is None for e in entries), "recorded": _STATS["recorded"]}
