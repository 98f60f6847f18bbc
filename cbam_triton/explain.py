"""What the fused forward will do for a module and an input: schedule, chunks, launches, tiles and
modelled DRAM traffic, without running a kernel.

    python -m cbam_triton.explain --shape 32 256 56 56 --dtype fp16 --layout channels_last \\
        --l2-mib 50 --sms 132          # an H100's L2 and SM count, on any machine
    python -m cbam_triton.explain --shape 32 2048 7 7 --sms 132 --arch 90 --json
                                       # + residency and access widths from an sm_90 compile
    python -m cbam_triton.explain --shape 32 256 56 56 --tail
                                       # a ResNet block's fused tail act(CBAM(bn(y)) + shortcut)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch

from cbam_triton.fused_parts import BlockTail, channel_affine
from cbam_triton.launchers.forward import tail_unfused_reason
from cbam_triton.schedule import l2_budget, plan_schedule


@contextlib.contextmanager
def _planning_for(sms: int | None, arch: int | None) -> Iterator[None]:
    """Plan for ``sms`` SMs of ``sm_<arch>`` with the registers a GPU's own planning assumes (the
    shipped table of compiled variants on sm_90, else the fallback table)."""
    if sms is None:
        yield
        return
    from cbam_triton.launchers import residency

    with residency.assume(sms, arch or 90):
        yield


def explain(module: torch.nn.Module, x: torch.Tensor, *, l2_cache_bytes: int | None = None,
            sms: int | None = None, arch: int | None = None, tail: BlockTail | None = None) -> dict[str, Any]:
    """The plan of ``module``'s fused inference forward on x (a real or a ``meta`` tensor).

    ``l2_cache_bytes`` / ``sms`` stand in for the device's L2 size and SM count (to plan for a GPU
    from anywhere). Returns a dict: ``path`` (``"fused"`` or ``"unfused"`` with ``reason``),
    ``schedule`` (kind, chunk, num_chunks, budget_bytes, reason), ``launches`` (name, grid, tile,
    flags, bytes) and the modelled bytes (``logical_bytes``: every launch's reads and writes;
    ``dram_model_bytes``: minus the re-reads the L2 schedule expects from L2), also in units of |x|.

    With ``sms`` the plan is for a GPU with that many SMs; each launch then also carries the
    residency model (``registers``, ``shared_bytes``, ``ctas_per_sm``, ``waves``,
    ``wave_efficiency``, ``x_bytes_in_flight_per_cta`` / ``_per_sm``, ``x_load_bits``,
    ``out_store_bits``, ``persistent``). With ``arch`` as well, every launch is compiled ahead of time
    for ``sm_<arch>`` (needs triton without ``TRITON_INTERPRET``) and the grids are planned from
    the compiled registers (:func:`cbam_triton.tools.streaming.plan_compiled`); without it the
    registers are the documented fallback table's (``x_load_bits``/``out_store_bits`` None).
    Top level: ``chunks``, ``mlp_weight_size_bytes`` (W1, W2 and biases) and ``weight_bytes_total``
    (modelled MLP weight traffic of the whole forward).

    ``tail`` (a :class:`~cbam_triton.fused_parts.BlockTail`; its residual may be a ``meta`` tensor): the
    plan of a residual block's fused tail ``act(CBAM(affine(x)) + residual)`` instead (``path``
    ``"fused tail"``, or ``"composed tail"`` with ``reason``), with ``tail`` (what is fused),
    ``streamed_floor_bytes`` (x read once, the residual read once, the output written once) and
    ``small_bytes`` (the modelled DRAM traffic beyond that floor: weights, maps, Mc, partials).
    """
    from cbam_triton.launchers.forward import plan_fused_forward

    x_bytes = x.numel() * x.element_size()
    parts = module.fused_parts()
    if isinstance(parts, str):
        return {"path": "unfused", "reason": parts, "x_bytes": x_bytes}
    if tail is not None and (why := tail_unfused_reason(parts[0], parts[1], tail)) is not None:
        return {"path": "composed tail", "reason": why, "x_bytes": x_bytes}
    n, c, h, w = x.shape
    device_type = "cuda" if l2_cache_bytes is not None else x.device.type
    budget = l2_budget(x.device, getattr(module, "l2_budget_bytes", None), l2_cache_bytes) \
        if (l2_cache_bytes is not None or x.device.type == "cuda" or getattr(module, "l2_budget_bytes", None)
            or os.environ.get("CBAM_TRITON_L2_BYTES")) else None
    plan = plan_schedule(n, c * h * w * x.element_size(), getattr(module, "schedule", "auto"), budget,
                         device_type=device_type)
    def plan_all() -> list[Any]:
        return plan_fused_forward(x, parts[0], parts[1], plan, tail)[0]

    if sms is not None and arch is not None:
        from cbam_triton.tools.streaming import plan_compiled

        launches, _ = plan_compiled(plan_all, sms, arch)
    else:
        with _planning_for(sms, arch):
            launches = plan_all()
    rows = [{"name": launch.name, "grid": list(launch.grid),
             "tile": [launch.meta["BLOCK_C"], launch.meta.get("BLOCK_P", launch.meta.get("BLOCK_N", 1))],
             "flags": sorted(k for k, v in launch.meta.items() if v is True),
             "bytes_read": launch.bytes_read, "bytes_written": launch.bytes_written, "l2_bytes": launch.l2_bytes,
             "longest": None if launch.longest is None else dataclasses.asdict(launch.longest)}
            for launch in launches]
    if sms is not None:
        from cbam_triton.tools.streaming import launch_rows

        with _planning_for(sms, arch):  # (without a compile: the registers the plan was sized for)
            facts = launch_rows(launches, sms, arch)
        for row, extra in zip(rows, facts):
            row.update(extra)
    mlp = parts[0]
    weights = sum(t.numel() * t.element_size() for t in (mlp[:4] if mlp is not None else ()) if t is not None)
    logical = sum(r["bytes_read"] + r["bytes_written"] for r in rows)
    dram = sum(launch.dram_bytes for launch in launches)
    floor = 2 * x_bytes + (x_bytes if tail is not None and tail.residual is not None else 0)
    extra: dict[str, Any] = {}
    if tail is not None:
        extra = {"tail": {"affine": tail.affine is not None, "residual": tail.residual is not None, "act": tail.act},
                 "streamed_floor_bytes": floor, "small_bytes": dram - floor,
                 "small_x": (dram - floor) / x_bytes if x_bytes else 0.0}
    return {
        **extra,
        "path": "fused" if tail is None else "fused tail", "x_bytes": x_bytes, "chunks": plan.num_chunks,
        "mlp_weight_size_bytes": weights,
        "weight_bytes_total": sum(launch.weight_bytes for launch in launches),
        "schedule": {"kind": plan.kind, "chunk": plan.chunk, "num_chunks": plan.num_chunks,
                     "budget_bytes": plan.budget_bytes, "reason": plan.reason},
        "launches": rows, "logical_bytes": logical, "dram_model_bytes": dram,
        "logical_x": logical / x_bytes if x_bytes else 0.0, "dram_model_x": dram / x_bytes if x_bytes else 0.0,
    }


def format_plan(plan: dict[str, Any]) -> str:
    """A short human-readable rendering of :func:`explain`'s result."""
    if plan["path"] not in ("fused", "fused tail"):
        return f"{'unfused forward' if plan['path'] == 'unfused' else plan['path']}: {plan['reason']}"
    s = plan["schedule"]
    lines = [f"schedule {s['kind']}: {s['num_chunks']} chunk(s) of {s['chunk']} sample(s) ({s['reason']})",
             f"modelled DRAM traffic {plan['dram_model_x']:.2f}*|x| (logical {plan['logical_x']:.2f}*|x|), "
             f"{len(plan['launches'])} launches"]
    if "tail" in plan:
        t = plan["tail"]
        lines.insert(0, "block tail act(CBAM(norm(y)) + residual) in the fused forward's launches: "
                        + ("norm folded into every stage's loads, " if t["affine"] else "no norm, ")
                        + ("residual added and " if t["residual"] else "no residual, ")
                        + f"{t['act']} in the gate's store")
        lines.append(f"  streamed floor {plan['streamed_floor_bytes'] / plan['x_bytes']:.2f}*|x| (y and residual read "
                     f"once, output written once) + small traffic {plan['small_x']:.2f}*|x| "
                     "(weights, maps, Mc, partials) [model]")
    per_chunk = max(1, len(plan["launches"]) // max(1, s["num_chunks"]))
    for r in plan["launches"][:per_chunk]:
        lines.append(f"  {r['name']:<17} grid {str(tuple(r['grid'])):<12} tile {r['tile'][0]}x{r['tile'][1]:<5} "
                     f"{','.join(f for f in r['flags'] if f in ('HINTS', 'COMBINE', 'SPLIT'))}")
        lp = r.get("longest")
        if lp:  # the critical path: what one program does one load after another
            lines.append(f"    longest program: streams {lp['x_loads']} x tiles ({lp['x_bytes'] / 1024:.1f} KiB); "
                         f"other loads {lp['other_loads']} ({lp['other_bytes'] / 1024:.1f} KiB) [model]")
    if len(plan["launches"]) > per_chunk:
        lines.append(f"  ... the same for each of the {s['num_chunks']} chunks")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cbam_triton.explain", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=4, required=True, metavar=("N", "C", "H", "W"))
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32", "fp64"])
    p.add_argument("--layout", default="nchw", choices=["nchw", "channels_last"])
    p.add_argument("--schedule", default="auto", choices=["auto", "l2", "stream"])
    p.add_argument("--reduction", type=int, default=16)
    p.add_argument("--l2-mib", type=float, default=50.0, help="L2 size in MiB (default 50: H100)")
    p.add_argument("--sms", type=int, default=132, help="SM count (default 132: H100 SXM)")
    p.add_argument("--arch", type=int, default=None,
                   help="compile every launch ahead of time for sm_ARCH (e.g. 90) and plan from its registers")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON document")
    p.add_argument("--tail", action="store_true",
                   help="plan a residual block's fused tail act(CBAM(norm(y)) + residual) (norm, residual, ReLU)")
    p.add_argument("--residual-layout", default=None, choices=["nchw", "channels_last"],
                   help="the residual's layout with --tail (default: y's)")
    p.add_argument("--tail-act", default="relu", choices=["relu", "silu", "identity"],
                   help="activation after the addition")
    args = p.parse_args(argv)
    if args.arch is not None and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("explain --arch: unset TRITON_INTERPRET (ahead-of-time compilation needs the real compiler)",
              file=sys.stderr)
        return 2
    plan = explain_module(tuple(args.shape), args.dtype, args.layout, schedule=args.schedule,
                          reduction=args.reduction, l2_mib=args.l2_mib, sms=args.sms, arch=args.arch,
                          tail=args.tail, residual_layout=args.residual_layout, tail_act=args.tail_act)
    print(json.dumps(plan, indent=1) if args.json else format_plan(plan))
    return 0


def explain_module(shape: tuple[int, ...], dtype: str = "fp16", layout: str = "nchw", *, schedule: str = "auto",
                   reduction: int = 16, l2_mib: float = 50.0, sms: int | None = 132,
                   arch: int | None = None, tail: bool = False, residual_layout: str | None = None,
                   tail_act: str = "relu") -> dict[str, Any]:
    """:func:`explain` for a ``CBAM(C, reduction)`` on a meta tensor of ``shape`` (what the command
    line prints); ``tail``: as a residual block's fused tail with a ``BatchNorm2d(C)`` in eval, a
    residual (``residual_layout``: ``"nchw"``, ``"channels_last"``, None: y's) and ``tail_act``."""
    from cbam_triton.modules import CBAM

    dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}[dtype]
    x = torch.empty(shape, dtype=dt, device="meta")
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    module = CBAM(shape[1], reduction, schedule=schedule).eval().to(device="meta", dtype=dt)
    block_tail = None
    if tail:
        norm = torch.nn.BatchNorm2d(shape[1]).eval().to(device="meta", dtype=dt)
        residual = torch.empty(shape, dtype=dt, device="meta")
        if (residual_layout or layout) == "channels_last":
            residual = residual.to(memory_format=torch.channels_last)
        block_tail = BlockTail(channel_affine(norm), residual, tail_act)
    return explain(module, x, l2_cache_bytes=int(l2_mib * (1 << 20)), sms=sms, arch=arch, tail=block_tail)


if __name__ == "__main__":
    sys.exit(main())
