"""Measurements: latency, memory, traffic models, launch counts, environment facts."""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


# ----------------------------------------------------------------------------------------- latency
def time_gpu(fn: Callable[[], Any], rep_ms: int = 100) -> dict[str, float]:
    """Median, p20 and p80 in ms with ``triton.testing.do_bench`` (L2 flushed between reps)."""
    import triton.testing

    med, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return {"median_ms": med, "p20_ms": p20, "p80_ms": p80}


def time_cpu(fn: Callable[[], Any], min_reps: int = 5, budget_s: float = 1.0) -> dict[str, float]:
    """Synchronising wall-clock timer: one warm-up call, then >= ``min_reps`` timed calls."""
    fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_reps or (time.perf_counter() - start < budget_s and len(samples) < 200):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(samples, n=10) if len(samples) >= 2 else samples * 9
    return {"median_ms": statistics.median(samples), "p20_ms": q[1], "p80_ms": q[7], "reps": len(samples)}


def sample_stats(samples: list[float]) -> dict[str, Any]:
    """Median, p20 and p80 of ``samples`` (ms), their count, and the samples themselves."""
    q = statistics.quantiles(samples, n=10, method="inclusive") if len(samples) >= 2 else samples * 9
    return {"median_ms": statistics.median(samples), "p20_ms": q[1], "p80_ms": q[7], "reps": len(samples),
            "samples_ms": [round(v, 6) for v in samples]}


#: bytes written between GPU repetitions to flush L2 (larger than any L2 so far)
L2_FLUSH_BYTES = 256 << 20


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int = 2, min_reps: int = 5,
                     max_reps: int = 50, budget_s: float = 2.0,
                     before: Callable[[str], None] | None = None,
                     after: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Samples (ms) of every callable, interleaved: round r calls each once (A B C, then C B A, ...),
    so that drifting clock speed or a neighbour's load hits every provider alike. ``warmup`` rounds
    first, not recorded. At least ``min_reps`` rounds, then more while ``budget_s`` lasts (at most
    ``max_reps``). On a GPU each call is timed with CUDA events after L2 is flushed (a write of
    :data:`L2_FLUSH_BYTES`); on a CPU with a synchronous wall clock. ``before``/``after(name)`` run
    around every timed call (outside the timed span; e.g. a recompilation check)."""
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    cuda = device.type == "cuda"
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if cuda else None
    for _ in range(warmup):
        for n in names:
            fns[n]()
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    r = 0
    while r < min_reps or (r < max_reps and time.perf_counter() - start < budget_s):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            if before:
                before(n)
            if cuda:
                flush.zero_()
                t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t0.record()
                fns[n]()
                t1.record()
                t1.synchronize()
                samples[n].append(t0.elapsed_time(t1))
            else:
                t0 = time.perf_counter()
                fns[n]()
                samples[n].append((time.perf_counter() - t0) * 1e3)
            if after:
                after(n)
        r += 1
    return samples


def copy_bandwidth_gbps(nbytes: int, device: torch.device) -> float:
    """Device-to-device copy bandwidth (read + write) for a buffer of ``nbytes``, GB/s."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = time_gpu(lambda: dst.copy_(src))["median_ms"]
    return 2 * nbytes / (t * 1e-3) / 1e9


# ------------------------------------------------------------------------------- traffic / allocs
@dataclass
class OpStats:
    """What a TorchDispatchMode saw: aten ops (= kernel launches), bytes moved, allocations."""

    ops: list[str] = field(default_factory=list)
    bytes_read: int = 0
    bytes_written: int = 0
    alloc_count: int = 0
    alloc_bytes: int = 0
    triton_launches: int = 0
    #: of the bytes read, what the L2-resident schedule expects L2 to serve (Launch.l2_bytes)
    l2_bytes: int = 0

    @property
    def launches(self) -> int:
        return len(self.ops) + self.triton_launches

    @property
    def bytes_total(self) -> int:
        return self.bytes_read + self.bytes_written


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class TrafficCounter(TorchDispatchMode):
    """Counts the traffic of every non-view aten op: each tensor input read once, each output
    written once (views and metadata ops move nothing); new outputs of out-of-place ops are
    allocations. A model, not a measurement: caches and fusion inside one op are ignored."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = OpStats()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        from cbam_triton.ops import IMPLEMENTATIONS

        impl = IMPLEMENTATIONS.get(func)
        if impl is not None:  # look inside cbam_triton's custom ops (their launches are counted by hooks)
            with self:
                return impl(*args, **kwargs)
        out = func(*args, **kwargs)
        if getattr(func, "is_view", False) or func.__name__ in ("detach", "alias", "lift_fresh"):
            return out
        flat_in = [a for a in _flatten((args, kwargs)) if isinstance(a, torch.Tensor)]
        flat_out = [o for o in _flatten(out) if isinstance(o, torch.Tensor)]
        mutable = func._schema.is_mutable
        if func.__name__.startswith(("empty", "new_empty")):  # allocation only: no launch, no traffic
            self.stats.alloc_count += len(flat_out)
            self.stats.alloc_bytes += sum(_tensor_bytes(t) for t in flat_out)
            return out
        self.stats.ops.append(str(func))
        self.stats.bytes_read += sum(_tensor_bytes(t) for t in flat_in)
        self.stats.bytes_written += sum(_tensor_bytes(t) for t in flat_out)
        if not mutable:
            self.stats.alloc_count += len(flat_out)
            self.stats.alloc_bytes += sum(_tensor_bytes(t) for t in flat_out)
        return out


def _flatten(obj: Any) -> Iterator[Any]:
    if isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flatten(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flatten(o)
    else:
        yield obj


def count_traffic(fn: Callable[[], Any], grad: bool = False) -> OpStats:
    """Run ``fn`` once under :class:`TrafficCounter`; cbam_triton's Triton launches (invisible to the
    mode) are added from their own read/write model. ``grad``: autograd on (forward + backward; the
    backward's aten ops are counted too)."""
    import cbam_triton

    counter = TrafficCounter()
    with (contextlib.nullcontext() if grad else torch.no_grad()), cbam_triton.record_launches() as launches, \
            counter:
        fn()
    counter.stats.triton_launches += len(launches)
    counter.stats.bytes_read += sum(launch.bytes_read for launch in launches)
    counter.stats.bytes_written += sum(launch.bytes_written for launch in launches)
    counter.stats.l2_bytes += sum(launch.l2_bytes for launch in launches)
    return counter.stats


def saved_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the distinct storages autograd saves for backward during one call of ``fn``
    (``torch.autograd.graph.saved_tensors_hooks``; a tensor saved twice counts once)."""
    seen: dict[tuple[int, str], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), str(t.device))] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@contextlib.contextmanager
def inductor_metrics() -> Iterator[Any]:
    """Enable inductor's metrics (bytes accessed, generated kernels) quietly; caches must be off."""
    from torch._inductor import metrics

    sink = io.StringIO()
    with contextlib.redirect_stderr(sink):
        torch._logging.set_logs(inductor_metrics=True)
    metrics.reset()
    try:
        yield metrics
    finally:
        torch._logging.set_logs()


def count_gpu_kernels(fn: Callable[[], Any]) -> int:
    """CUDA kernels launched by one call of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower())


def gpu_peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated above what was allocated before the call."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


# ------------------------------------------------------------------------------------ environment
def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of ``names`` (distribution names; None where not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def machine_card(device: torch.device) -> dict[str, Any]:
    """:func:`environment` plus the CPU model, torch's thread count and memory (Linux)."""
    card = environment(device)
    card["cpu_model"] = _cpu_model()
    card["torch_threads"] = torch.get_num_threads()
    try:
        card["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        card["memory_bytes"] = None
    return card


def environment(device: torch.device) -> dict[str, Any]:
    """Machine, driver, versions, git sha and date for the JSON header."""
    import triton

    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device_type": device.type,
        "device_name": "cpu",
        "driver": None,
        "cuda": torch.version.cuda,
        "git_sha": _git_sha(),
        "triton_interpreter": os.environ.get("TRITON_INTERPRET", "0") == "1",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, sm_count=props.multi_processor_count,
                   total_memory=props.total_memory, capability=f"{props.major}.{props.minor}",
                   l2_bytes=getattr(props, "L2_cache_size", None), driver=_nvidia_driver())
    return env


def _git_sha() -> str | None:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def error_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message (at most 300 characters)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def first_run(make: Callable[[], Any], device: torch.device, row: dict[str, Any]) -> tuple[Any, Any] | None:
    """Build a provider (``make()``) and run it once: ``(built, output)``, or None with the error
    recorded in ``row`` (status "fail_to_run" with the exception's first line; the traceback on stderr
    with ``CBAM_BENCH_DEBUG``)."""
    try:
        built = make()
        out = built.fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    except Exception as exc:  # reported in the row, the run goes on
        row.update(status="fail_to_run", timing="not_measured", note=error_line(exc))
        if os.environ.get("CBAM_BENCH_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        return None
    return built, out


def tree_digest(root: str, folders: tuple[str, ...]) -> str:
    """sha256 of the paths and contents of the .py and .sh files under ``folders`` of ``root``: names the
    code of a run even where the checkout has no .git."""
    import hashlib

    h = hashlib.sha256()
    for top in folders:
        for folder, dirs, files in sorted(os.walk(os.path.join(root, top))):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for path in (os.path.join(folder, n) for n in sorted(files) if n.endswith((".py", ".sh"))):
                with open(path, "rb") as f:
                    h.update(os.path.relpath(path, root).encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def gpu_slug() -> str | None:
    """The first GPU's name as nvidia-smi reports it, made a folder name (``nvidia-h200``); None without one."""
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    name = p.stdout.strip().splitlines()[0] if p.returncode == 0 and p.stdout.strip() else ""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split()) or None


def find_tool(name: str) -> str | None:
    """An executable on PATH, then in the usual CUDA folders, or None."""
    import glob
    import shutil

    candidates = [f"/usr/local/cuda/bin/{name}", *sorted(glob.glob(f"/usr/local/cuda-*/bin/{name}"), reverse=True),
                  f"/opt/nvidia/nsight-compute/{name}"]
    return shutil.which(name) or next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)


def tool_versions(tools: dict[str, str]) -> dict[str, str | None]:
    """For each ``{tool: flag}`` (e.g. ``{"ncu": "--version"}``) found by :func:`find_tool`, the output of
    ``tool flag`` on one line (at most 300 characters); None where the tool is not found."""
    out: dict[str, str | None] = {}
    for tool, flag in tools.items():
        exe = find_tool(tool)
        try:
            p = subprocess.run([exe, flag], capture_output=True, text=True, timeout=20) if exe else None
            out[tool] = p and " / ".join(ln.strip() for ln in (p.stdout or p.stderr).splitlines())[-300:]
        except (OSError, subprocess.SubprocessError) as exc:
            out[tool] = f"{exe}: {exc}"
    return out
