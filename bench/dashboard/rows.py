"""Result rows as the dashboard reads them: every row with a ``status``, a ``timing`` and an error text.

A row's ``status`` is ``pass`` | ``fail_accuracy`` | ``fail_to_run`` | ``skipped`` and its ``timing``
``timed`` | ``verified`` (checked, e.g. in Triton's interpreter, never timed) | ``not_measured``. Rows
written before these fields existed carry the older statuses; they are mapped here (``LEGACY``), and a
row with a time but no ``timing`` counts as timed.
"""

from __future__ import annotations

import math
from typing import Any

STATUSES = ("pass", "fail_accuracy", "fail_to_run", "skipped", "modelled")
TIMINGS = ("timed", "verified", "not_measured")
#: older row statuses -> (status, timing)
LEGACY = {
    "ok": ("pass", "timed"),
    "verified": ("pass", "verified"),
    "modelled": ("modelled", "not_measured"),  # a traffic model only (too large for the CPU interpreter)
    "mismatch": ("fail_accuracy", "not_measured"),
    "error": ("fail_to_run", "not_measured"),
    "skipped": ("skipped", "not_measured"),
}
#: the fields of a row that describe the case (the rest are metrics or text)
CASE_FIELDS = ("id", "kind", "shape_name", "batch", "channels", "height", "width", "reduction_ratio", "dtype",
               "layout", "mode", "provider", "x_bytes", "schedule")
#: text fields shown in the drill-down
TEXT_FIELDS = ("note", "error", "reason")


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def status_timing(row: dict[str, Any]) -> tuple[str, str]:
    """(status, timing) of a row, old or new."""
    status = row.get("status")
    timed = is_number(row.get("median_ms"))
    if status in LEGACY and status not in STATUSES:
        status, timing = LEGACY[status]
        return status, row.get("timing") if row.get("timing") in TIMINGS else timing
    if status not in STATUSES:
        status = "fail_to_run"
    timing = row.get("timing")
    if timing not in TIMINGS:
        timing = "timed" if timed else "not_measured"
    return status, timing


def error_text(row: dict[str, Any]) -> str:
    """The row's error or reason (failures and skips), else its note."""
    parts = [str(row[k]) for k in ("error", "reason") if row.get(k)]
    return " ".join(parts) or str(row.get("note") or "")


def normalize_rows(rows: list[dict[str, Any]], run: int, device: str) -> list[dict[str, Any]]:
    """The rows of one run with ``run``, ``device``, ``kind`` (block | network), ``status``, ``timing``,
    ``error`` and a derived ``speedup_vs_compile`` (compile's median over the row's, same case) where the
    row has none; metrics of rows that are not timed are dropped from the timing fields (never zero)."""
    out = []
    medians = {(r.get("id"), r.get("provider")): r.get("median_ms") for r in rows if is_number(r.get("median_ms"))}
    for r in rows:
        status, timing = status_timing(r)
        row = {k: v for k, v in r.items() if is_number(v) or isinstance(v, str) or v is None}
        row.update(run=run, device=device, kind="network" if r.get("kind") == "model" else "block",
                   status=status, timing=timing, error=error_text(r), legacy_status=r.get("status"))
        if timing != "timed":
            for key in ("median_ms", "p20_ms", "p80_ms", "speedup_vs_eager", "speedup_vs_compile"):
                row.pop(key, None)
        elif not is_number(row.get("speedup_vs_compile")):
            base = medians.get((r.get("id"), "compile"))
            if base and is_number(row.get("median_ms")) and row["median_ms"] > 0:
                row["speedup_vs_compile"] = base / row["median_ms"]
        out.append(row)
    return out
