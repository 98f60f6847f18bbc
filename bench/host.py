"""Host time of one fused forward, kernels excluded: ``python -m bench.host``.

At batch 1 the forward is launch-bound without CUDA graphs: what the host spends per call (module
prologue, schedule, planning, argument binding) adds to the kernels' few microseconds. This runs
``cbam_triton.CBAM`` in eval mode under ``no_grad`` with every kernel launch replaced by a no-op,
so it measures exactly the Python/PyTorch work per forward (the kernel launch itself — Triton's
argument binding and the driver call — is not included): as shipped, without the plan cache
(``cbam_triton.launchers.forward.PlanCache``: planning from scratch every call), through the
dispatcher (``torch.ops.cbam_triton.fused_forward`` instead of the direct call that
``cbam_triton.ops.direct_call_ok`` allows), and without either. Runs on any machine (CPU tensors;
no kernel executes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable


def _best_us(fn: Callable[[], object], calls: int, repeats: int = 7) -> float:
    for _ in range(max(10, calls // 10)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    return best


#: the configurations measured: (plan cache on, direct op call allowed)
CONFIGS = {"default": (True, True), "no plan cache": (False, True), "through the dispatcher": (True, False),
           "neither": (False, False)}


def measure(shape: tuple[int, int, int, int], calls: int = 300) -> dict[str, float]:
    """Host microseconds per ``CBAM`` forward (best of 7 repeats of ``calls`` calls) in each of
    :data:`CONFIGS`: with and without the plan cache, with and without the direct op call."""
    import torch

    import cbam_triton
    from cbam_triton import ops
    from cbam_triton.launchers import _common
    from cbam_triton.launchers import forward as fwd

    c = shape[1]
    module = cbam_triton.CBAM(c, reduction_ratio=16 if c >= 32 else 1, backend="triton").eval()
    x = torch.randn(shape)
    saved = _common.Launch.__call__, fwd.PlanCache.SIZE, ops.direct_call_ok
    _common.Launch.__call__ = lambda self: None  # type: ignore[method-assign]
    got = {}
    try:
        with torch.no_grad():
            for name, (cache, direct) in CONFIGS.items():
                fwd.PlanCache.SIZE = saved[1] if cache else 0
                fwd.PLANS.clear()
                ops.direct_call_ok = saved[2] if direct else (lambda *t: False)  # type: ignore[assignment]
                got[name] = _best_us(lambda: module(x), calls)
    finally:
        _common.Launch.__call__, fwd.PlanCache.SIZE, ops.direct_call_ok = saved  # type: ignore[method-assign]
        fwd.PLANS.clear()
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.host", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=4, default=[1, 256, 56, 56], metavar=("N", "C", "H", "W"))
    p.add_argument("--calls", type=int, default=300, help="calls per repeat (best of 7 repeats)")
    args = p.parse_args(argv)
    if any(v < 1 for v in args.shape) or args.calls < 1:
        p.error("--shape needs N, C, H, W >= 1 and --calls >= 1")
    os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU needed: nothing is launched
    import platform

    import torch
    import triton

    got = measure(tuple(args.shape), args.calls)
    print(f"host time per fused forward, kernels excluded, shape {tuple(args.shape)} fp32 "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"triton {triton.__version__}):")
    for name, us in got.items():
        print(f"  {name:<24} {us:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
