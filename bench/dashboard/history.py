"""History points: one per (date, commit, machine, case, provider), from the runs and the history file.

Every committed run contributes its rows; ``history.jsonl`` records add measurements made outside a
full run. A record names its commit (``sha`` or ``git_sha``), ``date`` and ``machine`` (or
``device_name``), optionally the case (``id`` or ``case``) and ``provider``, and its numbers either as
fields (``"median_ms": 0.3``), under ``"metrics"`` / ``"values"``, or as ``"metric"`` + ``"value"``.
"""

from __future__ import annotations

from typing import Any

from bench.dashboard.rows import is_number

#: the numbers the history keeps (those the dashboard's metric filter offers)
METRICS = ("median_ms", "speedup_vs_eager", "speedup_vs_compile", "traffic_x", "dram_model_x", "ncu_dram_x",
           "floor_gbps", "frac_copy_bw", "compile_s", "peak_mem_bytes", "alloc_bytes", "cbam_traffic_share",
           "cbam_latency_share", "cbam_vs_floor", "pass_rate", "geomean_speedup")


def record_point(rec: dict[str, Any]) -> dict[str, Any] | None:
    """A history point from one history.jsonl record (None: no number in it)."""
    values: dict[str, float] = {}
    for source in (rec, rec.get("metrics"), rec.get("values")):
        if isinstance(source, dict):
            values.update({k: v for k, v in source.items() if k in METRICS and is_number(v)})
    if isinstance(rec.get("metric"), str) and is_number(rec.get("value")):
        values[rec["metric"]] = rec["value"]
    if not values:
        return None
    return {"date": str(rec.get("date", "")), "sha": str(rec.get("sha") or rec.get("git_sha") or ""),
            "machine": str(rec.get("machine") or rec.get("device_name") or rec.get("device") or "unknown"),
            "id": str(rec.get("id") or rec.get("case") or rec.get("study") or "(summary)"),
            "provider": str(rec.get("provider") or "(all)"), "values": values, "source": "history.jsonl"}


def history_points(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points of the history file's records (records without a number are left out)."""
    return [p for p in (record_point(r) for r in records) if p is not None]
