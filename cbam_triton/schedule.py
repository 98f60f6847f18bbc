"""Schedules of the fused forward: how the batch is cut into chunks between the three stages.

* ``"stream"``: each stage runs over the whole batch; x is read from DRAM by all three stages and
  the output written once: about 4*|x| of DRAM traffic.
* ``"l2"``: the three stages run chunk by chunk, each chunk small enough to stay in L2 between
  them (stage 1 loads with ``evict_last``; stage 3 loads with ``evict_first`` and stores with
  ``.cs``): about 2*|x| of DRAM traffic, the physical floor (read x once, write the output once).
* ``"auto"`` (default): ``"l2"`` on a CUDA device when one sample fits the L2 budget, else
  ``"stream"``.

The L2 budget is :data:`L2_FRACTION` of the device's L2 (``torch.cuda.get_device_properties``),
or ``CBAM_TRITON_L2_BYTES`` (bytes) from the environment, or an explicit ``l2_budget_bytes``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

SCHEDULES = ("auto", "l2", "stream")
#: fraction of the L2 cache a chunk of x may fill: the rest holds the small maps, the weights and
#: the output lines in flight (H100: 50 MiB L2 in two partitions -> 25 MiB chunks)
L2_FRACTION = 0.5
#: environment override of the budget, in bytes
L2_ENV = "CBAM_TRITON_L2_BYTES"

_L2_SIZE: dict[int, int] = {}


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule: ``kind`` (``"l2"`` or ``"stream"``), ``chunk`` samples per chunk
    (the last chunk may be smaller), ``num_chunks``, the budget it used and why it was chosen."""

    kind: str
    chunk: int
    num_chunks: int
    budget_bytes: int | None
    reason: str

    @property
    def hints(self) -> bool:
        """Whether the kernels carry the L2 eviction hints (the L2-resident schedule)."""
        return self.kind == "l2"

    def chunks(self, n: int) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` sample ranges covering ``range(n)``."""
        return [(s, min(s + self.chunk, n)) for s in range(0, n, max(1, self.chunk))]


def validate_schedule(schedule: object) -> str:
    """``schedule`` if it is one of :data:`SCHEDULES`, else ``ValueError``/``TypeError``."""
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be one of {SCHEDULES}, got {type(schedule).__name__}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return schedule


def validate_budget(l2_budget_bytes: object) -> int | None:
    """A positive int or None."""
    if l2_budget_bytes is None:
        return None
    if isinstance(l2_budget_bytes, bool) or not isinstance(l2_budget_bytes, int):
        raise TypeError(f"l2_budget_bytes must be a positive int or None, got {type(l2_budget_bytes).__name__}")
    if l2_budget_bytes <= 0:
        raise ValueError(f"l2_budget_bytes must be positive, got {l2_budget_bytes}")
    return l2_budget_bytes


def device_l2_bytes(device: torch.device) -> int | None:
    """The L2 cache size of a CUDA device (cached), None for other devices."""
    if device.type != "cuda":
        return None
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _L2_SIZE:
        _L2_SIZE[idx] = int(getattr(torch.cuda.get_device_properties(idx), "L2_cache_size", 0)) or 0
    return _L2_SIZE[idx] or None


def l2_budget(device: torch.device, l2_budget_bytes: int | None = None,
              l2_cache_bytes: int | None = None) -> int | None:
    """Bytes of x a chunk may hold: the explicit value, else ``$CBAM_TRITON_L2_BYTES``, else
    :data:`L2_FRACTION` of the L2 (``l2_cache_bytes``, default: the device's). None: unknown."""
    if l2_budget_bytes is not None:
        return validate_budget(l2_budget_bytes)
    env = os.environ.get(L2_ENV)
    if env:
        try:
            return validate_budget(int(env))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{L2_ENV} must be a positive number of bytes, got {env!r}") from exc
    size = l2_cache_bytes if l2_cache_bytes is not None else device_l2_bytes(device)
    return int(size * L2_FRACTION) if size else None


def plan_schedule(n: int, sample_bytes: int, requested: str = "auto", budget: int | None = None,
                  fusable: bool = True, device_type: str = "cuda") -> Schedule:
    """Resolve a requested schedule for a batch of ``n`` samples of ``sample_bytes`` each.

    ``"l2"`` chunks the batch into ``ceil(n / floor(budget / sample_bytes))`` equal chunks (at
    least one sample each; one chunk when the budget is unknown). ``"auto"`` picks ``"l2"`` only
    where it pays: a CUDA device, a known budget, one sample within it, and a fusable
    configuration (the per-chunk launches then are the three fused kernels); else ``"stream"``.
    """
    validate_schedule(requested)
    if requested == "stream":
        return Schedule("stream", max(n, 1), 1, budget, "requested")
    if requested == "auto":
        why = None
        if device_type != "cuda":
            why = f"{device_type} device has no GPU L2 to keep x in"
        elif budget is None:
            why = "L2 size unknown"
        elif sample_bytes > budget:
            why = f"one sample ({sample_bytes} B) exceeds the L2 budget ({budget} B)"
        elif not fusable:
            why = "configuration not fusable (small parts run in PyTorch between the stages)"
        if why is not None:
            return Schedule("stream", max(n, 1), 1, budget, f"auto: {why}")
    if budget is None:
        return Schedule("l2", max(n, 1), 1, None, f"{requested}: L2 size unknown, one chunk")
    per_chunk = max(1, budget // max(1, sample_bytes))
    num_chunks = max(1, -(-n // per_chunk))
    chunk = max(1, -(-n // num_chunks))
    return Schedule("l2", chunk, -(-n // chunk) if n else 1, budget,
                    f"{requested}: {per_chunk} sample(s) of {sample_bytes} B fit {budget} B")
