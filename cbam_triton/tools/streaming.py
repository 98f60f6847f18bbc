"""Streaming facts of the fused forward from its compiled kernels: registers, shared memory, spills
and the x load / output store widths of every planned launch (ahead-of-time compile for
``sm_<arch>``, its PTX and SASS), and the residency model computed from them
(:mod:`cbam_triton.launchers.residency`). What ``python -m cbam_triton.explain --arch 90 --json``
prints; needs triton imported without ``TRITON_INTERPRET=1``.

    python -m cbam_triton.tools.streaming              # the ResNet-50 grid of the issue, as a table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from typing import Any

_WIDTH = re.compile(r"\b(?:ld|st)\.global\.[^\s]*?(?:\.v(\d))?\.[bfsu](\d+)\s")
_FACTS: dict[str, dict[str, Any]] = {}


def _access_bits(ptx: str, kind: str, marker: str) -> int | None:
    """Narrowest ``ld``/``st`` global access (bits) among the PTX instructions carrying ``marker``
    (the x loads and output stores are the ones with the schedule's cache hints)."""
    widths = []
    for line in ptx.splitlines():
        line = line.strip()
        if not re.search(rf"\b{kind}\.global\b", line) or marker not in line:
            continue
        m = _WIDTH.search(line + " ")
        if m:
            widths.append(int(m.group(1) or 1) * int(m.group(2)))
    return min(widths) if widths else None


def compiled_facts(launch: Any, arch: int = 90) -> dict[str, Any]:
    """Registers, shared bytes (static + dynamic), spills, ``x_load_bits`` and ``out_store_bits``
    (None: the launch stores no output) of ``launch`` compiled for ``sm_<arch>`` (cached per
    specialisation). The widths are read from the PTX of the same configuration with the L2
    schedule's hints (evict_last / evict_first loads of x, ``.cs`` stores of the output), which mark
    exactly the big-tensor accesses."""
    from cbam_triton.tools.aot import compile_launch, cubin_report, specialize

    spec = specialize(launch)
    key = f"{arch}|{launch.name}|{launch.num_warps}|{spec.signature}|{spec.constexprs}|{spec.attrs}"
    if key in _FACTS:
        return _FACTS[key]
    compiled = compile_launch(launch, arch)
    rep = cubin_report(compiled.asm["cubin"])
    ptx = compiled.asm["ptx"]
    if "HINTS" in launch.meta and not launch.meta["HINTS"]:
        twin = dataclasses.replace(launch, meta={**launch.meta, "HINTS": True})
        ptx = compile_launch(twin, arch).asm["ptx"]
    first = "evict_first" in ptx and launch.name in ("gate", "gate_conv")
    load_marker = "L1::evict_first" if first else "L1::evict_last"
    facts = {
        "registers": rep["registers"],
        "shared_bytes": max(0, rep["shared_bytes"]) + int(getattr(compiled.metadata, "shared", 0) or 0),
        "spill_bytes": rep["spill_bytes"],
        "ldg128": rep["global_loads_128"],
        "x_load_bits": _access_bits(ptx, "ld", load_marker),
        "out_store_bits": _access_bits(ptx, "st", "st.global.cs") if launch.name in ("gate", "gate_conv") else None,
    }
    _FACTS[key] = facts
    return facts


def _resources(launches: list[Any], arch: int) -> dict[tuple[str, int], tuple[int, int]]:
    got: dict[tuple[str, int], tuple[int, int]] = {}
    for launch in launches:
        f = compiled_facts(launch, arch)
        k = (launch.name, launch.num_warps)
        old = got.get(k, (0, 0))
        got[k] = (max(old[0], f["registers"]), max(old[1], f["shared_bytes"]))
    return got


def plan_compiled(plan_fn: Any, sms: int, arch: int) -> tuple[list[Any], dict[tuple[str, int], tuple[int, int]]]:
    """Plan with ``plan_fn()`` for ``sms`` SMs of ``sm_<arch>`` from the compiled kernels: plan with
    the fallback table, compile, plan again with the compiled registers, until the resources stop
    changing (at most 4 rounds). A kernel's registers can depend on the split count the plan picks
    (its arguments' specialisation), so the rounds may cycle; then the round whose grids, judged
    by their own compiled registers, fill their waves best is kept. Returns the launches and the
    resources they were planned with."""
    from cbam_triton.launchers import residency

    resources: dict[tuple[str, int], tuple[int, int]] = {}
    rounds = []
    for _ in range(4):
        with residency.assume(sms, arch, resources):
            launches = plan_fn()
        got = _resources(launches, arch)
        rounds.append((_fill(launches, sms, arch), len(rounds), launches, resources))
        if all(resources.get(k) == v for k, v in got.items()):
            return launches, resources
        resources = {**resources, **got}
    _, _, launches, resources = max(rounds, key=lambda r: (r[0], -r[1]))
    return launches, resources


def _fill(launches: list[Any], sms: int, arch: int) -> tuple[float, float]:
    """(worst wave efficiency of the multi-wave grids, least bytes in flight per SM) of a plan."""
    rows = launch_rows(launches, sms, arch)
    worst = min([r["wave_efficiency"] for r in rows if r["waves"] > 1] or [1.0])
    return (min(worst, 0.9), min(r["x_bytes_in_flight_per_sm"] for r in rows))


def launch_rows(launches: list[Any], sms: int, arch: int | None) -> list[dict[str, Any]]:
    """Per launch: the fields of ``explain --json`` (compiled facts when ``arch`` is given, the
    fallback table's registers otherwise)."""
    from cbam_triton.launchers import residency

    rows = []
    for launch in launches:
        if arch is not None:
            f = compiled_facts(launch, arch)
        else:
            regs, smem = residency.resources(launch.name, launch.num_warps)
            f = {"registers": regs, "shared_bytes": smem, "spill_bytes": None, "ldg128": None,
                 "x_load_bits": None, "out_store_bits": None}
        ctas = residency.ctas_per_sm(f["registers"], launch.num_warps, f["shared_bytes"], arch or 90)
        programs = 1
        for g in launch.grid:
            programs *= g
        m = residency.model(programs, sms, ctas, launch.x_in_flight)
        rows.append({
            "name": launch.name, "grid": list(launch.grid), "num_warps": launch.num_warps,
            "registers": f["registers"], "shared_bytes": f["shared_bytes"], "spill_bytes": f["spill_bytes"],
            "persistent": False, "ctas_per_sm": m.ctas_per_sm, "waves": m.waves,
            "wave_efficiency": round(m.wave_efficiency, 4),
            "x_bytes_in_flight_per_cta": m.x_bytes_in_flight_per_cta,
            "x_bytes_in_flight_per_sm": round(m.x_bytes_in_flight_per_sm, 1),
            "x_load_bits": f["x_load_bits"], "out_store_bits": f["out_store_bits"],
            "ldg128": f["ldg128"], "x_bytes": _x_bytes(launch), "weight_bytes": launch.weight_bytes,
            "tile": [launch.meta["BLOCK_C"], launch.meta.get("BLOCK_P", launch.meta.get("BLOCK_N", 1))],
            "unroll": launch.meta.get("UNROLL", 1),
        })
    return rows


def _x_bytes(launch: Any) -> int:
    """Bytes of x the launch streams (0: a launch that reads no x, e.g. the channel map)."""
    from cbam_triton.tools.kernel_report import NOT_STREAMING

    if launch.name in NOT_STREAMING:
        return 0
    x = launch.args[0]
    return x.numel() * x.element_size()


#: the issue's grid: ResNet-50 stage shapes x layouts x dtypes x batch
RESNET = ((256, 56), (512, 28), (1024, 14), (2048, 7))


def targets(plan: dict[str, Any], sms: int) -> list[str]:
    """What misses the streaming targets in an ``explain --json`` document (empty: all met)."""
    bad = []
    for r in plan["launches"]:
        want = min(32 * 1024, r["x_bytes"] / sms)
        if r["x_bytes_in_flight_per_sm"] + 1e-6 < want:
            bad.append(f"{r['name']}: {r['x_bytes_in_flight_per_sm'] / 1024:.1f} KiB in flight per SM < "
                       f"{want / 1024:.1f}")
        if r["waves"] > 1 and r["wave_efficiency"] < 0.9:
            bad.append(f"{r['name']}: wave efficiency {r['wave_efficiency']:.2f} over {r['waves']} waves")
        if r["x_load_bits"] is not None and r["x_load_bits"] < 128:
            bad.append(f"{r['name']}: {r['x_load_bits']}-bit x loads")
        if r["out_store_bits"] is not None and r["out_store_bits"] < 128:
            bad.append(f"{r['name']}: {r['out_store_bits']}-bit output stores")
        if r["spill_bytes"]:
            bad.append(f"{r['name']}: {r['spill_bytes']} bytes spilled")
    limit = max(0.25 * plan["x_bytes"], 2 * plan["chunks"] * plan["mlp_weight_size_bytes"])
    if plan["weight_bytes_total"] > limit:
        bad.append(f"weight traffic {plan['weight_bytes_total'] / 2**20:.2f} MiB > {limit / 2**20:.2f} MiB")
    return bad


def main(argv: list[str] | None = None) -> int:
    from cbam_triton.explain import explain_module

    p = argparse.ArgumentParser(description="the fused forward's streaming model on the ResNet-50 shapes")
    p.add_argument("--sms", type=int, default=132)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp32"])
    p.add_argument("--json", help="write every plan here")
    args = p.parse_args(argv)
    plans, misses, weights = [], 0, []
    print("| shape | layout | dtype | launch | grid | warps | regs | CTAs/SM | waves | eff | KiB in flight/SM | "
          "x ld bits | out st bits |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.batch:
        for c, hw in RESNET:
            for layout in ("nchw", "channels_last"):
                for dtype in args.dtypes:
                    plan = explain_module((n, c, hw, hw), dtype, layout, sms=args.sms, arch=args.arch)
                    plan["config"] = dict(shape=[n, c, hw, hw], layout=layout, dtype=dtype)
                    plan["misses"] = targets(plan, args.sms)
                    misses += bool(plan["misses"])
                    plans.append(plan)
                    weights.append((n, c, hw, layout, dtype, plan["weight_bytes_total"],
                                    max(0.25 * plan["x_bytes"], 2 * plan["chunks"] * plan["mlp_weight_size_bytes"])))
                    for r in plan["launches"][: len(plan["launches"]) // plan["chunks"]]:  # the first chunk
                        print(f"| {n}×{c}×{hw}² | {layout} | {dtype} | {r['name']} | {tuple(r['grid'])} | "
                              f"{r['num_warps']} | {r['registers']} | {r['ctas_per_sm']} | {r['waves']} | "
                              f"{r['wave_efficiency']:.2f} | {r['x_bytes_in_flight_per_sm'] / 1024:.1f} | "
                              f"{r['x_load_bits']} | {r['out_store_bits']} |")
    print("\n| shape | layout | dtype | modelled MLP weight traffic (MiB) | bound max(0.25·|x|, 2·chunks·weights) |")
    print("|---|---|---|---|---|")
    for n, c, hw, layout, dtype, got, bound in weights:
        print(f"| {n}×{c}×{hw}² | {layout} | {dtype} | {got / 2**20:.2f} | {bound / 2**20:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(plans, f, indent=1)
    print(f"{len(plans)} configurations, {misses} missing a target", file=sys.stderr)
    for plan in plans:
        for m in plan["misses"]:
            print(f"  {plan['config']}: {m}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
