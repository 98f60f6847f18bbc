"""Streaming facts of the fused forward from its compiled kernels: registers, shared memory, spills
and the x load / output store widths of every planned launch (ahead-of-time compile for
``sm_<arch>``, its PTX and SASS), and the residency model computed from them
(:mod:`cbam_triton.launchers.residency`). What ``python -m cbam_triton.explain --arch 90 --json``
prints; needs triton imported without ``TRITON_INTERPRET=1``. The ResNet-50 grid as a table, with the
targets judged: ``python -m cbam_triton.tools.streaming_report``.
"""

from __future__ import annotations

import dataclasses
import re
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


def _resources(launches: list[Any], arch: int) -> dict[tuple, tuple[int, int]]:
    """Compiled (registers, shared bytes) of the launches: per (kernel, warps, variant) — the variant
    the planner sized the grid for (``Launch.variant``) — or, for a launch planned without one, per
    (kernel, warps), the most of them."""
    got: dict[tuple, tuple[int, int]] = {}
    for launch in launches:
        f = compiled_facts(launch, arch)
        k = (launch.name, launch.num_warps)
        if launch.variant is not None:
            got[(*k, launch.variant)] = (f["registers"], f["shared_bytes"])
        else:
            old = got.get(k, (0, 0))
            got[k] = (max(old[0], f["registers"]), max(old[1], f["shared_bytes"]))
    return got


#: every (kernel, warps, variant) -> (registers, shared bytes) :func:`plan_compiled` compiled in this
#: process, per arch (the streaming report writes them out as the shipped table)
LEARNED: dict[int, dict[tuple, tuple[int, int]]] = {}


def plan_compiled(plan_fn: Any, sms: int, arch: int) -> tuple[list[Any], dict[tuple, tuple[int, int]]]:
    """Plan with ``plan_fn()`` for ``sms`` SMs of ``sm_<arch>`` from the compiled kernels: plan with
    the variants compiled before in this process, then the shipped table of compiled variants (else
    the fallback table), compile, plan again with the compiled registers of every variant compiled so
    far (the candidates the planners weighed without compiled figures are each planned once and
    compiled too), until a round plans only variants already known (at most 8 rounds). The planner then sized each grid
    from the registers of the variant it launches. Should the rounds not settle, the round whose grids,
    judged by their own compiled registers, fill their waves best is kept. Returns the launches and
    the resources they were planned with."""
    from cbam_triton.launchers import residency

    # every variant compiled before in this process (the streaming report's configurations share many)
    resources: dict[tuple, tuple[int, int]] = dict(LEARNED.get(arch, {}))
    rounds = []
    for _ in range(8):
        with residency.assume(sms, arch, resources):
            launches = plan_fn()
            asked = dict(residency.asked())  # the candidates weighed without compiled figures
        got = _resources(launches, arch)
        # plan each of those once and compile it
        for (name, _warps, _variant), choice in asked.items():
            with residency.assume(sms, arch, resources), residency.force(name, choice):
                probe = [launch for launch in plan_fn() if launch.name == name]
            for k, v in _resources(probe, arch).items():
                if len(k) == 3:
                    got.setdefault(k, v)
        learned = LEARNED.setdefault(arch, {})
        for k, v in got.items():
            if len(k) == 3:
                old = learned.get(k, (0, 0))
                learned[k] = (max(old[0], v[0]), max(old[1], v[1]))
        rounds.append((_fill(launches, sms, arch), len(rounds), launches, resources))
        if all(resources.get(k) == v for k, v in got.items()):
            return launches, resources
        merged = {**resources, **{k: v for k, v in got.items() if len(k) == 3}}
        for k, v in got.items():
            if len(k) == 2:
                old = resources.get(k, (0, 0))
                merged[k] = (max(old[0], v[0]), max(old[1], v[1]))
        resources = merged
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
            regs, smem = residency.resources(launch.name, launch.num_warps, launch.variant)
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
            "variant": list(launch.variant) if launch.variant is not None else None,
        })
    return rows


def _x_bytes(launch: Any) -> int:
    """Bytes of x the launch streams (0: a launch that reads no x, e.g. the channel map)."""
    from cbam_triton.tools.kernel_report import NOT_STREAMING

    if launch.name in NOT_STREAMING:
        return 0
    x = launch.args[0]
    return x.numel() * x.element_size()
