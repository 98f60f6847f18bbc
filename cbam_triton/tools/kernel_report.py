"""Kernel report: compile every kernel in every configuration the launchers can choose, for sm_80
and sm_90, without a GPU, and report registers, spills, shared memory, SASS size and whether the
big-tensor loads/stores are 128-bit vectorised.

    python -m cbam_triton.tools.kernel_report                 # table on stdout
    python -m cbam_triton.tools.kernel_report --json out.json --check

``--check`` exits non-zero on any spill, shared memory over the sm_80 limit, a failed compile, or
an unvectorised big-tensor access in an aligned fp16/bf16/fp32 case. The configurations come from
the launchers' own ``plan_*`` functions on meta tensors, so they are the ones that run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

ARCHS = (80, 90)
#: sm_80 shared memory per block (opt-in maximum), bytes.
SM80_SHARED_LIMIT = 163 * 1024
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def _shape(layout: str, long_block: int, aligned: bool, for_split: bool) -> tuple[int, int, int, int]:
    """A shape whose unit-stride axis selects ``long_block`` in the launchers' tile rule."""
    if not aligned:
        return (3, 17, 7, 9) if layout == "nchw" else (3, 17 if long_block == 16 else long_block - 3, 7, 9)
    side = {16: 4, 64: 8, 256: 16, 1024: 32}[long_block]
    if layout == "nchw":
        return (2, 256, side, side)
    return (2, 2 * long_block if for_split else long_block, 8, 8)


def _meta_input(shape: tuple[int, int, int, int], dtype: torch.dtype, layout: str) -> torch.Tensor:
    x = torch.empty(shape, dtype=dtype, device="meta")
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def launch_cases(dtypes: tuple[str, ...] = ("fp32", "fp16", "bf16", "fp64"),
                 quick: bool = False, full: bool = False) -> Iterator[tuple[dict[str, Any], Any]]:
    """(description, Launch) for every kernel configuration the launchers can produce.

    The forward kernels' inference variants are always compiled for every tile shape. The training
    variants (tie-counting pools, backward kernels) are too with ``full``; otherwise their main flag
    set (the whole CBAM block) is compiled for every tile shape and their rarer flag sets (lone
    gates, avg-only channel branch) for one aligned and the unaligned shape per dtype and layout,
    which keeps the CI gate's compile time in check while every flag combination still compiles.
    """
    from cbam_triton.launchers import (
        plan_channel_pool,
        plan_gate,
        plan_gate_backward,
        plan_input_grad,
        plan_spatial_pool,
        plan_spatial_pool_backward,
    )
    from cbam_triton.launchers._common import LONG_BLOCKS

    fused = list(_fused_plans)

    seen: set[str] = set()
    blocks = LONG_BLOCKS[1:3] if quick else LONG_BLOCKS
    for dname in dtypes:
        dtype = DTYPES[dname]
        for layout in ("nchw", "channels_last"):
            for aligned in (True, False):
                for long_block in (blocks if aligned else (16,)):
                    plans = []
                    x = _meta_input(_shape(layout, long_block, aligned, False), dtype, layout)
                    xs = _meta_input(_shape(layout, long_block, aligned, True), dtype, layout)
                    n, c, h, w = x.shape
                    mc = torch.empty(n, c, device="meta")
                    mcs = torch.empty(xs.shape[0], xs.shape[1], device="meta")
                    ms = torch.empty(n, h, w, device="meta")
                    # training variants: every tile shape with --full, else the middle two (64, 256) and the
                    # unaligned shape; their rarer flag sets on one aligned and the unaligned shape
                    train = full or not aligned or long_block in LONG_BLOCKS[1:3]
                    rare = full or not aligned or long_block == LONG_BLOCKS[1]
                    for split in (1, 2):
                        plans.append(plan_channel_pool(x, split=split)[0])
                        if train:
                            plans.append(plan_channel_pool(x, split=split, count=True)[0])  # training forward
                        for use_mc in (True, False):
                            plans.append(plan_spatial_pool(xs, mcs if use_mc else None, split=split)[0])
                            if train and (use_mc or rare):
                                plans.append(plan_spatial_pool(xs, mcs if use_mc else None, split=split,
                                                               count=True)[0])
                    for use_mc, use_ms in ((True, True), (True, False), (False, True), (False, False)):
                        plans.append(plan_gate(x, mc if use_mc else None, ms if use_ms else None)[0])
                    # backward (g has x's dtype and layout)
                    g = torch.empty_like(x)
                    small = torch.empty(n, h * w, device="meta")
                    for use_mc, use_ms in ((True, True), (True, False), (False, True)) if train else ():
                        if (use_mc and use_ms) or rare:
                            for split in (1, 2) if full else (2,):
                                plans.append(plan_gate_backward(g, x, mc if use_mc else None, ms if use_ms else None,
                                                                split=split)[0])
                    for split in ((1, 2) if full else (2,)) if train else ():
                        plans.append(plan_spatial_pool_backward(x, mc, small, small, small, split=split)[0])
                    spool = dict(pmax=small, a=small, b=small)
                    variants = [dict(mc=mc, ms=ms, **spool, cmax=mc, avg_g=mc, max_g=mc)] if train else []  # CBAM
                    if rare:
                        variants += [dict(mc=mc, cmax=mc, avg_g=mc, max_g=mc),  # channel gate
                                     dict(mc=mc, avg_g=mc),                      # avg-only (ultralytics)
                                     dict(ms=ms, **spool)]                       # spatial gate
                    for maps in variants:
                        plans.append(plan_input_grad(g, x, **maps)[0])
                    for make in fused:  # the fused inference forward's kernels
                        plans += make(x, xs, aligned and long_block in LONG_BLOCKS[1:3], full or rare)
                    if aligned and long_block == blocks[0]:  # what the tile rule picks on real shapes
                        plans += _resnet_plans(dtype, layout)
                    for launch in plans:
                        from cbam_triton.tools.aot import specialize

                        spec = specialize(launch)
                        key = f"{launch.name}|{spec.signature}|{spec.constexprs}|{spec.attrs}"
                        if key in seen:
                            continue
                        seen.add(key)
                        yield {
                            "kernel": launch.name,
                            "dtype": dname,
                            "layout": layout,
                            "aligned": aligned and _rows_aligned(launch.args[0]) and launch.name not in NOT_STREAMING,
                            "shape": list(launch.args[0].shape),
                            "num_warps": launch.num_warps,
                            "meta": {k: (bool(v) if isinstance(v, bool) else v) for k, v in launch.meta.items()},
                            "x_tile_bytes": launch.meta["BLOCK_C"] * launch.meta.get("BLOCK_P", 0) * dtype.itemsize,
                        }, launch


#: launches that do not stream x (its pointer only names the chunk): no x accesses to judge
NOT_STREAMING = ("channel_map",)


def _rows_aligned(x: torch.Tensor) -> bool:
    """Whether the kernels can see x's rows along its unit-stride axis as 16-byte aligned and
    whole (128-bit access possible): Triton specialises an integer argument as divisible by 16, so
    the other axis's stride (and the extent along the rows) must be a multiple of 16 elements. The
    ResNet shapes' 7x7, 14x14 and 28x28 maps in NCHW are not (49, 196, 784 pixels)."""
    from cbam_triton.launchers._common import ncp_strides, unit_axis

    _, sc, sp = ncp_strides(x)
    n, c, h, w = x.shape
    other, extent = (sc, h * w) if unit_axis(sc, sp, c, h * w) == "p" else (sp, c)
    return other % 16 == 0 and extent % 16 == 0


def _mlp(c: int, hidden: int = 4, pools: str = "avg+max", act: str = "relu", bias: bool = True,
         fc2: bool = True) -> Any:
    from cbam_triton.fused_parts import ChannelMLP

    def m(*shape: int) -> torch.Tensor:
        return torch.empty(shape, device="meta")

    if not fc2:
        return ChannelMLP(m(c, c), m(c) if bias else None, None, None, pools, act)
    return ChannelMLP(m(hidden, c), m(hidden) if bias else None, m(c, hidden), m(c) if bias else None, pools, act)


def _conv(k: int = 7, spatial_input: str = "max,mean", bias: bool = False, bn: bool = True,
          affine: bool = True) -> Any:
    from cbam_triton.fused_parts import SpatialConv

    one = torch.empty(1, device="meta")
    return SpatialConv(torch.empty(1, 1 if spatial_input == "light" else 2, k, k, device="meta"),
                       one if bias else None, spatial_input, one if bn else None, one if bn else None,
                       one if bn and affine else None, one if bn and affine else None)


def _pool_mlp_plans(x: torch.Tensor, xs: torch.Tensor, main: bool, rare: bool) -> list[Any]:
    """Stage 1 of the fused forward: the CBAM MLP with the L2 hints on every tile shape, split and
    not; without them (the stream schedule) and the other dialects' MLPs (avg/max/light pools,
    identity, no bias, one layer) on the rare shapes (every shape with ``full``)."""
    from cbam_triton.launchers.pool_mlp import plan_channel_pool_mlp

    c = x.shape[1]
    plans = [plan_channel_pool_mlp(x, _mlp(c), hints=h, split=s)[0]
             for h in ((True, False) if rare else (True,)) for s in (1, 2)]
    if rare:
        for mlp in (_mlp(c, pools="avg", fc2=False, act="identity"), _mlp(c, pools="max", bias=False),
                    _mlp(c, pools="light")):
            plans.append(plan_channel_pool_mlp(x, mlp, hints=True, split=1)[0])
    return plans


def _spatial_plans(x: torch.Tensor, xs: torch.Tensor, main: bool, rare: bool) -> list[Any]:
    """Stages 2 and 3 of the fused forward (Mc from the MLP's last layer, in-kernel split combine,
    conv + BN + sigmoid + gate), and the lone channel gate's Mc in the gating kernel."""
    from cbam_triton.launchers.gate import plan_gate
    from cbam_triton.launchers.gate_conv import plan_gate_conv
    from cbam_triton.launchers.pool_mlp import ChannelState
    from cbam_triton.launchers.spatial_pool import plan_spatial_pool

    n, c, h, w = x.shape
    mc = torch.empty(n, c, device="meta")
    mcs = torch.empty(xs.shape[0], xs.shape[1], device="meta")
    pooled = torch.empty(n, 2, h, w, device="meta")

    def state(t: torch.Tensor, **kw: Any) -> ChannelState:
        mlp = _mlp(t.shape[1], **kw)
        two = mlp.fc2_weight is not None
        z = torch.empty(t.shape[0], mlp.hidden, device="meta") if two else None
        parts = None if two else torch.empty(t.shape[0], 4, 2, t.shape[1], device="meta")
        return ChannelState(mlp, z, parts)

    plans = []
    for hints in (True, False) if rare else (True,):  # the stream schedule's variants on the rare shapes
        plans.append(plan_spatial_pool(xs, None, split=2, hints=hints, combine=True, channel=state(xs), mc_out=mcs)[0])
        plans.append(plan_gate_conv(x, mc, pooled, _conv(), hints=hints, split=2)[0])
    if rare:
        plans.append(plan_spatial_pool(xs, None, split=2, hints=True, combine=True)[0])      # spatial gate
        plans.append(plan_spatial_pool(xs, None, split=1, hints=True, combine=True,         # one split
                                       channel=state(xs), mc_out=mcs)[0])
        for kw in (dict(pools="avg", fc2=False, act="identity"), dict(pools="light", bias=False)):  # other MLPs
            plans.append(plan_spatial_pool(xs, None, split=2, hints=True, combine=True, channel=state(xs, **kw),
                                           mc_out=mcs)[0])
        plans.append(plan_gate(x, None, None, hints=True, channel=state(x))[0])             # channel gate
        plans.append(plan_gate(x, None, None, hints=True, channel=state(x, fc2=False))[0])
        for conv, use_mc in ((_conv(3, "light", bias=True, bn=False), True),
                             (_conv(7, "mean,max", affine=False), False), (_conv(5, bias=True), True)):
            plans.append(plan_gate_conv(x, mc if use_mc else None, pooled, conv, hints=True, split=2)[0])
    return plans


#: The ResNet-50 CBAM shapes at batch 1 and 32, planned for an H100/H200 (528 programs): the fused
#: tile rule's choices there (stage-2 tiles kept short for the MLP weights, 128x16 stage-1 tiles, ...)
RESNET_SHAPES = ((256, 56), (512, 28), (1024, 14), (2048, 7))
#: of those, where the fused block tail's variants are compiled too (16-element aligned rows, and the
#: shape with the largest register counts)
TAIL_SHAPES = ((256, 56), (2048, 7))


def _resnet_plans(dtype: torch.dtype, layout: str) -> list[Any]:
    """Every launch of the fused forward (both schedules) on :data:`RESNET_SHAPES`, and the fused
    block tail's on :data:`TAIL_SHAPES`."""
    import os

    from cbam_triton.fused_parts import BlockTail, ChannelAffine
    from cbam_triton.launchers.forward import plan_chunk

    old = os.environ.get("CBAM_TRITON_TARGET_PROGRAMS")
    os.environ["CBAM_TRITON_TARGET_PROGRAMS"] = "528"
    try:
        plans = []
        for c, hw in RESNET_SHAPES:
            for n in (1, 32):
                x = _meta_input((n, c, hw, hw), dtype, layout)
                mlp = _mlp(c, hidden=c // 16)
                mlp = mlp._replace(**{k: getattr(mlp, k).to(dtype) for k in ("fc1_weight", "fc1_bias", "fc2_weight",
                                                                                "fc2_bias")})
                for hints in (True, False):
                    plans += plan_chunk(x, torch.empty_like(x), mlp, _conv(), hints)
                if n == 32 and (c, hw) in TAIL_SHAPES:  # a residual block's fused tail (norm, residual, ReLU)
                    v = torch.empty(c, dtype=dtype, device="meta")
                    tail = BlockTail(ChannelAffine(v, v, v, v, 1e-5), torch.empty_like(x), "relu")
                    plans += [launch for launch in plan_chunk(x, torch.empty_like(x), mlp, _conv(), True, tail)
                              if launch.name != "channel_map"]
        # a wide MLP (r = 4: two-level layer-1 combine) and a one-layer C -> C MLP (ultralytics)
        for (c, hw), mlp in (((2048, 7), _mlp(2048, hidden=512)),
                             ((512, 28), _mlp(512, pools="avg", fc2=False, act="identity"))):
            x = _meta_input((1, c, hw, hw), dtype, layout)
            mlp = mlp._replace(**{k: getattr(mlp, k).to(dtype) for k in ("fc1_weight", "fc1_bias", "fc2_weight",
                                                                          "fc2_bias") if getattr(mlp, k) is not None})
            plans += plan_chunk(x, torch.empty_like(x), mlp, _conv(), True)
        return plans
    finally:
        if old is None:
            del os.environ["CBAM_TRITON_TARGET_PROGRAMS"]
        else:
            os.environ["CBAM_TRITON_TARGET_PROGRAMS"] = old


_fused_plans = (_pool_mlp_plans, _spatial_plans)


#: the L2 cache hints each kernel must carry with HINTS=True (the L2-resident schedule), and only then
EXPECTED_HINTS = {"channel_pool_mlp": ["evict_last"], "spatial_pool": ["evict_last"],
                  "gate": [".cs", "evict_first"], "gate_conv": [".cs", "evict_first"]}


def ptx_cache_hints(ptx: str) -> list[str]:
    """The L2 cache hints in a kernel's PTX: ``evict_last`` / ``evict_first`` (an L2 eviction
    policy, ``createpolicy ... L2::evict_*`` used by ``ld ... L2::cache_hint``) and ``.cs``
    (streaming stores, ``st.global.cs``)."""
    import re

    hints = set()
    for h in ("evict_last", "evict_first"):
        if re.search(rf"createpolicy\.\S*L2::{h}", ptx) and "L2::cache_hint" in ptx:
            hints.add(h)
    if re.search(r"\bst\.global\.cs\b", ptx):
        hints.add(".cs")
    return sorted(hints)


def check_row(row: dict[str, Any]) -> list[str]:
    """Reasons this compiled configuration fails the quality gate (empty list: it passes)."""
    problems = []
    if row.get("error"):
        return [f"compile failed: {row['error']}"]
    if row["spill_bytes"] > 0:
        problems.append(f"{row['spill_bytes']} bytes of register spills (LOCAL)")
    if row["shared_bytes"] > SM80_SHARED_LIMIT:
        problems.append(f"{row['shared_bytes']} bytes of shared memory (> sm_80 limit)")
    if row["aligned"] and row["dtype"] != "fp64":
        threads = 32 * row["num_warps"]
        vec_loads_needed = max(1, row["x_tile_bytes"] // (16 * threads))
        if row["global_loads_128"] < vec_loads_needed:
            problems.append(f"x loads not 128-bit: {row['global_loads_128']} LDG.128 < {vec_loads_needed} per tile")
        if row["kernel"] == "channel_pool" and row["global_loads_128"] != row["global_loads"]:
            problems.append("channel_pool has non-128-bit loads of x")
        if row["kernel"] in ("gate", "gate_conv", "input_grad") and row["global_stores_128"] != row["global_stores"]:
            problems.append(f"{row['kernel']} full-size stores not all 128-bit")
    want = EXPECTED_HINTS.get(row["kernel"], []) if row["meta"].get("HINTS") else []
    if row.get("ptx_cache_hints") is not None and row["ptx_cache_hints"] != want:
        problems.append(f"PTX cache hints {row['ptx_cache_hints']}, expected {want}")
    row["ok"] = not problems
    return problems


_CASES_CACHE: dict[tuple[Any, ...], list[tuple[dict[str, Any], Any]]] = {}


def _cases(dtypes: tuple[str, ...], quick: bool, full: bool = False) -> list[tuple[dict[str, Any], Any]]:
    key = (dtypes, quick, full)
    if key not in _CASES_CACHE:
        _CASES_CACHE[key] = list(launch_cases(dtypes, quick, full))
    return _CASES_CACHE[key]


def _compile_row(job: tuple[tuple[str, ...], bool, bool, int, int]) -> dict[str, Any]:
    """Compile case ``index`` for ``arch`` (runs in a worker process; cases are rebuilt there)."""
    from cbam_triton.tools.aot import compile_launch, cubin_report

    dtypes, quick, full, index, arch = job
    desc, launch = _cases(dtypes, quick, full)[index]
    row = dict(desc, arch=f"sm_{arch}")
    try:
        compiled = compile_launch(launch, arch)
        row.update(cubin_report(compiled.asm["cubin"]))
        ptx = compiled.asm["ptx"]
        row["ptx_cache_hints"] = ptx_cache_hints(ptx)
    except Exception as exc:  # reported, and fails --check
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    row["problems"] = check_row(row)
    return row


def build_report(archs: tuple[int, ...] = ARCHS, dtypes: tuple[str, ...] = ("fp32", "fp16", "bf16", "fp64"),
                 quick: bool = False, progress: bool = True, jobs: int | None = None,
                 full: bool = False) -> list[dict[str, Any]]:
    """Compile every case for every arch (in ``jobs`` processes) and return one row per compile."""
    import concurrent.futures
    import multiprocessing

    work = [(dtypes, quick, full, i, arch) for i in range(len(_cases(dtypes, quick, full))) for arch in archs]
    jobs = jobs or min(len(work), os.cpu_count() or 1)
    start, rows, step = time.time(), [], max(1, len(work) // 10)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        for row in pool.map(_compile_row, work, chunksize=4):
            rows.append(row)
            if progress and (len(rows) % step == 0 or len(rows) == len(work)):
                print(f"[kernel_report] compiled {len(rows)}/{len(work)} ({time.time() - start:.0f}s)",
                      file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """The rows as an aligned text table, or a Markdown table."""
    head = ("kernel", "arch", "dtype", "layout", "aln", "BLOCK_CxP", "flags", "regs", "spill", "smem",
            "sass", "ldg128/ldg", "stg128/stg", "ok")
    lines = []
    for r in rows:
        meta = r["meta"]
        flags = [k for k, v in meta.items() if v is True and k != "ACC_FP64"]
        if meta.get("MC_MODE"):  # where Mc comes from: loaded, or computed from the MLP's last layer
            flags.insert(0, "MC=" + ("", "load", "fc2", "part")[meta["MC_MODE"]])
        flags = ",".join(flags) or "-"
        if r.get("error"):
            lines.append((r["kernel"], r["arch"], r["dtype"], r["layout"], "y" if r["aligned"] else "n",
                          f"{meta['BLOCK_C']}x{meta['BLOCK_P']}", flags, "ERR", "", "", "", "", "", "no"))
            continue
        lines.append((r["kernel"], r["arch"], r["dtype"], r["layout"], "y" if r["aligned"] else "n",
                      f"{meta['BLOCK_C']}x{meta['BLOCK_P']}", flags, str(r["registers"]), str(r["spill_bytes"]),
                      str(r["shared_bytes"]), str(r["sass_instructions"]),
                      f"{r['global_loads_128']}/{r['global_loads']}", f"{r['global_stores_128']}/{r['global_stores']}",
                      "yes" if r["ok"] else "NO"))
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("kernel_report: unset TRITON_INTERPRET (ahead-of-time compilation needs the real compiler)",
              file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), help="SM versions (default 80 90)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16", "fp64"], choices=list(DTYPES))
    parser.add_argument("--quick", action="store_true", help="two tile sizes per layout instead of four")
    parser.add_argument("--full", action="store_true",
                        help="every training flag set on every tile shape (default: on one shape per dtype/layout)")
    parser.add_argument("--json", help="write the rows as JSON to this path")
    parser.add_argument("--markdown", help="write the table as Markdown to this path")
    parser.add_argument("--check", action="store_true", help="exit 1 if any configuration fails the gate")
    parser.add_argument("--quiet", action="store_true", help="no table, no progress")
    parser.add_argument("--jobs", type=int, default=None, help="compile processes (default: all cores)")
    args = parser.parse_args(argv)
    import triton

    rows = build_report(tuple(args.arch), tuple(args.dtypes), args.quick, progress=not args.quiet,
                        jobs=args.jobs, full=args.full)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": 1, "triton": triton.__version__, "torch": torch.__version__, "rows": rows}, f,
                      indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            cmd = " ".join(["python -m cbam_triton.tools.kernel_report"] + [a for a in (argv or sys.argv[1:])])
            day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
            f.write(f"Generated by `{cmd}` with triton {triton.__version__}, torch {torch.__version__} "
                    f"({day}).\n\n" + format_table(rows, markdown=True) + "\n")
    if not args.quiet:
        print(format_table(rows))
    bad = [r for r in rows if r["problems"]]
    print(f"kernel_report: {len(rows)} compiled configurations (triton {triton.__version__}), "
          f"{len(bad)} failing the gate")
    for r in bad:
        print(f"  FAIL {r['kernel']} {r['arch']} {r['dtype']} {r['layout']} {r['meta']}: {'; '.join(r['problems'])}")
    return 1 if (args.check and bad) else 0


if __name__ == "__main__":
    sys.exit(main())
