"""The guarded fast path of a module's forward: batch-1 latency without CUDA graphs.

At batch 1 the fused forward's GPU work is a few microseconds, so the host's work per call decides
the latency. :func:`forward` is the first thing a cbam-triton module's forward does:

* **First call** with a configuration: the module's full forward runs (under ``no_grad``) and the
  fused forward's launches are recorded (:func:`cbam_triton.launchers.forward.recording`) into an
  *entry* of the module's cache: :class:`~cbam_triton.launchers.bound.BoundLaunch` es that keep
  every argument except x and the output, including the plan's workspaces (partials, small maps),
  which later calls reuse, and, on a GPU, the compiled kernels, launched directly.
* **Later calls** check a guard and go straight to allocating the output and launching: x's shape,
  strides, dtype, device and 16-byte alignment, the current device and stream (workspaces are
  reused in stream order; under CUDA-graph capture the full path runs, with fresh workspaces), and
  the module's state — the identity of every parameter, buffer, submodule and plain attribute of
  its tree (of torch.nn's own layers: ``training``, and BatchNorm's ``eps``, ``momentum``,
  ``track_running_stats``; so ``train()``/``eval()``, ``set_schedule``, a replaced BatchNorm), each tensor's version
  counter and data pointer (in-place updates, ``load_state_dict``, ``.to()``, ``.half()``), and the
  ``CBAM_TRITON_*`` environment the planners read. Any change: the entry is rebuilt.
* **Eval mode with grad mode on** (parameters require grad, ``model.eval(); model(x)``): the same
  launches; the output's ``grad_fn`` recomputes the forward differentiably (the training path, with
  the reference's gradients) if a backward follows (:class:`_EvalForward`).

Nothing of a call is kept (x, the output); the cache lives on the module (:data:`SIZE` entries,
dropped with the module, not copied or pickled with it) and is safe to use from several threads
(a call that finds the entry's workspaces in use takes the full path). Not used — the full path
runs — while anything could intercept the call: ``torch.compile``/export tracing, ``torch.jit.trace``,
dispatch or function modes, functorch transforms, tensor subclasses; nor with autocast and autograd
recording together.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from operator import is_
from typing import Any

import torch
from torch import Tensor, nn

from cbam_triton.launchers.bound import BoundPlan, bind_plan
from cbam_triton.launchers.forward import PlanCache, recording

__all__ = ["ENABLED", "SIZE", "WORKSPACE_LIMIT", "clear", "forward", "info"]

#: set False to run every forward through the full path (benchmarks and tests compare both)
ENABLED = True
#: input configurations cached per module (first in, first out)
SIZE = 8
#: entries whose reused workspaces would exceed this many bytes are not cached (large inputs:
#: host time no longer matters there)
WORKSPACE_LIMIT = 4 << 20
#: environment variables the planners and the backend choice read (a new one belongs in :attr:`PlanCache.ENV`)
ENV = tuple(sorted({*PlanCache.ENV, "CBAM_TRITON_BACKEND", "CBAM_TRITON_L2_BYTES"}))

_ATTR = "_cbam_triton_fastpath"   # where a module keeps its cache (in its __dict__)
_ROOT_EXTRA = ("schedule", "l2_budget_bytes", "backend")  # class defaults a module may shadow later
_TRACKED = ("_parameters", "_buffers", "_modules")
_MISSING = object()
_PLAIN = (Tensor, nn.Parameter, getattr(nn, "Buffer", Tensor))


class _Local(threading.local):
    off = False  # in this thread: building an entry, or recomputing for a backward (the full path)


_TLS = _Local()
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._len_torch_function_stack
_transforms = torch._C._are_functorch_transforms_active
_tracing_state = torch._C._get_tracing_state  # (torch.jit.trace, the TorchScript ONNX exporter)
_is_exporting = torch.compiler.is_exporting
_ENVIRON: dict[Any, Any] | None = getattr(os.environ, "_data", None)  # os.environ's own dict (no copy)
_ENV_KEYS = tuple(os.environ.encodekey(k) for k in ENV) if _ENVIRON is not None else ENV  # type: ignore[attr-defined]


def _attributes(m: nn.Module) -> list[str]:
    """The plain attributes of a submodule the guard watches: of torch.nn's own layers those a
    forward of the fused path can depend on (``training``; BatchNorm's ``eps``, ``momentum``,
    ``track_running_stats``), of any other module all of them."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return ["training", "eps", "momentum", "track_running_stats"]
    if type(m).__module__.startswith("torch.nn."):
        return ["training"]
    return [k for k in m.__dict__ if k[0] != "_"]


def _environment() -> list[Any]:
    env = _ENVIRON if _ENVIRON is not None else os.environ
    return list(map(env.get, _ENV_KEYS))


def _fresh() -> None:
    return None


class _State:
    """A snapshot of a module's tree (the guard) and the entries valid while it holds."""

    def __init__(self, module: nn.Module) -> None:
        d = module.__dict__
        # the submodules (not the module itself: it holds this snapshot, and must not be held by it)
        self.modules = [m for m in module.modules() if m is not module]
        dicts: list[dict[str, Any]] = []
        keys: list[str] = []
        for m in (module, *self.modules):
            md = m.__dict__
            if m is not module:  # its own __dict__ is read per call (not held: no reference cycle)
                for k in _attributes(m):
                    dicts.append(md)
                    keys.append(k)
            for name in _TRACKED:
                sub = md[name]
                dicts += [sub] * len(sub)
                keys += list(sub)
        seen: dict[int, Tensor] = {}
        for m in (module, *self.modules):
            for t in (*m._parameters.values(), *m._buffers.values()):
                if t is not None:
                    seen.setdefault(id(t), t)
        self.tensors = list(seen.values())
        # inference tensors (a module built under torch.inference_mode) have no version counter:
        # such a module always takes the full path
        self.usable = not any(t.is_inference() for t in self.tensors)
        self.versions = [t._version for t in self.tensors] if self.usable else []
        self.modes = [m.training for m in (module, *self.modules)]
        self.entries: dict[tuple[Any, ...], BoundPlan | None] = {}
        self.lock = threading.Lock()
        self.check = _guard([(k, d[k]) for k in d if k[0] != "_" or k in _TRACKED],
                            [k for k in _ROOT_EXTRA if k not in d], list(zip(dicts, keys, map(dict.get, dicts, keys))),
                            self.tensors, self.versions if self.usable else None)

    def valid(self, module: nn.Module) -> bool:
        """Whether the module is as it was when this snapshot was taken (about 2 us)."""
        return self.check(module.__dict__)

    def add(self, key: tuple[Any, ...], entry: BoundPlan | None) -> None:
        with self.lock:
            self.entries[key] = entry
            while len(self.entries) > SIZE:
                del self.entries[next(iter(self.entries))]

    # a module's copies (deepcopy, pickle) start without a cache
    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None

    def __reduce__(self) -> tuple[Any, ...]:
        return _fresh, ()


_GUARD_MAKERS: dict[str, Any] = {}  # generated guard source -> its compiled maker (the text names no value)
_GUARD_LOCK = threading.Lock()


def _guard(root: list[tuple[str, Any]], absent: list[str], entries: list[tuple[dict[str, Any], str, Any]],
           tensors: list[Tensor], versions: list[int] | None) -> Any:
    """A snapshot's check, ``check(module.__dict__) -> bool``, as one generated function: the root
    module's ``(key, value)`` pairs and the class defaults it does not shadow (``absent``), the
    submodules' ``(dict, key, value)`` entries, each tensor's version (None: not checked, inference
    tensors) and data pointer now, and the environment now — a chain of ``d[key] is value``,
    ``t._version == v`` and ``t.data_ptr() == p`` over closure constants (about 0.6 of the time of
    the same checks as ``map`` calls: no call per dictionary entry). It holds what the snapshot
    holds; no text of the module goes into the code (keys and values are closure variables)."""
    names: list[str] = []
    values: list[Any] = []

    def const(v: Any) -> str:
        names.append(f"c{len(names)}")
        values.append(v)
        return names[-1]

    terms = [f"md[{const(k)}] is {const(v)}" for k, v in root] + [f"{const(k)} not in md" for k in absent]
    terms += [f"{const(d)}[{const(k)}] is {const(v)}" for d, k, v in entries]
    for i, t in enumerate(tensors):
        name = const(t)
        if versions is not None:
            terms.append(f"{name}._version == {const(versions[i])}")
        terms.append(f"{name}.data_ptr() == {const(t.data_ptr())}")
    terms.append(f"{const(_environment)}() == {const(_environment())}")
    source = (f"def make({', '.join(names)}):\n"
              f"    def check(md):\n"
              f"        try:\n"
              f"            return {' and '.join(terms)}\n"
              f"        except KeyError:\n"
              f"            return False\n"
              f"    return check\n")
    make = _GUARD_MAKERS.get(source)
    if make is None:  # (compiled once per module structure: a snapshot taken again costs microseconds)
        scope: dict[str, Any] = {}
        exec(compile(source, "<cbam_triton.fastpath guard>", "exec"), scope)  # noqa: S102 (generated from the snapshot)
        make = scope["make"]
        with _GUARD_LOCK:
            if len(_GUARD_MAKERS) >= 64:
                _GUARD_MAKERS.pop(next(iter(_GUARD_MAKERS)))
            _GUARD_MAKERS[source] = make
    return make(*values)


def _key(x: Tensor) -> tuple[Any, ...] | None:
    """What the recorded launches depend on besides the module (None: CUDA-graph capture)."""
    device = x.device
    if device.type != "cuda":
        return x.shape, x.stride(), x.dtype, device, x.data_ptr() % 16, None
    if torch._C._cuda_isCurrentStreamCapturing():
        return None
    current = torch._C._cuda_getDevice()  # where Triton launches
    stream = torch._C._cuda_getCurrentRawStream(current)
    return x.shape, x.stride(), x.dtype, device, x.data_ptr() % 16, (current, stream)


@contextlib.contextmanager
def _off() -> Iterator[None]:
    """The module's full path, in this thread (building an entry, recomputing for a backward)."""
    saved = _TLS.off
    _TLS.off = True
    try:
        yield
    finally:
        _TLS.off = saved


def forward(module: nn.Module, x: object) -> Tensor | None:
    """``module(x)`` through the module's cache, or None: run the full forward instead.

    Called first by the forward of :class:`cbam_triton.CBAM`, :class:`cbam_triton.ConvertedCBAM`
    and the lone gates; see the module docstring for what is cached and checked.
    """
    # something could intercept the call: the full path. (While dynamo traces, its callers do not
    # call it: the module's forward records an operator call instead, whose kernel runs on real
    # tensors once the graph runs — also under a backend that runs the graph while
    # torch.compiler.is_compiling() is still true, where nothing intercepts either. torch.export's
    # own tracing and export-for-deployment show as a dispatch mode, a tensor subclass, a tracing
    # state or the export flag.)
    if (not ENABLED or type(x) is not Tensor or _dispatch_modes() or _function_modes() or _transforms()
            or _tracing_state() is not None or _is_exporting()):
        return None
    if x.is_cuda and x.device.index != torch._C._cuda_getDevice():  # run on x's device (multi-GPU)
        with torch.cuda.device(x.device):
            return forward(module, x)
    grad_mode = torch.is_grad_enabled()
    if grad_mode and module.training:  # autograd in training: the training path
        return None
    state = module.__dict__.get(_ATTR)
    if state is None or not state.valid(module):
        if _TLS.off:
            return None
        state = _State(module)
        module.__dict__[_ATTR] = state
    if not state.usable:
        return None
    key = _key(x)
    if key is None:
        return None
    inputs = [t for t in state.tensors if t.requires_grad] if grad_mode else None
    grad = inputs is not None and (x.requires_grad or bool(inputs))
    entry = state.entries.get(key, _MISSING)
    out = None
    if entry is _MISSING:
        if _TLS.off:
            return None
        entry, out = _build(module, x, state, key)
    if grad:  # eval mode, autograd recording: the launches, and a backward that recomputes
        if entry is None or _TLS.off or torch._C._is_any_autocast_enabled():
            return None
        got = out
        return _EvalForward.apply(module, state, (lambda _: got) if got is not None else entry.run, x, *inputs)
    if out is not None:
        return out
    return entry.run(x) if entry is not None else None


def _build(module: nn.Module, x: Tensor, state: _State, key: tuple[Any, ...]) -> tuple[BoundPlan | None, Tensor]:
    """Run the module's full forward once (no grad), record its launches, cache them under ``key``."""
    from cbam_triton.launchers._common import record_launches

    with torch.no_grad(), _off(), recording() as calls, record_launches() as seen:
        out = type(module).forward(module, x)
    entry = None
    if len(calls) == 1:
        xr, o, launches, results = calls[0]
        storages = frozenset(t.untyped_storage().data_ptr() for t in state.tensors)
        plain = all(type(t) in _PLAIN for t in state.tensors)  # no subclass that could intercept
        if plain and xr is x and o is out and len(seen) == len(launches) and all(map(is_, seen, launches)):
            entry = bind_plan(x, out, launches, results, key[-1][1] if key[-1] is not None else None,
                              keep=storages, limit=WORKSPACE_LIMIT)
    state.add(key, entry)
    return entry, out


class _EvalForward(torch.autograd.Function):
    """Eval-mode forward with autograd recording: the fused launches forward; the backward
    recomputes the module's forward differentiably (its training path: Triton backward kernels,
    the reference's gradients) and differentiates that."""

    @staticmethod
    def forward(ctx: Any, module: nn.Module, state: _State, run: Any, x: Tensor, *tensors: Tensor) -> Tensor:
        # (the state is valid: its versions and training flags are the tensors' and modules' now)
        ctx.fastpath = module, state, tensors
        ctx.save_for_backward(x)  # autograd's own check that x is not modified in place
        out = run(x)
        if out is None:  # the entry's workspaces are in use in another thread
            with _off():
                out = type(module).forward(module, x)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        module, state, inputs = ctx.fastpath
        create_graph = torch.is_grad_enabled()  # (double backward: the training path's own rules apply)
        x = ctx.saved_tensors[0]
        tree = [module, *state.modules]
        now = [t for m in tree for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
        if {id(t) for t in now} != {id(t) for t in state.tensors}:
            raise RuntimeError(f"cbam_triton: a parameter or buffer of {type(module).__name__} was replaced between "
                               "its eval-mode forward and this backward; the backward recomputes the forward "
                               "and needs the tensors the forward used")
        changed = [i for i, (t, v) in enumerate(zip(state.tensors, state.versions)) if t._version != v]
        if changed:
            raise RuntimeError(f"cbam_triton: {len(changed)} parameter(s)/buffer(s) of {type(module).__name__} were "
                               "modified in place between its eval-mode forward and this backward; the backward "
                               "recomputes the forward and needs their values at forward time")
        need_x, need = ctx.needs_input_grad[3], ctx.needs_input_grad[4:]
        modes = [m.training for m in tree]
        try:
            for m, training in zip(tree, state.modes):  # the forward's modes (eval)
                m.training = training
            with torch.enable_grad(), _off():
                leaf = x.detach().requires_grad_(need_x)
                out = type(module).forward(module, leaf)
                wanted = ([leaf] if need_x else []) + [t for t, n in zip(inputs, need) if n]
                got = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True, create_graph=create_graph))
        finally:
            for m, training in zip(tree, modes):
                m.training = training
        dx = next(got) if need_x else None
        return (None, None, None, dx, *[next(got) if n else None for n in need])


def clear(module: nn.Module) -> None:
    """Drop a module's cache (the next call rebuilds it)."""
    module.__dict__.pop(_ATTR, None)


def info(module: nn.Module) -> dict[str, Any]:
    """What a module's cache holds: entries (and how many are cached as not replayable) and
    whether their launches go straight to Triton's launcher (GPU) — for tests and diagnostics."""
    state = module.__dict__.get(_ATTR)
    entries = list(state.entries.values()) if state is not None else []
    live = [e for e in entries if e is not None]
    return {"entries": len(entries), "full_path": len(entries) - len(live),
            "direct": bool(live) and all(launch.direct for e in live for launch in e.launches)}
