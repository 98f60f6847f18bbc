"""What each program of a launch does, observed in Triton's interpreter: its loads of x (the
streamed tensor) and its other loads (weights, split partials, maps, gates), counted and in bytes.

On a GPU a program's loads that are not x are mostly dependent round trips to L2 (~0.2-0.5 us
each); one program that issues hundreds of them is a serial tail no matter how few bytes the
launch moves in total. This module measures it where no GPU is needed::

    with program_work() as work:
        module(x)                       # any cbam_triton forward, TRITON_INTERPRET=1
    for row in work.worst():            # one row per launch: its busiest program
        print(row)

x is the launch's first tensor argument (``x_ptr`` of every streaming kernel) and any tensor in its
``streamed`` (the fused block tail's residual); a load counts as a load of x when all its active
lanes fall in the storage of one of them. A load with no active lane counts as
nothing (it moves no data). Atomics are counted apart (one round trip each).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from cbam_triton.launchers._common import LAUNCH_HOOKS, Launch


@dataclass
class ProgramWork:
    """The loads of one program."""

    x_loads: int = 0
    x_bytes: int = 0
    other_loads: int = 0
    other_bytes: int = 0
    atomics: int = 0

    @property
    def excess_loads(self) -> int:
        """Loads that are not x beyond the program's own loads of x."""
        return max(0, self.other_loads - self.x_loads)


@dataclass
class LaunchWork:
    """Every program of one launch: ``programs[(pid0, pid1, pid2)]``."""

    name: str
    grid: tuple[int, ...]
    programs: dict[tuple[int, int, int], ProgramWork] = field(default_factory=dict)

    def worst(self) -> tuple[tuple[int, int, int], ProgramWork]:
        """The program with the most non-x bytes (ties: the most non-x loads)."""
        if not self.programs:
            return (0, 0, 0), ProgramWork()
        pid = max(self.programs, key=lambda k: (self.programs[k].other_bytes, self.programs[k].other_loads))
        return pid, self.programs[pid]

    def max_other_loads(self) -> int:
        return max((w.other_loads for w in self.programs.values()), default=0)

    def max_excess_loads(self) -> int:
        return max((w.excess_loads for w in self.programs.values()), default=0)

    def max_other_bytes(self) -> int:
        return max((w.other_bytes for w in self.programs.values()), default=0)


@dataclass
class WorkLog:
    """The launches recorded by :func:`program_work`, in order."""

    launches: list[LaunchWork] = field(default_factory=list)

    def worst(self) -> list[dict[str, object]]:
        """Per launch: its name, grid and busiest program's work (a row per launch)."""
        rows = []
        for lw in self.launches:
            pid, w = lw.worst()
            rows.append({"name": lw.name, "grid": lw.grid, "program": pid, "x_loads": w.x_loads,
                         "x_bytes": w.x_bytes, "other_loads": w.other_loads, "other_bytes": w.other_bytes,
                         "atomics": w.atomics, "max_other_loads": lw.max_other_loads(),
                         "max_excess_loads": lw.max_excess_loads(), "max_other_bytes": lw.max_other_bytes()})
        return rows


def _interpreter_builder():  # noqa: ANN202 (triton internals)
    try:
        from triton.runtime import interpreter
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("program_work needs Triton's interpreter (TRITON_INTERPRET=1)") from e
    return interpreter, interpreter.interpreter_builder


@contextlib.contextmanager
def program_work() -> Iterator[WorkLog]:
    """Record, for every cbam_triton launch inside the block, each program's loads (interpreter only)."""
    import numpy as np

    interpreter, builder = _interpreter_builder()
    log = WorkLog()
    current: dict[str, object] = {}

    def on_launch(launch: Launch) -> None:
        x = launch.args[0] if launch.args and isinstance(launch.args[0], torch.Tensor) else None
        ranges = [(t.untyped_storage().data_ptr(), t.untyped_storage().data_ptr() + t.untyped_storage().nbytes())
                  for t in (x, *launch.streamed) if isinstance(t, torch.Tensor)]
        lw = LaunchWork(launch.name, tuple(launch.grid))
        log.launches.append(lw)
        current.update(launch=lw, ranges=ranges or [(0, 0)])

    orig_load = builder.create_masked_load
    orig_rmw = builder.create_atomic_rmw
    orig_cas = builder.create_atomic_cas

    def program() -> ProgramWork | None:
        lw = current.get("launch")
        if lw is None:
            return None
        pid = tuple(int(v) for v in builder.grid_idx)
        return lw.programs.setdefault(pid, ProgramWork())  # type: ignore[union-attr]

    def load(ptrs, mask, other, cache_modifier, eviction_policy, is_volatile):  # noqa: ANN001, ANN202
        ret = orig_load(ptrs, mask, other, cache_modifier, eviction_policy, is_volatile)
        w = program()
        if w is not None:
            addrs = np.asarray(ptrs.data).reshape(-1)
            active = addrs[np.broadcast_to(np.asarray(mask.data), np.asarray(ptrs.data).shape).reshape(-1)]
            if active.size:
                nbytes = int(active.size) * ret.data.dtype.itemsize
                if any(((active >= lo) & (active < hi)).all() for lo, hi in current["ranges"]):
                    w.x_loads += 1
                    w.x_bytes += nbytes
                else:
                    w.other_loads += 1
                    w.other_bytes += nbytes
        return ret

    def rmw(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        w = program()
        if w is not None:
            w.atomics += 1
        return orig_rmw(*args, **kwargs)

    def cas(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        w = program()
        if w is not None:
            w.atomics += 1
        return orig_cas(*args, **kwargs)

    builder.create_masked_load = load
    builder.create_atomic_rmw = rmw
    builder.create_atomic_cas = cas
    LAUNCH_HOOKS.append(on_launch)
    try:
        yield log
    finally:
        LAUNCH_HOOKS.remove(on_launch)
        del builder.create_masked_load, builder.create_atomic_rmw, builder.create_atomic_cas
