"""The streaming targets judged on the ResNet-50 grid (stage shapes x layouts x dtypes x batch), planned
for a GPU from any machine with the compiled kernels' facts (:mod:`cbam_triton.tools.streaming`):

    python -m cbam_triton.tools.streaming_report [--sms 132] [--arch 90] [--json plans.json]

prints the per-launch table (registers, CTAs/SM, waves, bytes in flight, access widths), the modelled MLP
weight traffic against its bound, and what misses a target. Needs triton without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cbam_triton.explain import explain_module

#: the target grid: ResNet-50 stage shapes x layouts x dtypes x batch
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
    """The table and the misses on stdout/stderr (exit status 0)."""
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
