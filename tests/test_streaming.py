"""The residency model of the fused forward (cbam_triton/launchers/residency.py) and what
``python -m cbam_triton.explain --sms 132 --arch 90 --json`` reports from the compiled kernels.

The occupancy arithmetic is checked against an independent transcription of CUDA's occupancy
calculator; the JSON is checked field by field and its residency, waves and bytes in flight are
recomputed from the registers, warps, shared memory and grid it reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from cbam_triton.launchers import residency

#: sm_90's limits, written out independently of cbam_triton.launchers.residency
SM90 = dict(regs=65536, threads=2048, ctas=32, smem=228 * 1024, reserved=1024)
SM80 = dict(regs=65536, threads=2048, ctas=32, smem=164 * 1024, reserved=1024)


def occupancy(regs: int, warps: int, smem: int, lim: dict[str, int]) -> int:
    """CUDA's occupancy calculator (cuda_occupancy.h), for the limits above."""
    per_warp = -(-regs * 32 // 256) * 256                 # register allocation granularity: 256 per warp
    by_regs = (lim["regs"] // 4 // per_warp) * 4 // warps  # 4 register-file partitions
    by_threads = lim["threads"] // (32 * warps)
    by_smem = lim["smem"] // (-(-(smem + lim["reserved"]) // 128) * 128)
    return min(lim["ctas"], by_regs, by_threads, by_smem)


def test_ctas_per_sm_known_values():
    assert residency.ctas_per_sm(111, 8, 0, 90) == 2      # spatial_pool at 2048x7^2 (the review's figure)
    assert residency.ctas_per_sm(142, 4, 0, 90) == 3
    assert residency.ctas_per_sm(32, 4, 0, 90) == 16      # thread-limited
    assert residency.ctas_per_sm(16, 1, 0, 90) == 32      # CTA-slot-limited
    assert residency.ctas_per_sm(32, 4, 100 * 1024, 90) == 2   # shared-memory-limited (228 KiB / 101 KiB)
    assert residency.ctas_per_sm(32, 4, 100 * 1024, 80) == 1   # sm_80: 164 KiB
    assert residency.ctas_per_sm(256, 4, 0, 90) == 0      # more registers than a thread may have


@pytest.mark.parametrize("arch,lim", [(90, SM90), (80, SM80)])
def test_ctas_per_sm_is_the_cuda_occupancy_calculation(arch, lim):
    for regs in range(16, 256, 7):
        for warps in (1, 2, 4, 8, 16):
            for smem in (0, 1024, 4096, 40 * 1024, 99 * 1024):
                assert residency.ctas_per_sm(regs, warps, smem, arch) == occupancy(regs, warps, smem, lim), \
                    (regs, warps, smem)


def test_waves_efficiency_and_bytes_in_flight():
    m = residency.model(programs=1000, sms=132, ctas=3, in_flight_per_cta=4096)
    assert (m.waves, round(m.wave_efficiency, 4)) == (3, round(1000 / (3 * 396), 4))
    assert m.x_bytes_in_flight_per_sm == 396 * 4096 / 132
    small = residency.model(programs=100, sms=132, ctas=3, in_flight_per_cta=4096)
    assert small.waves == 1 and small.x_bytes_in_flight_per_sm == 100 * 4096 / 132  # CTAs actually resident


def _meta_plan(shape, layout, dtype=torch.float16, reduction=16):
    from cbam_triton.explain import explain
    from cbam_triton.modules import CBAM

    x = torch.empty(shape, dtype=dtype, device="meta")
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    module = CBAM(shape[1], reduction).eval().to(device="meta", dtype=dtype)
    return explain(module, x, l2_cache_bytes=50 << 20, sms=132)


def test_grids_are_sized_from_residency_not_a_fixed_guess(monkeypatch):
    monkeypatch.delenv("CBAM_TRITON_TARGET_PROGRAMS", raising=False)
    # the registers decide the resident CTAs, and the resident CTAs the grids
    x = torch.empty((32, 512, 28, 28), dtype=torch.float16, device="meta")
    from cbam_triton.launchers.forward import plan_fused_forward
    from cbam_triton.modules import CBAM
    from cbam_triton.schedule import plan_schedule

    mlp, conv = CBAM(512, 16).eval().to(device="meta", dtype=torch.float16).fused_parts()
    sched = plan_schedule(32, 512 * 784 * 2, "l2", 25 << 20, device_type="cuda")
    grids = {}
    for regs in (40, 200):
        table = {(k, w): (regs, 2048) for k in ("channel_pool_mlp", "spatial_pool", "gate_conv") for w in (4, 8)}
        with residency.assume(132, 90, table):
            launches, _ = plan_fused_forward(x, mlp, conv, sched)
        grids[regs] = {launch.name: launch.grid[0] * launch.grid[1] for launch in launches}
        for launch in launches:
            cap = 132 * residency.ctas_per_sm(regs, launch.num_warps, 2048, 90)
            programs = launch.grid[0] * launch.grid[1]
            # more than one wave: whole waves (stages 2 and 3: the channel walk has room for the splits;
            # stage 1's grid is bounded by its channel blocks and its H*W walk)
            if programs > cap and launch.name != "channel_pool_mlp":
                assert residency.wave_efficiency(programs, cap) >= 0.9, (regs, launch.name, launch.grid)
            if regs == 40 and launch.name in ("spatial_pool", "gate_conv"):  # 16 CTAs/SM: enough in flight
                assert min(programs, cap) * launch.x_in_flight / 132 >= min(32 << 10, x.numel() * 2 / 132), \
                    (regs, launch.name, launch.grid)
    assert grids[40] != grids[200]  # the residency decides the grids


def test_fallback_model_fields_without_a_compiler(monkeypatch):
    monkeypatch.delenv("CBAM_TRITON_TARGET_PROGRAMS", raising=False)
    plan = _meta_plan((8, 2048, 7, 7), "nchw")
    assert {"chunks", "mlp_weight_size_bytes", "weight_bytes_total"} <= plan.keys()
    assert plan["mlp_weight_size_bytes"] == 2 * (2048 * 128 * 2) + (128 + 2048) * 2
    for r in plan["launches"]:
        variant = tuple(r["variant"]) if r["variant"] is not None else None
        with residency.assume(132, 90):  # what a GPU's planning assumes without a compile
            assert r["registers"] == residency.resources(r["name"], r["num_warps"], variant)[0]
        with residency.assume(132, 80):  # (another architecture: the fallback table)
            assert residency.resources(r["name"], r["num_warps"], variant) == \
                residency.FALLBACK_RESOURCES.get((r["name"], r["num_warps"]), (128, 5120))
        assert r["x_load_bits"] is None  # only an ahead-of-time compile tells


def test_gpu_planning_uses_the_compiled_variant_table(monkeypatch):
    """Without a compile, sm_90 plans take each launch's registers from the shipped table of compiled
    variants (cbam_triton/launchers/variants_sm90.py), the figures the grid was sized for."""
    monkeypatch.delenv("CBAM_TRITON_TARGET_PROGRAMS", raising=False)
    from cbam_triton.launchers.variants_sm90 import VARIANT_RESOURCES

    plan = _meta_plan((32, 512, 28, 28), "nchw")
    streaming = [r for r in plan["launches"] if r["name"] != "channel_map"]
    assert len(streaming) == 3
    for r in streaming:
        key = (r["name"], r["num_warps"], tuple(r["variant"]))
        assert key in VARIANT_RESOURCES, key
        assert (r["registers"], r["shared_bytes"]) == VARIANT_RESOURCES[key]
        programs = r["grid"][0] * r["grid"][1]
        assert r["ctas_per_sm"] == occupancy(r["registers"], r["num_warps"], r["shared_bytes"], SM90)
        assert programs <= 132 * r["ctas_per_sm"] or r["wave_efficiency"] >= 0.9 or r["name"] == "channel_pool_mlp"


def test_stage2_keeps_four_aligned_row_tiles_in_flight(monkeypatch):
    """Stage 2 on 16-element aligned rows weighs four tiles in flight too: at 8×512×28² NCHW bf16 (the
    shipped table's registers) two tiles a turn kept 31.0 KiB in flight per SM with [8, 512] tiles; four
    [64, 64] tiles a turn keep 50 KiB in one wave."""
    monkeypatch.delenv("CBAM_TRITON_TARGET_PROGRAMS", raising=False)
    plan = _meta_plan((8, 512, 28, 28), "nchw", torch.bfloat16)
    stage2 = next(r for r in plan["launches"] if r["name"] == "spatial_pool")
    assert stage2["variant"][-3] == 4, stage2["variant"]  # (..., BLOCK_C, BLOCK_P, UNROLL, split, divisible)
    assert stage2["waves"] == 1 and stage2["x_bytes_in_flight_per_sm"] >= 32 * 1024, stage2


def test_stage3_window_walks_fill_one_wave(monkeypatch):
    """Stage 3 on the window path loads Mc once a turn, so its programs may walk more tiles: at
    32×1024×14² NCHW fp16 (the shipped table's 167 registers: 3 CTAs/SM) one wave of longer walks
    replaces three waves at 0.86, with ≥ 32 KiB in flight per SM and ≤ 32 loads that are not x."""
    monkeypatch.delenv("CBAM_TRITON_TARGET_PROGRAMS", raising=False)
    plan = _meta_plan((32, 1024, 14, 14), "nchw")
    stage3 = next(r for r in plan["launches"] if r["name"] == "gate_conv")
    assert stage3["waves"] == 1 and stage3["x_bytes_in_flight_per_sm"] >= 32 * 1024, stage3
    assert stage3["longest"]["other_loads"] <= 32, stage3["longest"]


FIELDS = ("name", "grid", "num_warps", "registers", "shared_bytes", "persistent", "ctas_per_sm", "waves",
          "wave_efficiency", "x_bytes_in_flight_per_cta", "x_bytes_in_flight_per_sm", "x_load_bits",
          "out_store_bits")


def _explain_json(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CBAM_TRITON_TARGET_PROGRAMS")}
    proc = subprocess.run([sys.executable, "-m", "cbam_triton.explain", *args, "--sms", "132", "--arch", "90",
                           "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("shape,layout", [(("32", "256", "56", "56"), "channels_last"),
                                          (("8", "2048", "7", "7"), "nchw")])
def test_explain_json_from_the_sm90_compile(shape, layout):
    plan = _explain_json("--shape", *shape, "--dtype", "fp16", "--layout", layout)
    for key in ("chunks", "mlp_weight_size_bytes", "weight_bytes_total"):
        assert isinstance(plan[key], int), key
    assert plan["chunks"] == plan["schedule"]["num_chunks"]
    names = [r["name"] for r in plan["launches"]]
    streaming = [name for name in names if name != "channel_map"]  # the channel map streams no x
    assert len(streaming) == 3 * plan["chunks"] and len(names) - len(streaming) in (0, plan["chunks"])
    for r in plan["launches"]:
        for f in FIELDS:
            assert f in r, f
        assert r["registers"] > 0 and r["spill_bytes"] == 0
        programs = r["grid"][0] * r["grid"][1]
        ctas = occupancy(r["registers"], r["num_warps"], r["shared_bytes"], SM90)
        cap = 132 * ctas
        waves = -(-programs // cap)
        assert r["ctas_per_sm"] == ctas and r["waves"] == waves
        assert r["wave_efficiency"] == pytest.approx(programs / (waves * cap), abs=1e-4)
        assert r["x_bytes_in_flight_per_sm"] == pytest.approx(min(programs, cap) * r["x_bytes_in_flight_per_cta"] / 132,
                                                              abs=0.1)
        if waves > 1:
            assert r["wave_efficiency"] >= 0.9, r
        if r["name"] == "channel_map":
            assert r["x_load_bits"] is None and r["out_store_bits"] is None and r["x_bytes_in_flight_per_cta"] == 0
        else:  # channels_last: whole 16-byte rows; NCHW 7²: rows of 98 bytes read through aligned windows
            assert r["x_load_bits"] == 128
            assert r["out_store_bits"] == (128 if r["name"] == "gate_conv" else None)
            if layout == "nchw":  # 1.5 MiB of x: all of it in flight at once
                assert r["x_bytes_in_flight_per_sm"] + 0.1 >= min(32 * 1024, r["x_bytes"] / 132), r


def test_long_unaligned_rows_stream_128_bit_from_the_sm90_compile():
    """NCHW rows longer than one window (33² fp16: 2178-byte rows at every 16-byte offset) are read
    and written in pixel blocks of aligned windows: 128-bit x loads and out stores in the compiled
    SASS of stages 2 and 3, no spills."""
    plan = _explain_json("--shape", "4", "64", "33", "33", "--dtype", "fp16", "--layout", "nchw")
    streaming = [r for r in plan["launches"] if r["name"] != "channel_map"]
    assert [("WBLOCKS" in r["flags"]) for r in streaming] == [False, True, True]
    for r in streaming:
        assert r["x_load_bits"] == 128 and r["spill_bytes"] == 0, r
        assert r["out_store_bits"] == (128 if r["name"] == "gate_conv" else None), r


@pytest.mark.parametrize("one_tile_registers,want_unroll", [(72, 1), (200, 2)])
def test_fewer_tiles_in_flight_where_their_registers_fill_the_machine(monkeypatch, one_tile_registers, want_unroll):
    """On a GPU the planner weighs a kernel variant with fewer x tiles in flight per iteration beside
    the launcher's rule: where its registers leave room for more resident programs (72 against 96:
    7 against 5 CTAs/SM), 16×256×56² bf16's stage 3 fits one wave of 784 programs with one tile in
    flight instead of two waves at 0.59; where they don't, the rule's two tiles stay."""
    monkeypatch.delenv("CBAM_TRITON_TARGET_PROGRAMS", raising=False)
    from cbam_triton.launchers.forward import plan_fused_forward
    from cbam_triton.modules import CBAM
    from cbam_triton.schedule import plan_schedule

    compiled = residency.resources

    def resources(kernel, num_warps, variant=None, arch=None):
        if kernel == "gate_conv" and variant is not None:  # (..., BLOCK_C, BLOCK_P, UNROLL, split, divisible)
            return (one_tile_registers if variant[-3] == 1 else 96, 2048)
        return compiled(kernel, num_warps, variant, arch)

    monkeypatch.setattr(residency, "resources", resources)
    x = torch.empty((16, 256, 56, 56), dtype=torch.bfloat16, device="meta")
    mlp, conv = CBAM(256, 16).eval().to(device="meta", dtype=torch.bfloat16).fused_parts()
    with residency.assume(132, 90):
        launches, _ = plan_fused_forward(x, mlp, conv, plan_schedule(16, 256 * 3136 * 2, "stream"))
    gate = next(launch for launch in launches if launch.name == "gate_conv")
    assert gate.meta["UNROLL"] == want_unroll and gate.variant[-3] == want_unroll
    if want_unroll == 1:  # one wave, enough bytes in flight
        programs = gate.grid[0] * gate.grid[1]
        cap = 132 * residency.ctas_per_sm(one_tile_registers, gate.num_warps, 2048, 90)
        assert programs <= cap, (gate.grid, cap)
        assert min(programs, cap) * gate.x_in_flight / 132 >= 32 << 10
