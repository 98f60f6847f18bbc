"""The workload of the GPU acceptance run's sanitizer phase: ``python -m bench.gpu_check_driver [--tiny]``
(``--tiny`` with ``TRITON_INTERPRET=1`` on a CPU). Once each, every kind of launch sequence: the fused forward
under both schedules (``"l2"`` in one-sample chunks), fp16/fp32, NCHW/channels_last; a lone channel and spatial
gate; one training step (x and every parameter's gradient); a converted timm ``CbamModule``. Each is checked
against the reference (bench/runner.py's tolerances) and for Triton launches. Exit status 1 if a check fails.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

import cbam_triton
from bench.runner import check_output, make_reference
from bench.suite import Case

#: (N, C, H, W): on a GPU a multi-chunk batch and one sample big enough for split reductions; --tiny: interpreter
SHAPES = {False: ((4, 128, 28, 28), (1, 256, 56, 56)), True: ((2, 16, 5, 6),)}
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def _input(shape: tuple[int, ...], dname: str, layout: str, device: torch.device, seed: int = 1) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator(device="cpu").manual_seed(seed)).to(device, DTYPES[dname])
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def _compare(ours: Callable[[], Any], ref: Callable[[], Any], dname: str, train: bool = False) -> str:
    """``ref()``, then ``ours()`` counting its Triton launches; raises unless ours matches (bench/runner.py's
    tolerances; ``train``: gradients too, scaled) and kernels ran."""
    with torch.set_grad_enabled(train):
        expected = ref()
        with cbam_triton.record_launches() as launches:
            got = ours()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    ok, err = check_output(got, expected, dname, train)
    if not (ok and launches):
        raise AssertionError(f"differs from the reference (max abs err {err:.3g})" if not ok else
                             "no Triton launch: the PyTorch fallback ran instead of the kernels")
    return f"max err {err:.1e}, {len(launches)} launches"


def check_forward(device: torch.device, shape: tuple[int, ...], dname: str, layout: str, schedule: str | None = None,
                  gate: str | None = None, timm: bool = False) -> str:
    """The fused inference forward (``"l2"``: a one-sample L2 budget, one chunk per sample); with ``gate`` its
    ``channel_gate`` / ``spatial_gate`` alone; ``timm``: a timm ``CbamModule`` converted by ``cbam_triton.convert``."""
    x = _input(shape, dname, layout, device)
    if timm:
        try:
            from timm.layers.cbam import CbamModule
        except ImportError as exc:
            return f"SKIPPED: timm not importable ({exc})"
        torch.manual_seed(3)
        ref = CbamModule(shape[1], rd_ratio=1 / 4).to(device=device, dtype=DTYPES[dname]).eval()
        ours = cbam_triton.convert(ref, inplace=False, backend="triton").eval()
    else:
        ref = make_reference(Case("driver", 1, shape[1], 1, 1, 4, dname, "nchw"), device)
        ours = cbam_triton.CBAM.from_reference(ref, backend="triton", schedule=schedule or "auto", l2_budget_bytes=(
            x[0].numel() * x.element_size() if schedule == "l2" else None))
    ours, ref = (getattr(m, gate) if gate else m for m in (ours, ref))
    return _compare(lambda: ours(x), lambda: ref(x), dname)


def check_train(device: torch.device, shape: tuple[int, ...]) -> str:
    """One training step: output and the gradients of x and every parameter (fp32, channels_last)."""
    ref = make_reference(Case("driver", 1, shape[1], 1, 1, 4, "fp32", "nchw"), device).train()
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton").train()
    x, g = (_input(shape, "fp32", "channels_last", device, seed) for seed in (1, 2))

    def step(module: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        leaf = x.detach().requires_grad_(True)
        y = module(leaf)
        return (y, *torch.autograd.grad(y, [leaf, *(p for p in module.parameters() if p.requires_grad)], g))

    return _compare(lambda: step(ours), lambda: step(ref), "fp32", train=True)


def checks(device: torch.device, tiny: bool) -> list[tuple[str, Callable[[], str]]]:
    """(name, check) pairs; a check returns a short note (``SKIPPED: ...`` when it cannot run) or raises."""
    shapes, first, cl = SHAPES[tiny], SHAPES[tiny][0], "channels_last"
    out = [(f"fused {sched} {dname} {layout} {shape}", partial(check_forward, device, shape, dname, layout, sched))
           for shape in shapes for sched in ("l2", "stream") for dname in DTYPES for layout in ("nchw", cl)]
    out += [(f"lone {g} fp16 {cl} {first}", partial(check_forward, device, first, "fp16", cl, gate=g))
            for g in ("channel_gate", "spatial_gate")]
    return out + [(f"training step fp32 {cl} {first} (output, dx and every parameter's gradient)",
                   partial(check_train, device, first)),
                  (f"converted timm CbamModule fp16 {cl} {first}",
                   partial(check_forward, device, first, "fp16", cl, timm=True))]


def main(argv: list[str] | None = None) -> int:
    """Run every check (``--tiny``: tiny shapes); exit status 1 if one fails, 2 without a device to run on."""
    argv, cuda = sys.argv[1:] if argv is None else argv, torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        print("gpu_check_driver: no CUDA device; on a CPU run it with TRITON_INTERPRET=1 (and --tiny)", file=sys.stderr)
        return 2
    device, failed, start = torch.device("cuda" if cuda else "cpu"), 0, time.perf_counter()
    todo = checks(device, "--tiny" in argv or not cuda)
    for name, check in todo:
        t0 = time.perf_counter()
        try:
            note = check()
            status = "skipped" if note.startswith("SKIPPED") else "ok"
        except Exception as exc:  # every check runs; the failures are listed
            failed += 1
            status, note = "FAILED", f"{type(exc).__name__}: {exc}"[:400]
        print(f"driver: {status:<7} {name}: {note} ({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"driver: {len(todo)} checks, {failed} failed, on {device} in {time.perf_counter() - start:.1f} s",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
