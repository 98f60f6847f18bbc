"""A command run with a time budget, from the standard library: its own process group (compile workers,
ncu's target and pytest's workers end with it), an optional SIGINT shortly before the budget ends (pytest
then still writes what ran), then SIGTERM and SIGKILL to the whole group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Finished:
    """How a budgeted command ended: ``status`` ok / failed / timeout / error (could not start)."""

    status: str
    rc: int | None
    elapsed_s: float
    note: str = ""


def _ended(proc: subprocess.Popen, seconds: float, sig: int | None = None) -> bool:
    """Whether ``proc`` ends within ``seconds``, after ``sig`` to its whole process group."""
    try:
        if sig:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=max(0.0, seconds))
        return True
    except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
        return proc.poll() is not None


def run_budgeted(cmd: list[str], log: str, budget_s: float, *, cwd: str | None = None,
                 env: dict[str, str] | None = None, interrupt_before_s: float = 0.0,
                 on_interrupt: Callable[[], object] | None = None) -> Finished:
    """Run ``cmd`` (stdout and stderr -> ``log``) for at most ``budget_s`` seconds."""
    t0, cut = time.monotonic(), ""
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                    start_new_session=True)
    except OSError as exc:
        return Finished("error", None, 0.0, f"could not start: {exc}")
    if not _ended(proc, budget_s - interrupt_before_s):
        cut = f"cut at its {budget_s:.0f} s budget" + (" (SIGINT first)" if interrupt_before_s else "")
        if interrupt_before_s:
            if on_interrupt is not None:
                on_interrupt()
            proc.send_signal(signal.SIGINT)
        if not (interrupt_before_s and _ended(proc, interrupt_before_s)):
            _ended(proc, 3.0, signal.SIGTERM) or _ended(proc, 60.0, signal.SIGKILL)  # SIGKILL only if still running
    _ended(proc, 0.0, signal.SIGKILL)  # what is left of the group
    elapsed, rc = time.monotonic() - t0, proc.returncode
    status, note = ("timeout", cut) if cut else ("ok", "") if rc == 0 else ("failed", f"exit status {rc}")
    return Finished(status, rc, elapsed, note)
