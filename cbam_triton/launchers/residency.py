"""Residency model of the streaming launches: CTAs per SM from a compiled kernel's registers, warps and
shared memory (the standard CUDA occupancy calculation), waves, wave efficiency and bytes of x in
flight — and the grid sizes the fused forward's launchers plan from it (docs/design.md, "Residency").

Built at plan time only (a cached plan keeps its grid): the fast path's host cost does not change.

Where the registers come from, in order (:func:`resources`; each planned candidate is looked up as
the kernel *variant* it compiles to, see ``plan_fused``):

1. what :func:`assume` set (``python -m cbam_triton.explain --arch 90`` compiles each planned launch
   and each candidate the planners weighed ahead of time and plans again with their registers until
   no variant is new, :func:`cbam_triton.tools.streaming.plan_compiled`);
2. on sm_90 (a GPU, or planning for one), the shipped table of compiled variants,
   :mod:`cbam_triton.launchers.variants_sm90` (``python -m cbam_triton.tools.streaming_report
   --write-table``: the highest figures of each variant over the ResNet-50 grid, triton 3.8);
3. else :data:`FALLBACK_RESOURCES`, a documented table of what the kernels compile to (sm_90,
   triton 3.8: about the highest register count of each kernel's configurations on the ResNet-50
   shapes, so that the planned residency does not exceed the real one).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM limits of a GPU architecture (CUDA occupancy calculator values)."""

    regs_per_sm: int = 64 * 1024
    regs_per_cta: int = 64 * 1024
    threads_per_sm: int = 2048
    ctas_per_sm: int = 32
    smem_per_sm: int = 228 * 1024
    smem_per_cta: int = 227 * 1024
    #: shared memory the driver reserves per CTA (sm_80 and later)
    smem_reserved_per_cta: int = 1024
    #: registers are allocated per warp in units of this many
    reg_granularity: int = 256
    smem_granularity: int = 128
    #: register file partitions (a warp's registers come from one)
    sub_partitions: int = 4
    max_regs_per_thread: int = 255


#: sm_80 (A100) and sm_90 (H100/H200); sm_86/89 have 1536 threads and 16/24 CTAs per SM.
ARCH_LIMITS = {
    80: ArchLimits(smem_per_sm=164 * 1024, smem_per_cta=163 * 1024),
    86: ArchLimits(threads_per_sm=1536, ctas_per_sm=16, smem_per_sm=100 * 1024, smem_per_cta=99 * 1024),
    89: ArchLimits(threads_per_sm=1536, ctas_per_sm=24, smem_per_sm=100 * 1024, smem_per_cta=99 * 1024),
    90: ArchLimits(),
}


def limits(arch: int) -> ArchLimits:
    """The limits of ``sm_<arch>`` (the nearest lower known architecture for an unknown one)."""
    known = [a for a in sorted(ARCH_LIMITS) if a <= arch]
    return ARCH_LIMITS[known[-1] if known else 80]


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def ctas_per_sm(registers: int, num_warps: int, shared_bytes: int, arch: int = 90) -> int:
    """Resident CTAs per SM of a kernel (registers per thread, warps per CTA, shared memory per CTA
    without the driver's reserve), exactly as CUDA's occupancy calculator computes it: the least of
    the CTA slot, thread (warp), register and shared-memory limits. Registers are allocated per warp
    (``registers * 32`` rounded up to 256) from each of the 4 register-file partitions, so a
    partition holds ``16384 // regs_per_warp`` warps; shared memory per CTA is the kernel's plus 1 KiB
    reserved, rounded up to 128 bytes. 0: the CTA does not fit."""
    lim = limits(arch)
    warps_per_sm = lim.threads_per_sm // 32
    by_warps = warps_per_sm // num_warps
    regs_per_warp = _round_up(max(1, registers) * 32, lim.reg_granularity)
    if registers > lim.max_regs_per_thread or regs_per_warp * _round_up(num_warps, lim.sub_partitions) > \
            lim.regs_per_cta:
        return 0
    by_regs = (lim.regs_per_sm // lim.sub_partitions // regs_per_warp) * lim.sub_partitions // num_warps
    smem = _round_up(shared_bytes + lim.smem_reserved_per_cta, lim.smem_granularity)
    if shared_bytes > lim.smem_per_cta:
        return 0
    by_smem = lim.smem_per_sm // smem
    return max(0, min(lim.ctas_per_sm, by_warps, by_regs, by_smem))


@dataclass(frozen=True)
class Residency:
    """The residency model of one launch (see :func:`model`)."""

    ctas_per_sm: int
    waves: int
    wave_efficiency: float
    x_bytes_in_flight_per_cta: int
    x_bytes_in_flight_per_sm: float


def model(programs: int, sms: int, ctas: int, in_flight_per_cta: int) -> Residency:
    """Waves (``ceil(programs / (sms * ctas))``), wave efficiency (programs ÷ (waves × capacity)) and
    x bytes in flight per SM (CTAs actually resident, ``min(programs, capacity)``, times the bytes
    one CTA has outstanding, ÷ SMs)."""
    capacity = max(1, sms * ctas)
    waves = max(1, -(-programs // capacity))
    return Residency(ctas, waves, programs / (waves * capacity), in_flight_per_cta,
                     min(programs, capacity) * in_flight_per_cta / max(1, sms))


#: What each streaming kernel compiles to when no compiler is at hand: (registers, shared bytes
#: including the static part) per (kernel, warps). sm_90, triton 3.8.0, about the highest of
#: fp16/bf16/fp32 on the ResNet-50 shapes (docs/streaming_report.md); re-measure after kernel changes.
FALLBACK_RESOURCES: dict[tuple[str, int], tuple[int, int]] = {
    ("channel_pool_mlp", 4): (104, 16384),
    ("channel_map", 4): (72, 3072),
    ("spatial_pool", 4): (128, 5120),
    ("spatial_pool", 8): (112, 5120),
    ("gate_conv", 4): (128, 1280),
    ("gate_conv", 8): (96, 1280),
    ("gate", 4): (96, 1280),
}


_STATE = threading.local()


def _assumed() -> dict[str, Any] | None:
    return getattr(_STATE, "assumed", None)


@contextlib.contextmanager
def assume(sms: int, arch: int = 90, resources: dict[tuple, tuple[int, int]] | None = None
           ) -> Iterator[None]:
    """Plan (in this thread) for a GPU with ``sms`` SMs of ``sm_<arch>``, with the compiled
    ``resources`` ((registers, shared bytes) per (kernel, warps), and per (kernel, warps, variant)
    for the variants compiled; the fallback table otherwise)."""
    saved = _assumed()
    _STATE.assumed = {"sms": sms, "arch": arch, "resources": dict(resources or {})}
    try:
        yield
    finally:
        _STATE.assumed = saved


_DEVICE: dict[int, tuple[int, int]] = {}


def _device_sms_arch(device: torch.device) -> tuple[int, int]:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _DEVICE:
        props = torch.cuda.get_device_properties(idx)
        _DEVICE[idx] = (props.multi_processor_count, props.major * 10 + props.minor)
    return _DEVICE[idx]


@contextlib.contextmanager
def force(kernel: str, choice: tuple[int, ...]) -> Iterator[None]:
    """Inside an :func:`assume`: ``kernel``'s plans take the tile ``(block_c, block_p)`` and split length
    ``per_split`` of ``choice`` (a candidate its planner asked about), and its ``UNROLL`` where the
    choice has a fourth entry (else the launcher's rule), so that its variant can be compiled and
    measured (:func:`cbam_triton.tools.streaming.plan_compiled`)."""
    assumed = _assumed()
    assert assumed is not None, "force() plans for an assumed GPU"
    saved = assumed.get("force")
    assumed["force"] = (kernel, choice)
    try:
        yield
    finally:
        assumed["force"] = saved


def forced(kernel: str) -> tuple[int, ...] | None:
    """The ``(block_c, block_p, per_split[, unroll])`` :func:`force` set for ``kernel``, else None."""
    assumed = _assumed()
    got = assumed.get("force") if assumed is not None else None
    return got[1] if got is not None and got[0] == kernel else None


def asked() -> dict[tuple, tuple[int, ...]]:
    """Inside an :func:`assume`: the variants the planners asked about whose compiled figures were not
    given, each with a ``(block_c, block_p, per_split, unroll)`` that plans it."""
    assumed = _assumed()
    return assumed.setdefault("asked", {}) if assumed is not None else {}


def resources(kernel: str, num_warps: int, variant: Any = None, arch: int | None = None) -> tuple[int, int]:
    """(registers, shared bytes) the planner assumes for ``kernel`` at ``num_warps``, in order: the
    compiled figures of the exact ``variant`` (:attr:`~cbam_triton.launchers._common.FusedPlan.variant`)
    where :func:`assume` has them; the kernel's figure where :func:`assume` has one; on sm_90 the
    shipped table of compiled variants (:mod:`cbam_triton.launchers.variants_sm90`); else
    :data:`FALLBACK_RESOURCES`. ``arch``: the architecture planned for (default: :func:`assume`'s; a
    GPU's own planning passes its device's, :func:`capacity`)."""
    assumed = _assumed()
    got = assumed["resources"] if assumed is not None else {}
    if variant is not None and (kernel, num_warps, variant) in got:
        return got[(kernel, num_warps, variant)]
    if (kernel, num_warps) in got:
        return got[(kernel, num_warps)]
    if arch is None and assumed is not None:
        arch = assumed["arch"]
    if variant is not None and arch == 90:
        from cbam_triton.launchers.variants_sm90 import VARIANT_RESOURCES

        if (kernel, num_warps, variant) in VARIANT_RESOURCES:
            return VARIANT_RESOURCES[(kernel, num_warps, variant)]
    got = FALLBACK_RESOURCES.get((kernel, num_warps))
    if got is None:  # an unknown warp count: the 4-warp figure (fewer registers with more warps)
        got = FALLBACK_RESOURCES.get((kernel, 4), (128, 5120))
    return got


def planning_target(device: torch.device) -> tuple[int, int] | None:
    """(SMs, arch) the plan is for: :func:`assume`'s, x's GPU, or None (the interpreter)."""
    assumed = _assumed()
    if assumed is not None:
        return assumed["sms"], assumed["arch"]
    if device.type == "cuda":
        return _device_sms_arch(device)
    return None


def capacity(kernel: str, num_warps: int, device: torch.device, variant: Any = None,
             choice: tuple[int, ...] | None = None) -> int | None:
    """Resident CTAs of ``kernel`` (its ``variant``: :func:`resources`) on the whole target GPU (SMs ×
    CTAs per SM), or None where the plan is not for a GPU (the interpreter: the launchers' small
    program count). ``choice``: the ``(block_c, block_p, per_split, unroll)`` of the candidate, recorded
    (:func:`asked`) where the variant's compiled figures are not known."""
    if os.environ.get("CBAM_TRITON_TARGET_PROGRAMS"):
        return None  # a fixed program count was asked for (tests, experiments)
    target = planning_target(device)
    if target is None:
        return None
    sms, arch = target
    assumed = _assumed()
    if assumed is not None and variant is not None and choice is not None \
            and (kernel, num_warps, variant) not in assumed["resources"]:
        asked().setdefault((kernel, num_warps, variant), choice)
    regs, smem = resources(kernel, num_warps, variant, arch)
    return sms * max(1, ctas_per_sm(regs, num_warps, smem, arch))


#: grids of fewer waves than this are sized to whole waves (wave efficiency >= MIN_WAVE_EFFICIENCY)
MIN_WAVE_EFFICIENCY = 0.9


def wave_efficiency(programs: int, cap: int) -> float:
    waves = max(1, -(-programs // cap))
    return programs / (waves * cap)
