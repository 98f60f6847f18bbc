"""The state of a result row: did the provider produce a correct output, and was it timed.

Every row of every benchmark document (``results.json`` of ``python -m bench``, ``study.json`` of
``python -m bench study``, the records of ``history.jsonl``) has:

* ``status``: ``pass`` (the output passed the correctness check), ``fail_accuracy`` (it did not; the
  row's ``note``/``error`` says by how much), ``fail_to_run`` (building or running raised, or a
  compiled provider recompiled while being timed; the exception's first line) or ``skipped`` (cannot
  run here; the one-line reason);
* ``timing``: ``timed`` (median/p20/p80 measured), ``verified`` (run and checked in Triton's CPU
  interpreter, never timed) or ``not_measured``.

Only ``pass`` rows are timed or verified, and only ``pass``/``timed`` rows enter speedups and
summaries. Result documents of schema 1 had one field, ``status`` in ok / verified / mismatch /
error / skipped; :func:`row_state` reads both.
"""

from __future__ import annotations

from typing import Any

#: 2: rows carry ``status`` (pass / fail_accuracy / fail_to_run / skipped) and ``timing`` (timed /
#: verified / not_measured); 1: ``status`` ok / verified / mismatch / error / skipped (still read)
#: ``modelled``: a Triton network row too large for the CPU interpreter, its traffic from the kernels' model
#: (launches planned, not run; the output is not checked there, never timed)
STATUSES = ("pass", "fail_accuracy", "fail_to_run", "skipped", "modelled")
TIMINGS = ("timed", "verified", "not_measured")
#: schema 1's statuses and what they are in schema 2's terms
LEGACY_STATUSES = {"ok": ("pass", "timed"), "verified": ("pass", "verified"),
                   "mismatch": ("fail_accuracy", "not_measured"), "error": ("fail_to_run", "not_measured"),
                   "skipped": ("skipped", "not_measured"), "modelled": ("modelled", "not_measured")}


def row_state(row: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(status, timing)`` of a result row in schema 2's terms (schema 1 rows translated)."""
    status = row.get("status")
    if status in LEGACY_STATUSES and "timing" not in row:
        return LEGACY_STATUSES[status]
    return status, row.get("timing")


def is_timed(row: dict[str, Any]) -> bool:
    """A passing row with a timing (the only rows that enter speedups and summaries)."""
    return row_state(row) == ("pass", "timed")


def is_passing(row: dict[str, Any]) -> bool:
    """A row whose output passed the check (timed or verified)."""
    return row_state(row)[0] == "pass"


def is_flagged(row: dict[str, Any]) -> bool:
    """A row whose provider failed: wrong output or no output."""
    return row_state(row)[0] in ("fail_accuracy", "fail_to_run")


def validate_state(row: dict[str, Any]) -> list[str]:
    """Problems with a row's ``status``/``timing`` pair (schema 2, or schema 1's status alone): only a
    passing row may be timed or verified, and a row has ``median_ms`` exactly when it is timed."""
    status, timing = row_state(row)
    if status not in STATUSES:
        return [f".status {row.get('status')!r} not in {STATUSES}"]
    if timing not in TIMINGS:
        return [f".timing {row.get('timing')!r} not in {TIMINGS}"]
    problems = []
    if status != "pass" and timing != "not_measured":
        problems.append(f" has status {status} but timing {timing}")
    timed = isinstance(row.get("median_ms"), (int, float))
    if timing == "timed" and not timed:
        problems.append(f" has status {row.get('status')} (timed) but no median_ms")
    if timing != "timed" and row.get("median_ms") is not None:
        problems.append(f" has status {row.get('status')} ({timing}) but a timing")
    return problems
