"""What one compute-sanitizer run said: clean, errors found, the tool unavailable, or cut at its budget."""

from __future__ import annotations

import re


def classify_sanitizer(output: str, rc: int | None, timed_out: bool) -> tuple[str, int | None, str]:
    """(status, errors, note) of one compute-sanitizer run: ``clean``, ``errors`` (it found some),
    ``driver-failed`` (0 errors but the driver failed), ``unavailable`` (the tool could not run:
    no ERROR SUMMARY, or its own ``Error:`` line) or ``timeout``."""
    found = re.findall(r"ERROR SUMMARY:\s*(\d+)\s+error", output)
    errors, tool_error = (int(found[-1]) if found else None), re.search(r"^=+\s*Error:.*$", output, re.M)
    if timed_out:
        return "timeout", errors, "cut at its budget"
    if errors:
        first = next((ln.strip() for ln in output.splitlines() if "=========" in ln and "SUMMARY" not in ln
                      and re.search(r"(Invalid|Race|hazard|Barrier|error)", ln, re.I)), "")
        return "errors", errors, first[:300]
    if errors is None or (rc not in (0, None) and tool_error):
        why = tool_error.group(0).strip() if tool_error else (output.strip().splitlines() or ["no output"])[-1]
        return "unavailable", None, f"compute-sanitizer could not run (exit status {rc}): {why[:300]}"
    return ("clean", 0, "") if rc == 0 else (
        "driver-failed", 0, f"0 errors, but the driver failed under the tool (exit status {rc})")
