"""Host time of one CBAM forward, kernels excluded, in tiny-aten-op units: ``python -m bench.host``.

At batch 1 the forward is launch-bound without CUDA graphs: what the host spends per call adds to
the kernels' few microseconds. This times ``cbam_triton.CBAM(C, 16).eval()`` at batch 1 with
Triton's launch itself stubbed out — the interpreter's ``InterpretedFunction.run``, where
``kernel[grid](...)`` lands, replaced by a no-op — so it measures the project's own Python/PyTorch
work per forward, and, in the same run, one tiny aten op (``t.mul(2.0)`` on a 1-element tensor) as
the unit that makes the figure comparable across machines. Rows (see :data:`CONFIGS`): the module's
fast path (:mod:`cbam_triton.fastpath`) under ``no_grad`` and with grad mode on (eval mode,
parameters requiring grad), and the full path without it: with the plan cache and the direct op
call (what every call cost before the fast path), without the plan cache, through the dispatcher,
and with grad mode on (then the training path). Rounds are interleaved and the best of each is kept,
so a busy machine slows the unit and the forward alike. Runs on any machine (CPU tensors, Triton's
interpreter; no kernel executes).

The compiled rows (:data:`COMPILED`, :func:`measure_compiled`; ``--no-compile`` skips them) time the
same module through ``torch.compile(module, fullgraph=True)`` (inductor; the block is one call of
``cbam_triton::block_forward(x, block)`` running the module's fast path, :mod:`cbam_triton.compiled`),
the same with ``dynamic=True`` (the dynamic-shape graph, which dynamo also makes when a compiled
block is called with a second shape: its shape guards are Python lambdas, about 2 tiny ops), the
same module traced as it is (:func:`cbam_triton.compiled.detach`: the fused operator
``cbam_triton::fused_forward`` with the ten weights as graph inputs, served by its host path,
:mod:`cbam_triton.launchers.replay`), the *floor* (a module whose forward is one call of a no-op
operator taking ``(x, block)``: what torch.compile costs for such a block whatever the operator does),
a compiled trivial graph (``t * 2`` on a 1-element tensor: what any compiled call costs) and, in the
same rounds, the eager fast path again. Each shape is compiled afresh (``torch._dynamo.reset()``
between shapes) and timed in rounds of its own, so its plain row is the static graph a model with
one block shape gets.

Times are the calling thread's CPU time (``time.thread_time``): on a shared machine, time spent
descheduled is not counted, the unit and the forwards alike.

``--device cuda`` instead times real batch-1 fp16 forwards on a GPU (wall clock, kernels
included, no CUDA graphs) on the four ResNet-50 stage shapes: the fast path, the full path, the
compiled block and eager PyTorch (the reference module).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from typing import Any

#: the shapes of the host-time measurement
SHAPES = ((1, 256, 56, 56), (1, 2048, 7, 7), (1, 64, 128, 128))
#: the four ResNet-50 stage shapes (``--device cuda``)
GPU_SHAPES = ((1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 2048, 7, 7))
#: name -> (fast path on, plan cache on, direct op call allowed, grad mode on)
CONFIGS = {
    "fast path, no_grad": (True, True, True, False),
    "fast path, grad mode on": (True, True, True, True),
    "full path, no_grad": (False, True, True, False),
    "full path, no plan cache": (False, False, True, False),
    "full path, dispatcher": (False, True, False, False),
    "full path, grad mode on": (False, True, True, True),
}


def _calls_for(fn: Callable[[], object], calls: int, budget_s: float = 0.02) -> int:
    """``calls``, fewer when one call is slow (a repeat takes at most about ``budget_s``)."""
    t = time.perf_counter()
    fn()
    fn()
    one = (time.perf_counter() - t) / 2
    return max(3, min(calls, int(budget_s / max(one, 1e-9))))


def _time_us(fn: Callable[[], object], calls: int) -> float:
    t = time.thread_time()  # (this thread's CPU time: not the time other processes hold the cores)
    for _ in range(calls):
        fn()
    return (time.thread_time() - t) / calls * 1e6


def _best_us(fn: Callable[[], object], calls: int, repeats: int = 7) -> float:
    calls = _calls_for(fn, calls)
    for _ in range(max(3, calls // 10)):
        fn()
    return min(_time_us(fn, calls) for _ in range(repeats))


def measure_all(shapes: tuple[tuple[int, int, int, int], ...] = SHAPES, calls: int = 300,
                rounds: int = 7) -> tuple[float, dict[tuple[int, ...], dict[str, float]]]:
    """``(unit_us, {shape: {config: us}})``: host microseconds per forward of each of
    :data:`CONFIGS` (best of ``rounds`` interleaved rounds of ``calls`` calls) and of the unit,
    one ``t.mul(2.0)`` on a 1-element tensor. Needs Triton's interpreter (``TRITON_INTERPRET=1``
    before triton is imported); every setting it changes is restored."""
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    import cbam_triton
    from cbam_triton import fastpath, ops
    from cbam_triton._backend import interpreter_active
    from cbam_triton.launchers import forward as fwd

    if not interpreter_active():
        raise RuntimeError("bench.host times the host work through Triton's interpreter: set TRITON_INTERPRET=1 "
                           "before triton is imported (python -m bench.host does)")
    unit_t = torch.ones(1)
    jobs: list[tuple[tuple[int, ...], str, Callable[[], object]]] = []
    saved = InterpretedFunction.run, fastpath.ENABLED, fwd.PlanCache.SIZE, ops.direct_call_ok, torch.is_grad_enabled()
    try:
        InterpretedFunction.run = lambda self, *a, **k: None  # type: ignore[method-assign]
        for shape in shapes:
            c = shape[1]
            module = cbam_triton.CBAM(c, reduction_ratio=16 if c >= 32 else 1, backend="triton").eval()
            x = torch.randn(shape)
            jobs += [(shape, name, lambda module=module, x=x: module(x)) for name in CONFIGS]
        best: dict[tuple[tuple[int, ...], str], float] = {}
        unit = float("inf")
        for _ in range(rounds):
            unit = min(unit, _best_us(lambda: unit_t.mul(2.0), 20 * calls, repeats=3))
            for shape, name, call in jobs:
                fast, cache, direct, grad = CONFIGS[name]
                fastpath.ENABLED = fast
                fwd.PlanCache.SIZE = saved[2] if cache else 0
                ops.direct_call_ok = saved[3] if direct else (lambda *t: False)  # type: ignore[assignment]
                fwd.PLANS.clear()
                torch.set_grad_enabled(grad)
                us = _best_us(call, calls, repeats=3)
                best[shape, name] = min(best.get((shape, name), float("inf")), us)
                torch.set_grad_enabled(saved[4])
    finally:
        InterpretedFunction.run, fastpath.ENABLED, fwd.PlanCache.SIZE, ops.direct_call_ok = saved[:4]  # type: ignore[method-assign]
        torch.set_grad_enabled(saved[4])
        fwd.PLANS.clear()
    return unit, {tuple(shape): {name: best[tuple(shape), name] for name in CONFIGS} for shape in shapes}


#: the compiled rows of :func:`measure_compiled` (the trivial graph is the same for every shape)
COMPILED = ("eager fast path", "torch.compile(fullgraph=True)", "torch.compile(fullgraph=True, dynamic=True)",
            "compiled, weights as op inputs", "compiled floor: no-op op(x, block)", "compiled trivial graph (t * 2)")
_FLOOR: list[Any] = []  # the no-op operator of the floor row, registered on first use


class _Floor:
    """What torch.compile costs for a block whatever its operator does: a module holding the block
    whose forward is one call of a no-op operator (registered as ``cbam_triton::block_forward`` is)
    with the same arguments, ``(x, block)``."""

    @staticmethod
    def make(block: Any) -> Any:
        import torch

        from cbam_triton.compiled import BlockRef, block_ref

        if not _FLOOR:
            def noop(x, block):  # noqa: ANN001, ANN202
                return torch.empty_like(x)

            noop.__annotations__ = {"x": torch.Tensor, "block": BlockRef, "return": torch.Tensor}
            lib = torch.library.Library("cbam_triton_bench", "DEF")
            lib.define("noop" + torch.library.infer_schema(noop, mutates_args=()))  # (block_forward's schema)
            lib.impl("noop", noop, "CompositeExplicitAutograd")
            torch.library.register_fake("cbam_triton_bench::noop", lib=lib)(noop)
            _FLOOR.append(lib)

        class Floor(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.block = block

            def forward(self, x: Any) -> Any:
                return torch.ops.cbam_triton_bench.noop(x, block_ref(self.block))

        return Floor().eval()


def measure_compiled(shapes: tuple[tuple[int, int, int, int], ...] = SHAPES, calls: int = 300,
                     rounds: int = 7) -> tuple[float, dict[tuple[int, ...], dict[str, float]]]:
    """``(unit_us, {shape: {row: us}})`` for the rows of :data:`COMPILED` (``no_grad``, eval, launches
    stubbed as in :func:`measure_all`; best of ``rounds`` interleaved rounds, the garbage collector
    off while timing). Compiles each shape five times (seconds each on a CPU), each shape after
    ``torch._dynamo.reset()`` (and resets it at the end: the caller's compiled code is dropped too).
    Every other setting it changes is restored."""
    import torch
    from triton.runtime.interpreter import InterpretedFunction

    import cbam_triton
    from cbam_triton import compiled as block_op
    from cbam_triton._backend import interpreter_active

    if not interpreter_active():
        raise RuntimeError("bench.host times the host work through Triton's interpreter: set TRITON_INTERPRET=1 "
                           "before triton is imported (python -m bench.host does)")
    if not block_op.AVAILABLE:
        raise RuntimeError("this torch has no opaque objects (torch._library.opaque_object): no compiled rows")
    unit_t = torch.ones(1)
    saved = InterpretedFunction.run
    best: dict[tuple[tuple[int, ...], str], float] = {}
    unit = float("inf")
    try:
        InterpretedFunction.run = lambda self, *a, **k: None  # type: ignore[method-assign]
        with torch.no_grad():
            for shape in shapes:
                # each shape compiled afresh, as a model with one block shape is: dynamo's first
                # compile specialises x's shape (a static graph); the dynamic-shape graph a
                # recompile for a second shape gets (automatic dynamic) is the "dynamic=True" row
                torch._dynamo.reset()
                trivial = torch.compile(lambda t: t * 2, fullgraph=True)
                trivial(unit_t)
                c = shape[1]
                module = cbam_triton.CBAM(c, reduction_ratio=16 if c >= 32 else 1, backend="triton").eval()
                x = torch.randn(shape)
                compiled = torch.compile(module, fullgraph=True)
                compiled(x)
                dynamic = torch.compile(cbam_triton.CBAM.from_reference(module).eval(), fullgraph=True, dynamic=True)
                dynamic(x)
                traced = cbam_triton.CBAM.from_reference(module).eval()
                block_op.detach(traced)
                traced = torch.compile(traced, fullgraph=True)
                traced(x)
                floor = torch.compile(_Floor.make(module), fullgraph=True)
                floor(x)
                jobs = [(COMPILED[0], lambda m=module, x=x: m(x)),
                        (COMPILED[1], lambda m=compiled, x=x: m(x)),
                        (COMPILED[2], lambda m=dynamic, x=x: m(x)),
                        (COMPILED[3], lambda m=traced, x=x: m(x)),
                        (COMPILED[4], lambda m=floor, x=x: m(x)),
                        (COMPILED[5], lambda f=trivial: f(unit_t))]
                gc.collect()
                gc.disable()  # (as timeit does: the compilers leave a large heap, which collections would walk)
                try:
                    for _ in range(rounds):
                        unit = min(unit, _best_us(lambda: unit_t.mul(2.0), 20 * calls, repeats=3))
                        for name, call in jobs:
                            us = _best_us(call, calls, repeats=3)
                            best[shape, name] = min(best.get((shape, name), float("inf")), us)
                finally:
                    gc.enable()
    finally:
        InterpretedFunction.run = saved  # type: ignore[method-assign]
        torch._dynamo.reset()
    return unit, {tuple(shape): {name: best[tuple(shape), name] for name in COMPILED} for shape in shapes}


def measure(shape: tuple[int, int, int, int], calls: int = 300, rounds: int = 3) -> dict[str, float]:
    """Host microseconds per forward of each of :data:`CONFIGS` at one shape."""
    return measure_all((tuple(shape),), calls, rounds)[1][tuple(shape)]


def measure_gpu(shapes: tuple[tuple[int, int, int, int], ...] = GPU_SHAPES, calls: int = 200,
                rounds: int = 5) -> dict[tuple[int, ...], dict[str, float]]:
    """Wall-clock microseconds per batch-1 fp16 forward on the current GPU (kernels included, no
    CUDA graphs, ``no_grad``, eval): cbam_triton's fast path, its full path, the block under
    ``torch.compile(fullgraph=True)`` (the op's host path), and eager PyTorch."""
    import torch

    import cbam_triton
    import reference
    from cbam_triton import fastpath

    got: dict[tuple[int, ...], dict[str, float]] = {}
    for shape in shapes:
        ref = reference.CBAM(shape[1], 16).cuda().half().eval()
        ours = cbam_triton.CBAM.from_reference(ref)
        x = torch.randn(shape, device="cuda", dtype=torch.float16)
        compiled = torch.compile(ours, fullgraph=True)  # the op's host path (compiled on the first call)
        rows = {"fast path": (ours, True), "full path": (ours, False), "compiled": (compiled, True),
                "eager": (ref, True)}
        best = dict.fromkeys(rows, float("inf"))
        with torch.no_grad():
            for _ in range(rounds):
                for name, (module, fast) in rows.items():
                    fastpath.ENABLED = fast
                    try:
                        for _ in range(20):
                            module(x)
                        torch.cuda.synchronize()
                        t = time.perf_counter()
                        for _ in range(calls):
                            module(x)
                        torch.cuda.synchronize()
                        best[name] = min(best[name], (time.perf_counter() - t) / calls * 1e6)
                    finally:
                        fastpath.ENABLED = True
        got[tuple(shape)] = best
    return got


def enqueue_us(fn: Callable[[], object], calls: int = 3, rounds: int = 5) -> float:
    """Host microseconds per call of ``fn`` on a GPU: how long ``calls`` calls take to return (their
    launches enqueued, no synchronisation) starting from an idle GPU, best of ``rounds``. Few calls, so
    that the launch queue does not fill and make the host wait for the GPU. The benchmark's GPU rows
    record it beside their GPU time (``host_us_per_call``)."""
    import torch

    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    torch.cuda.synchronize()
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.host", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=4, action="append", metavar=("N", "C", "H", "W"),
                   help="a shape to time (repeatable; default: the three of the acceptance measurement, or the "
                        "four ResNet-50 stages with --device cuda)")
    p.add_argument("--calls", type=int, default=300, help="calls per repeat")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (the best of each is kept)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (cpu)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: host time with the kernels stubbed out (default); cuda: batch-1 fp16 wall clock")
    args = p.parse_args(argv)
    shapes = tuple(tuple(s) for s in args.shape) if args.shape else None
    if any(v < 1 for s in shapes or () for v in s) or args.calls < 1 or args.rounds < 1:
        p.error("--shape needs N, C, H, W >= 1; --calls and --rounds >= 1")
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU needed: nothing is launched
    import platform

    import torch
    import triton

    where = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"triton {triton.__version__}, {time.strftime('%Y-%m-%d')}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda needs a CUDA device")
        got = measure_gpu(shapes or GPU_SHAPES, args.calls, args.rounds)
        print(f"batch-1 fp16 forward, wall clock, no CUDA graphs ({torch.cuda.get_device_name()}; {where}):")
        for shape, row in got.items():
            cells = "  ".join(f"{name} {us:7.1f} us" for name, us in row.items())
            print(f"  {str(shape):<20} {cells}  eager / fast path {row['eager'] / row['fast path']:.2f}x")
        return 0
    unit, got = measure_all(shapes or SHAPES, args.calls, args.rounds)
    print(f"host time per forward, Triton's launch stubbed at InterpretedFunction.run, CBAM(C, 16).eval(), "
          f"fp32 ({where}):")
    print(f"  unit: one tiny aten op (t.mul(2.0) on a 1-element tensor) = {unit:.2f} us")
    for shape, row in got.items():
        print(f"  {shape}")
        for name, us in row.items():
            print(f"    {name:<26} {us:9.1f} us = {us / unit:7.1f} tiny ops")
    if not args.no_compile:
        unit, got = measure_compiled(shapes or SHAPES, args.calls, args.rounds)
        print(f"compiled (torch.compile(module, fullgraph=True), no_grad), same stub; unit {unit:.2f} us:")
        for shape, row in got.items():
            print(f"  {shape}")
            for name, us in row.items():
                print(f"    {name:<44} {us:9.1f} us = {us / unit:7.1f} tiny ops")
            trivial = row[COMPILED[-1]]
            for name in COMPILED[1:5]:
                print(f"    {name + ' - trivial graph':<60} {(row[name] - trivial) / unit:6.1f} tiny ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
