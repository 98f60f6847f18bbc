"""GPU acceptance run: one prepared command that measures everything a lent GPU can tell us.

    bash scripts/gpu_check.sh [OUT_DIR]          # a CUDA machine; default bench/results/<date>-<gpu>/
    bash scripts/gpu_check.sh --dry [OUT_DIR]    # the same phases on a CPU (interpreter, tiny shapes)
    python -m bench.gpu_check [--dry] [--phases sanitizer,tests,bench] [--steps triton,ncu] [OUT_DIR]

Phases, each with its own time budget (progress lines carry the elapsed seconds):

* ``env`` — device, driver, torch/triton/python versions, git sha, tools -> ``env.json``;
* ``sanitizer`` — a small driver (``bench/gpu_check_driver.py``) plainly, then under
  ``compute-sanitizer --tool memcheck``, ``racecheck`` and ``synccheck`` -> ``sanitizer.txt``
  (``--dry``: the driver in the interpreter, the sanitizer skipped);
* ``tests`` — the test suite on the GPU (``CBAM_TEST_DEVICE=cuda``, compiled kernels), cut at its
  budget (SIGINT: pytest still prints what failed) -> ``tests.txt``;
* ``bench`` — ``python -m bench`` steps in priority order (:data:`STEPS`), each cut at its budget and
  skipped when too little time is left, merged -> ``results.json`` (a ``python -m bench`` result
  document plus a ``"gpu_check"`` record) and ``latency.png``, ``speedup.png``, ``bandwidth.png``;
* ``report`` — ``summary.md`` (everything a reader needs, tables included).

The sanitizer and the tests run side by side (neither is timed); the benchmark runs alone, with
whatever the total budget leaves. Budgets (seconds) from the environment:
``CBAM_GPU_CHECK_BUDGET_<NAME>`` with NAME ``TOTAL``, ``ENV``, ``SANITIZER``, ``TESTS``, ``BENCH``,
``REPORT`` or a bench step ``BENCH_TRITON``, ``BENCH_MAX_AUTOTUNE``, ... (:func:`budgets`).
Exactly eight files are written (the device tool returns no more), none over 16 MB.
Exit status: 0 clean; 1 a sanitizer error, a failed check or test, a mismatching or failing
benchmark row, a crashed step (a step cut at its budget is reported, not failed); 2 bad usage or
no CUDA device without ``--dry``.

``python -m bench.readme OUT_DIR`` regenerates the README's Performance section from the folder.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the eight files of an acceptance folder
FILES = ("summary.md", "results.json", "tests.txt", "sanitizer.txt", "latency.png", "speedup.png",
         "bandwidth.png", "env.json")
MAX_FILE_BYTES = 16 * 2**20
PHASES = ("env", "sanitizer", "tests", "bench", "report")
#: default budgets in seconds: (GPU, --dry). The bench phase gets what the total leaves (minus the
#: report's reserve) unless CBAM_GPU_CHECK_BUDGET_BENCH caps it; sanitizer and tests run side by side.
DEFAULT_BUDGETS: dict[str, tuple[float, float]] = {
    "total": (450, 115),
    "env": (30, 25),
    "sanitizer": (140, 45),
    "tests": (140, 45),
    "report": (20, 10),
    # sanitizer phase: each run (the plain driver run first warms Triton's cache)
    "sanitizer.driver": (60, 45),
    "sanitizer.memcheck": (70, 0),
    "sanitizer.racecheck": (70, 0),
    "sanitizer.synccheck": (40, 0),
    # bench steps (caps; each also gets at most what the bench phase has left)
    "bench.triton": (120, 40),
    "bench.compile": (90, 60),
    "bench.train": (45, 30),
    "bench.ncu": (75, 10),
    "bench.max-autotune": (80, 30),
    "bench.models": (60, 30),
    "bench.nchw": (40, 25),
}
#: the bench phase needs at least this much to start; reserve kept for it by the phases before it
BENCH_MIN_S = (120, 40)
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
#: pytest gets SIGINT this many seconds before its budget ends, to print what failed
TESTS_GRACE_S = 20
HEARTBEAT_S = 15

R50 = ("resnet50-s1", "resnet50-s2", "resnet50-s3", "resnet50-s4")
#: test files first in line on the GPU (the rest of tests/test_*.py follows, minus the excluded)
GPU_TESTS_FIRST = ("tests/test_fused_forward.py", "tests/test_cbam_parity.py", "tests/test_kernels.py",
                   "tests/test_backward.py", "tests/test_allocations.py", "tests/test_plan_cache.py",
                   "tests/test_robustness.py", "tests/test_compile_export.py", "tests/test_schedule.py")
GPU_TESTS_EXCLUDED = {
    "tests/test_aot_compile.py": "the ahead-of-time compile gate is a CPU job (CI runs it)",
    "tests/test_bench.py": "the bench phase runs the benchmark itself",
    "tests/test_gpu_check.py": "this script's own tests",
}
DRY_TESTS = ("tests/test_errors.py", "tests/test_schedule.py", "tests/test_fused_forward.py::test_lone_gates_fuse_too")
#: the sanitizer phase's workload (python arguments)
DRIVER = ("-m", "bench.gpu_check_driver")
NCU_PROBE = ("import torch; x = torch.ones(1 << 22, device='cuda'); y = x * 2; torch.cuda.synchronize(); "
             "print('ncu probe: ran')")


@dataclass(frozen=True)
class BenchStep:
    """``python -m bench`` calls of one step: ``args`` + each entry of ``calls`` (GPU), or ``dry_args``
    once (``--dry``; None: not run there). The calls run in order while the step's budget lasts; a
    call cut at its budget loses only its own rows."""

    name: str
    what: str
    args: tuple[str, ...]
    dry_args: tuple[str, ...] | None
    min_s: float
    calls: tuple[tuple[str, ...], ...] = ((),)
    #: the calls take about as long as each other: stop when what is left is under 1.2x the longest
    similar_calls: bool = False
    #: --dry: the least time worth starting the step with
    dry_min_s: float = 8


_FWD = ("--dtypes", "fp16", "--modes", "forward", "--layouts", "channels_last")
#: --dry: fp32 (on a CPU eager fp16 training is itself off by ~0.6 in dx against fp64 at the tiny shape, and
#: the benchmark checks every provider against eager)
_DRY = ("--cpu", "--shapes", "tiny", "--batch", "1", "--dtypes", "fp32", "--layouts", "channels_last")
_BATCHES = (("--batch", "32"), ("--batch", "1"))
#: the bench phase, in priority order (the last ones are dropped first when time runs out)
STEPS = (
    BenchStep("triton", "fp16 forward, ResNet-50 stages, channels_last, batch 32 then 1: eager and the Triton "
              "providers (targets 1, 3, 4)",
              ("--shapes", *R50, *_FWD, "--providers", "eager", "triton", "triton-l2", "triton-stream",
               "triton-cudagraph"),
              (*_DRY, "--modes", "forward", "--providers", "eager", "triton", "triton-l2", "triton-stream"), 30,
              calls=_BATCHES),
    BenchStep("compile", "the same cases with torch.compile (default mode), batch 32 then 1",
              ("--shapes", *R50, *_FWD, "--providers", "compile"),
              (*_DRY, "--modes", "forward", "--providers", "compile"), 30, calls=_BATCHES),
    BenchStep("train", "one training step (forward + backward), resnet50-s2 batch 32: eager and triton, then "
              "torch.compile",
              ("--shapes", "resnet50-s2", "--batch", "32", "--dtypes", "fp16", "--layouts", "channels_last",
               "--modes", "train"),
              (*_DRY, "--modes", "train", "--providers", "eager", "triton"), 20,
              calls=(("--providers", "eager", "triton"), ("--providers", "compile"))),
    BenchStep("ncu", "DRAM bytes with Nsight Compute after a probe: triton-l2 at batch 32 (target 5), two shapes "
              "per call; then triton-stream and eager on resnet50-s2 to compare",
              ("--batch", "32", *_FWD, "--ncu"), None, 25,
              calls=(("--shapes", *R50[:2], "--providers", "triton-l2"), ("--shapes", *R50[2:], "--providers",
                     "triton-l2"), ("--shapes", "resnet50-s2", "--providers", "eager", "triton-stream"))),
    BenchStep("max-autotune", "torch.compile(mode='max-autotune-no-cudagraphs') at batch 32, one shape per call "
              "while the budget lasts (target 2)",
              ("--batch", "32", *_FWD, "--providers", "compile-max-autotune"),
              (*_DRY, "--modes", "forward", "--providers", "compile-max-autotune"), 25,
              calls=tuple(("--shapes", s) for s in R50), similar_calls=True),
    # OPTIONAL: runs only when `python -m bench --help` lists --models (issue 19); the networks are timm's
    # and plain PyTorch (never ultralytics: the GPU machine has none); no torch.compile of a whole network
    # (a minute or more); CBAM_GPU_CHECK_MODELS_ARGS replaces the arguments
    BenchStep("models", "OPTIONAL (issue 19): the whole network resnet50-cbam at batch 32, fp16: eager, triton "
              "(converted), triton-tail (converted with the fused block tail), triton-cudagraph, with the CBAM "
              "blocks' share",
              ("--models", "resnet50-cbam", "--batch", "32", "--dtypes", "fp16", "--layouts", "channels_last",
               "--providers", "eager", "triton", "triton-tail", "triton-cudagraph"),
              ("--cpu", "--models", "resnet18-cbam", "--batch", "1", "--dtypes", "fp32", "--layouts", "channels_last",
               "--providers", "eager", "triton", "--no-shares"), 30),
    BenchStep("nchw", "NCHW at batch 32: eager and the Triton providers",
              ("--shapes", *R50, "--batch", "32", "--dtypes", "fp16", "--modes", "forward", "--layouts", "nchw",
               "--providers", "eager", "triton", "triton-l2", "triton-stream"), None, 20),
)


# ------------------------------------------------------------------------------------------ budgets
def budgets(dry: bool, environ: dict[str, str] | None = None) -> dict[str, float]:
    """The budgets in seconds: :data:`DEFAULT_BUDGETS` (GPU or ``--dry`` column), each overridable by
    ``CBAM_GPU_CHECK_BUDGET_<NAME>`` (NAME upper-case, ``.`` and ``-`` as ``_``; e.g.
    ``CBAM_GPU_CHECK_BUDGET_BENCH_MAX_AUTOTUNE=120``); ``bench`` (no default: the rest) too.
    Raises ValueError naming a bad value."""
    environ = os.environ if environ is None else environ
    out = {k: v[1 if dry else 0] for k, v in DEFAULT_BUDGETS.items()}
    for key in [*out, "bench"]:
        var = budget_var(key)
        if var in environ:
            try:
                value = float(environ[var])
            except ValueError:
                value = -1.0
            if not value >= 0:
                raise ValueError(f"{var} must be a number of seconds >= 0, got {environ[var]!r}")
            out[key] = value
    return out


def budget_var(key: str) -> str:
    """The environment variable of budget ``key`` (``bench.max-autotune`` -> ..._BENCH_MAX_AUTOTUNE)."""
    return "CBAM_GPU_CHECK_BUDGET_" + re.sub(r"[.\-]", "_", key).upper()


# --------------------------------------------------------------------------------------- the run
@dataclass
class Step:
    """The outcome of one command: ``status`` ok / failed / timeout / skipped / error."""

    name: str
    status: str
    elapsed_s: float = 0.0
    budget_s: float | None = None
    rc: int | None = None
    note: str = ""
    log: str | None = None


@dataclass
class Context:
    """Where the run stands: folders, budgets, the clock, and everything measured so far."""

    out_dir: str
    work_dir: str
    dry: bool
    python: str = sys.executable
    budgets: dict[str, float] = field(default_factory=dict)
    phases: tuple[str, ...] = PHASES
    steps: tuple[str, ...] = tuple(s.name for s in STEPS)
    start: float = field(default_factory=time.monotonic)
    env: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # phase -> its record
    skipped: list[str] = field(default_factory=list)  # what was not run or cut, and why
    failures: list[str] = field(default_factory=list)  # what makes the exit status 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        """Seconds left before the total budget ends, the report's reserve excluded."""
        return self.budgets["total"] - self.budgets["report"] - self.elapsed()

    def say(self, phase: str, msg: str) -> None:
        with self.lock:
            print(f"[{self.elapsed():6.1f}s] {phase}: {msg}", flush=True)

    def skip(self, what: str, why: str) -> None:
        with self.lock:
            self.skipped.append(f"{what}: {why}")
        self.say(what.split("/")[0].split(" ")[0], f"SKIPPED {what}: {why}")

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def child_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        env["MPLBACKEND"] = "Agg"
        if self.dry:
            env["TRITON_INTERPRET"] = "1"
            env["CBAM_TEST_DEVICE"] = "cpu"
            # --dry checks the plumbing, not compile times: inductor's caches may serve the second compile
            env.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "0")
        else:
            env.pop("TRITON_INTERPRET", None)
        env.update(extra)
        return env


def _tail(path: str | None, nbytes: int = 4096) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - nbytes))
        return f.read().decode("utf-8", "replace")


def _last_line(path: str | None) -> str:
    lines = [ln.strip() for ln in _tail(path, 2048).replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1][:110] if lines else ""


def run_step(ctx: Context, label: str, cmd: list[str], budget_s: float, log: str,
             env: dict[str, str] | None = None, interrupt_before_s: float = 0.0) -> Step:
    """Run ``cmd`` (cwd: the repository root; stdout+stderr -> ``log``) for at most ``budget_s``.

    Progress: a start line, a heartbeat every :data:`HEARTBEAT_S` with the log's last line, an end
    line. ``interrupt_before_s`` > 0: SIGINT that long before the budget ends (pytest then prints its
    summary). At the budget the whole process group is killed (children too: ncu, compile workers).
    """
    phase = label.split("/")[0]
    ctx.say(phase, f"{label}: start (budget {budget_s:.0f} s): {' '.join(_short(c) for c in cmd)}")
    t0 = time.monotonic()
    with open(log, "w") as out:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env or ctx.child_env(),
                                    start_new_session=True)
        except OSError as exc:
            ctx.say(phase, f"{label}: could not start: {exc}")
            return Step(label, "error", 0.0, budget_s, None, f"could not start: {exc}", log)
        interrupted = killed = False
        beat = t0
        while proc.poll() is None:
            time.sleep(0.1)
            now = time.monotonic()
            if interrupt_before_s and not interrupted and now - t0 >= budget_s - interrupt_before_s:
                interrupted = True
                ctx.say(phase, f"{label}: budget nearly spent: SIGINT")
                _signal(proc.pid, signal.SIGINT, group=False)
            if now - t0 >= budget_s:
                killed = True
                _signal(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    _signal(proc.pid, signal.SIGKILL)
                    proc.wait()
                break
            if now - beat >= HEARTBEAT_S:
                beat = now
                ctx.say(phase, f"{label}: running {now - t0:.0f}/{budget_s:.0f} s | {_last_line(log)}")
    _signal(proc.pid, signal.SIGKILL)  # what is left of the group (compile workers, a profiled child)
    elapsed = time.monotonic() - t0
    rc = proc.returncode
    if killed or interrupted:
        status, note = "timeout", f"cut at its {budget_s:.0f} s budget" + (" (SIGINT first)" if interrupted else "")
    else:
        status, note = ("ok" if rc == 0 else "failed"), ("" if rc == 0 else f"exit status {rc}")
    ctx.say(phase, f"{label}: {status} in {elapsed:.1f} s" + (f" ({note})" if note else ""))
    return Step(label, status, round(elapsed, 1), round(budget_s), rc, note, log)


def _short(arg: str) -> str:
    return os.path.relpath(arg, ROOT) if os.path.isabs(arg) and arg.startswith(ROOT) else arg


def _signal(pid: int, sig: int, group: bool = True) -> None:
    try:
        if group:
            os.killpg(pid, sig)  # start_new_session: the group id is the child's pid
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def find_tool(name: str) -> str | None:
    """An executable on PATH, then in the usual CUDA folders, or None."""
    found = shutil.which(name)
    if found:
        return found
    import glob

    for cand in (f"/usr/local/cuda/bin/{name}", *sorted(glob.glob(f"/usr/local/cuda-*/bin/{name}"), reverse=True),
                 f"/opt/nvidia/nsight-compute/{name}"):
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def _phase_budget(ctx: Context, phase: str, later_min: float) -> float:
    return max(0.0, min(ctx.budgets[phase], ctx.remaining() - later_min))


# ----------------------------------------------------------------------------------------- env
def collect_env(path: str, dry: bool) -> int:
    """Child process of the env phase: write the environment record to ``path``."""
    import torch

    from bench import measure

    cuda = torch.cuda.is_available()
    env = measure.environment(torch.device("cuda" if cuda else "cpu"))
    env["cuda_available"] = cuda
    env["dry"] = dry
    versions = {}
    from importlib import metadata

    for mod, dist in (("pytest", "pytest"), ("xdist", "pytest-xdist"), ("hypothesis", "hypothesis"), ("timm", "timm"),
                      ("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("matplotlib", "matplotlib"),
                      ("numpy", "numpy"), ("ultralytics", "ultralytics")):
        try:
            versions[mod] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[mod] = None
    env["packages"] = versions
    tools = {}
    for tool, flag in (("compute-sanitizer", "--version"), ("ncu", "--version"), ("nvidia-smi", "-L")):
        exe = find_tool(tool)
        text = None
        if exe:
            try:
                p = subprocess.run([exe, flag], capture_output=True, text=True, timeout=20)
                text = " / ".join(ln.strip() for ln in (p.stdout or p.stderr).splitlines() if ln.strip())[-300:]
            except (OSError, subprocess.SubprocessError) as exc:
                text = f"{exe}: {exc}"
        tools[tool] = text
    env["tools"] = tools
    env["cpu_count"] = os.cpu_count()
    if not env.get("git_sha") and os.environ.get("CBAM_GIT_SHA"):  # a copied tree without .git (the device tool)
        env["git_sha"] = os.environ["CBAM_GIT_SHA"] + " (CBAM_GIT_SHA)"
    env["tree_sha256"] = tree_digest()
    with open(path, "w") as f:
        json.dump(env, f, indent=1)
        f.write("\n")
    return 0


def tree_digest() -> str:
    """sha256 of the project's source files (paths and contents of cbam_triton/, reference/, bench/,
    tests/, scripts/): names the code of a run even where the checkout has no .git."""
    import hashlib

    h = hashlib.sha256()
    for top in ("cbam_triton", "reference", "bench", "tests", "scripts"):
        for folder, dirs, files in sorted(os.walk(os.path.join(ROOT, top))):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".py", ".sh")):
                    path = os.path.join(folder, name)
                    h.update(os.path.relpath(path, ROOT).encode() + b"\0")
                    with open(path, "rb") as f:
                        h.update(f.read() + b"\0")
    return h.hexdigest()


def phase_env(ctx: Context) -> None:
    path = os.path.join(ctx.out_dir, "env.json")
    budget = _phase_budget(ctx, "env", 0)
    step = run_step(ctx, "env", [ctx.python, "-m", "bench.gpu_check", "_env", path] + (["--dry"] if ctx.dry else []),
                    budget, os.path.join(ctx.work_dir, "env.log"))
    ctx.results["env"] = asdict(step)
    if step.status != "ok" or not os.path.exists(path):
        ctx.fail(f"env: {step.status} ({step.note}): {_tail(step.log, 600)}")
        return
    with open(path) as f:
        ctx.env = json.load(f)
    e = ctx.env
    ctx.say("env", f"device {e.get('device_name')} (capability {e.get('capability')}, {e.get('sm_count')} SMs, "
                   f"L2 {e.get('l2_bytes')} B), driver {e.get('driver')}, CUDA {e.get('cuda')}")
    ctx.say("env", f"python {e.get('python')}, torch {e.get('torch')}, triton {e.get('triton')}, "
                   f"git {e.get('git_sha')}")
    ctx.say("env", "tools: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in e.get("tools", {}).items())
            + "; packages missing: " + (", ".join(k for k, v in e.get("packages", {}).items() if v is None) or "none"))


# ----------------------------------------------------------------------------------- sanitizer
_SUMMARY = re.compile(r"ERROR SUMMARY:\s*(\d+)\s+error")
_TOOL_ERROR = re.compile(r"^=+\s*Error:.*$", re.M)


def classify_sanitizer(output: str, rc: int | None, timed_out: bool) -> tuple[str, int | None, str]:
    """(status, errors, note) of one compute-sanitizer run: ``clean``, ``errors`` (it found some),
    ``driver-failed`` (0 errors but the driver failed), ``unavailable`` (the tool could not run:
    no ERROR SUMMARY, or its own ``Error:`` line) or ``timeout``."""
    found = _SUMMARY.findall(output)
    if timed_out:
        return "timeout", (int(found[-1]) if found else None), "cut at its budget"
    if found and int(found[-1]) > 0:
        first = next((ln.strip() for ln in output.splitlines() if "=========" in ln and
                      re.search(r"(Invalid|Race|hazard|Barrier|error)", ln, re.I) and "SUMMARY" not in ln), "")
        return "errors", int(found[-1]), first[:300]
    tool_error = _TOOL_ERROR.search(output)
    if not found or (rc not in (0, None) and tool_error):
        why = tool_error.group(0).strip() if tool_error else (output.strip().splitlines() or ["no output"])[-1]
        return "unavailable", None, f"compute-sanitizer could not run (exit status {rc}): {why[:300]}"
    if rc != 0:
        return "driver-failed", 0, f"0 errors, but the driver failed under the tool (exit status {rc})"
    return "clean", 0, ""


def phase_sanitizer(ctx: Context, budget: float) -> None:
    deadline = time.monotonic() + budget
    record: dict[str, Any] = {"runs": [], "status": "not run"}
    ctx.results["sanitizer"] = record
    report: list[str] = [f"sanitizer phase — {'--dry: CPU, Triton interpreter' if ctx.dry else 'CUDA'}",
                         f"driver: {ctx.python} {' '.join(DRIVER)}" + (" --tiny" if ctx.dry else ""), ""]
    driver = [ctx.python, *DRIVER] + (["--tiny"] if ctx.dry else [])

    def left() -> float:
        return deadline - time.monotonic()

    plain = run_step(ctx, "sanitizer/driver", driver, min(ctx.budgets["sanitizer.driver"], left()),
                     os.path.join(ctx.work_dir, "driver.log"))
    record["runs"].append(dict(asdict(plain), tool="driver (plain run)"))
    report += [f"== plain run (no sanitizer): {plain.status} in {plain.elapsed_s} s {plain.note}",
               _tail(plain.log, 20000), ""]
    if plain.status == "failed" or plain.status == "error":
        ctx.fail(f"sanitizer driver: {plain.status} ({plain.note}); see sanitizer.txt")
    elif plain.status == "timeout":
        ctx.skip("sanitizer/driver", f"cut at its {plain.budget_s:.0f} s budget")
    if ctx.dry:
        msg = "--dry: compute-sanitizer skipped (no CUDA device); the driver ran in Triton's interpreter"
        ctx.skip("sanitizer/compute-sanitizer", msg)
        report.append(msg)
        record["status"] = "skipped (--dry)" if plain.status == "ok" else f"driver {plain.status}"
        _write_text(os.path.join(ctx.out_dir, "sanitizer.txt"), "\n".join(report))
        return
    exe = find_tool("compute-sanitizer")
    statuses = []
    if exe is None:
        msg = "compute-sanitizer not found (PATH, /usr/local/cuda*/bin): the memory and race checks did not run"
        ctx.skip("sanitizer/compute-sanitizer", msg)
        report.append(msg)
        statuses.append("unavailable")
    for tool in SANITIZER_TOOLS if exe else ():
        budget_t = min(ctx.budgets[f"sanitizer.{tool}"], left())
        if left() < 5:
            ctx.skip(f"sanitizer/{tool}", f"{max(0, left()):.0f} s of the phase budget left")
            report.append(f"== {tool}: skipped (phase budget spent)")
            statuses.append("skipped")
            continue
        cmd = [exe, "--tool", tool, "--error-exitcode", "97", "--print-limit", "30", "--launch-timeout", "120",
               *driver]
        step = run_step(ctx, f"sanitizer/{tool}", cmd, budget_t, os.path.join(ctx.work_dir, f"{tool}.log"),
                        env=ctx.child_env(PYTORCH_NO_CUDA_MEMORY_CACHING="1"))
        output = _tail(step.log, 4 << 20)
        status, errors, note = classify_sanitizer(output, step.rc, step.status == "timeout")
        statuses.append(status)
        record["runs"].append(dict(asdict(step), tool=tool, result=status, errors=errors, why=note))
        ctx.say("sanitizer", f"{tool}: {status}" + (f", {errors} error(s)" if errors else "")
                + (f": {note}" if note else ""))
        if status in ("errors", "driver-failed"):
            ctx.fail(f"sanitizer {tool}: {status}" + (f" ({errors} errors)" if errors else "") + f": {note}")
        elif status == "unavailable":
            ctx.skip(f"sanitizer/{tool}", note)
        elif status == "timeout":
            ctx.skip(f"sanitizer/{tool}", f"cut at its {budget_t:.0f} s budget")
        report += [f"== {tool}: {status} (errors: {errors}) in {step.elapsed_s} s; {note}",
                   f"command: {' '.join(cmd)}", _trim(output, 1 << 20), ""]
    if any(s in ("errors", "driver-failed") for s in statuses) or plain.status in ("failed", "error"):
        record["status"] = "FAILED"
    elif statuses and all(s == "clean" for s in statuses) and plain.status == "ok":
        record["status"] = "clean"
    else:
        record["status"] = "incomplete: " + ", ".join(f"{t} {s}" for t, s in zip(SANITIZER_TOOLS, statuses)) \
            if exe else "compute-sanitizer not found"
    _write_text(os.path.join(ctx.out_dir, "sanitizer.txt"), "\n".join(report))


# --------------------------------------------------------------------------------------- tests
_V_LINE = re.compile(r"^(?P<id>tests/[^\s:]+)::.*\s(?P<st>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)(?:\s.*)?$")
_X_LINE = re.compile(r"^\[gw\d+\]\s+\[\s*\d+%\]\s+(?P<st>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+"
                     r"(?P<id>tests/[^\s:]+)::")
_COLLECTED = re.compile(r"(?:collected (\d+) items?|\[(\d+) items?\])")


def test_files(dry: bool) -> tuple[list[str], dict[str, str]]:
    """The tests phase's selection and what it leaves out (file -> why)."""
    if dry:
        return list(DRY_TESTS), {}
    present = sorted(os.path.relpath(os.path.join(ROOT, "tests", f), ROOT)
                     for f in os.listdir(os.path.join(ROOT, "tests")) if f.startswith("test_") and f.endswith(".py"))
    first = [f for f in GPU_TESTS_FIRST if f in present]
    rest = [f for f in present if f not in first and f not in GPU_TESTS_EXCLUDED]
    return first + rest, {f: why for f, why in GPU_TESTS_EXCLUDED.items() if f in present}


def parse_pytest(output: str) -> dict[str, Any]:
    """Per-file counts, the failures' summary lines, the collected count and pytest's last line."""
    per_file: dict[str, Counter] = {}
    for line in output.splitlines():
        m = _V_LINE.match(line) or _X_LINE.match(line)
        if m:
            per_file.setdefault(m.group("id"), Counter())[m.group("st").lower()] += 1
    failures = [ln.strip() for ln in output.splitlines() if re.match(r"^(FAILED|ERROR) tests/", ln)]
    collected = None
    for m in _COLLECTED.finditer(output):
        collected = int(m.group(1) or m.group(2))
    totals: Counter = Counter()
    for c in per_file.values():
        totals.update(c)
    final = next((ln.strip("= ").strip() for ln in reversed(output.splitlines())
                  if re.match(r"^=+ .*(passed|failed|error|skipped|deselected|no tests ran).* =+$", ln)), "")
    return {"per_file": {k: dict(v) for k, v in per_file.items()}, "totals": dict(totals), "failures": failures,
            "collected": collected, "final": final, "interrupted": "KeyboardInterrupt" in output}


def phase_tests(ctx: Context, budget: float) -> None:
    files, excluded = test_files(ctx.dry)
    device = "cpu" if ctx.dry else "cuda"
    cmd = [ctx.python, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", "--color=no"]
    workers = 0
    if not ctx.dry and ctx.env.get("packages", {}).get("xdist"):
        workers = max(2, min(8, (os.cpu_count() or 4) // 2))
        cmd += ["-n", str(workers), "--dist", "load"]
    cmd += files
    step = run_step(ctx, "tests", cmd, budget, os.path.join(ctx.work_dir, "tests.log"),
                    env=ctx.child_env(CBAM_TEST_DEVICE=device), interrupt_before_s=min(TESTS_GRACE_S, budget / 4))
    output = _tail(step.log, 64 << 20)
    parsed = parse_pytest(output)
    totals = parsed["totals"]
    ran = sum(totals.values())
    not_reached = [f for f in files if "::" not in f and f not in parsed["per_file"]]
    record = dict(asdict(step), device=device, workers=workers, files=files, excluded=excluded, ran=ran,
                  not_reached=not_reached, **parsed)
    ctx.results["tests"] = record
    bad = totals.get("failed", 0) + totals.get("error", 0)
    summary = (f"{ran} run of {parsed['collected'] if parsed['collected'] is not None else '?'} collected: "
               + ", ".join(f"{v} {k}" for k, v in sorted(totals.items())) if ran else "no test result")
    ctx.say("tests", summary)
    if bad:
        ctx.fail(f"tests: {bad} failed/errored (tests.txt lists them)")
    if step.status == "timeout":
        ctx.skip("tests", f"cut at its {budget:.0f} s budget after {ran} tests; not reached: "
                          + (", ".join(not_reached) if not_reached else "parts of the files started"))
    elif step.status in ("failed", "error") and step.rc not in (1,) and not bad:
        ctx.fail(f"tests: pytest exit status {step.rc} ({parsed['final'] or _last_line(step.log)})")
    lines = [f"tests phase — CBAM_TEST_DEVICE={device} ({'Triton interpreter' if ctx.dry else 'compiled kernels'})"
             + (f", {workers} pytest-xdist workers" if workers else ""),
             f"command: {' '.join(_short(c) for c in cmd)}",
             f"budget {budget:.0f} s, elapsed {step.elapsed_s} s, outcome: {step.status} {step.note}".rstrip(),
             f"result: {summary}" + (f" — pytest: {parsed['final']}" if parsed["final"] else ""), ""]
    if excluded:
        lines += ["left out:"] + [f"  {f}: {why}" for f, why in excluded.items()] + [""]
    if not_reached:
        lines += ["not reached (budget): " + ", ".join(not_reached), ""]
    lines += ["per file:"] + [f"  {f}: " + ", ".join(f"{v} {k}" for k, v in sorted(c.items()))
                              for f, c in parsed["per_file"].items()] + [""]
    lines += ["failures and errors:"] + ([f"  {ln}" for ln in parsed["failures"]] or ["  none"]) + [""]
    lines += ["---- pytest output (the end, up to 2 MB) ----", _trim(output, 2 << 20)]
    _write_text(os.path.join(ctx.out_dir, "tests.txt"), "\n".join(lines))


# --------------------------------------------------------------------------------------- bench
def bench_has_models(ctx: Context) -> bool:
    """Whether ``python -m bench --help`` lists ``--models`` (issue 19's model workloads)."""
    try:
        p = subprocess.run([ctx.python, "-m", "bench", "--help"], capture_output=True, text=True, timeout=60,
                           cwd=ROOT, env=ctx.child_env())
    except (OSError, subprocess.SubprocessError):
        return False
    return "--models" in p.stdout


def ncu_probe(ctx: Context, budget: float) -> tuple[bool, str]:
    """Whether Nsight Compute can read DRAM counters here: one tiny kernel profiled (fails fast when
    the counters are not readable, e.g. ERR_NVGPUCTRPERM)."""
    from bench.ncu import METRICS, parse_csv

    exe = find_tool("ncu")
    if exe is None:
        return False, "ncu (Nsight Compute) not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/nsight-compute)"
    cmd = [exe, "--metrics", ",".join(METRICS), "--csv", "--target-processes", "all", ctx.python, "-c", NCU_PROBE]
    step = run_step(ctx, "bench/ncu-probe", cmd, budget, os.path.join(ctx.work_dir, "ncu-probe.log"))
    out = _tail(step.log, 1 << 20)
    if step.status == "timeout":
        return False, f"the ncu probe did not finish in {budget:.0f} s"
    if "ERR_NVGPUCTRPERM" in out:
        return False, "ncu may not read the GPU performance counters here (ERR_NVGPUCTRPERM)"
    try:
        got = parse_csv(out)
    except ValueError as exc:
        return False, f"ncu probe failed (exit status {step.rc}): {exc}; {_last_line(step.log)}"
    if step.rc != 0 or got["kernels"] == 0 or got["read"] + got["write"] == 0:
        return False, f"ncu probe read no DRAM bytes (exit status {step.rc}, {got}); {_last_line(step.log)}"
    return True, f"ncu reads DRAM counters ({got['kernels']} kernels, {got['read'] + got['write']} bytes)"


def _bench_call(ctx: Context, label: str, args: tuple[str, ...], budget: float, docs: list[tuple[str, dict]],
                models: bool = False, env: dict[str, str] | None = None) -> Step:
    """One ``python -m bench`` call; its result document goes to ``docs`` (the models step's to
    ``ctx.results["models"]``: whole networks are reported apart from the block's rows)."""
    out = os.path.join(ctx.work_dir, label.replace("/", "_"))
    step = run_step(ctx, label, [ctx.python, "-m", "bench", *args, "--out", out, "--no-plots"], budget,
                    out + ".log", env=env)
    path = os.path.join(out, "results.json")
    if step.status == "ok" and os.path.exists(path):
        with open(path) as f:
            doc = json.load(f)
        if models:
            ctx.results["models"] = {"args": list(args), "env": doc.get("env"), "config": doc.get("config"),
                                     "results": doc.get("results", []), "model_goals": doc.get("model_goals")}
        else:
            docs.append((label.split("/", 1)[1], doc))
    elif step.status in ("failed", "error"):
        ctx.fail(f"{label}: {step.note}: {_last_line(step.log)}")
    elif step.status == "timeout":
        ctx.skip(label, f"cut at its {budget:.0f} s budget: its rows are lost")
    return step


def phase_bench(ctx: Context, budget: float) -> None:
    deadline = time.monotonic() + budget
    docs: list[tuple[str, dict]] = []
    record: dict[str, Any] = {"steps": []}
    ctx.results["bench"] = record

    def left() -> float:
        return deadline - time.monotonic()

    for spec in STEPS:
        label = f"bench/{spec.name}"
        if spec.name not in ctx.steps:
            record["steps"].append({"name": spec.name, "status": "not selected"})
            continue
        args = spec.dry_args if ctx.dry else spec.args
        cap = min(ctx.budgets[f"bench.{spec.name}"], left())
        entry: dict[str, Any] = {"name": spec.name, "what": spec.what, "budget_s": round(cap), "calls": []}
        record["steps"].append(entry)
        if spec.name == "models" and not bench_has_models(ctx):
            entry.update(status="skipped", note="`python -m bench --help` lists no --models yet (issue 19)")
            ctx.skip(label, entry["note"])
            continue
        if args is None:
            entry.update(status="skipped", note={"ncu": "--dry: Nsight Compute needs a CUDA device"}.get(
                spec.name, "--dry: GPU only"))
            ctx.skip(label, entry["note"])
            continue
        min_s = spec.dry_min_s if ctx.dry else spec.min_s
        if cap < min_s:
            entry.update(status="skipped", note=f"{cap:.0f} s left of the bench budget, needs {min_s:.0f}")
            ctx.skip(label, entry["note"])
            continue
        t0 = time.monotonic()
        env = None
        if spec.name == "ncu":
            exe = find_tool("ncu")  # bench/ncu.py looks on PATH first: the probed ncu is the one it uses
            env = ctx.child_env(PATH=os.path.dirname(exe) + os.pathsep + os.environ.get("PATH", "")) if exe else None
            ok, why = ncu_probe(ctx, min(40.0, cap))
            entry["probe"] = why
            ctx.say("bench", f"ncu: {why}")
            if not ok:
                entry.update(status="skipped", note=why)
                ctx.skip(label, why)
                continue
        if spec.name == "models" and os.environ.get("CBAM_GPU_CHECK_MODELS_ARGS"):
            args = tuple(shlex.split(os.environ["CBAM_GPU_CHECK_MODELS_ARGS"]))
        calls = ((),) if ctx.dry else spec.calls
        longest, cut = 0.0, False
        for i, extra in enumerate(calls):
            rest = min(cap - (time.monotonic() - t0), left())
            if i and (rest < min_s or (spec.similar_calls and rest < 1.2 * longest)):
                cut = True
                ctx.skip(f"{label} calls {i + 1}-{len(calls)}", f"{rest:.0f} s left of its budget, one call took "
                         f"{longest:.0f} s: " + "; ".join(" ".join(c) for c in calls[i:]))
                break
            tag = f"{label}/{i + 1}" if len(calls) > 1 else label
            step = _bench_call(ctx, tag, (*args, *extra), rest, docs, models=spec.name == "models", env=env)
            entry["calls"].append(asdict(step))
            longest = max(longest, step.elapsed_s)
        entry["elapsed_s"] = round(time.monotonic() - t0, 1)
        entry["status"] = "ok" if not cut and all(c["status"] == "ok" for c in entry["calls"]) else "partial"
    doc = merge_documents(docs, ctx.env)
    record["documents"] = [name for name, _ in docs]
    flagged = [f"{r.get('id')} {r.get('provider')}: {r.get('status')} {r.get('note', '')}".strip()
               for r in doc["results"] + ctx.results.get("models", {}).get("results", [])
               if r.get("status") in ("mismatch", "error")]
    for f in flagged:
        ctx.fail(f"bench row {f}")
    record["flagged"] = flagged
    ctx.results["bench_doc"] = doc


def merge_documents(docs: list[tuple[str, dict]], env: dict[str, Any]) -> dict[str, Any]:
    """One result document from the steps' documents: the first row of a (case, provider) wins and
    takes the fields it lacks from later ones (e.g. ``ncu_dram_x``); ``speedup_vs_eager`` is recomputed
    against the case's eager row, whichever step timed it; the targets are judged on the whole."""
    from bench import report, targets

    rows: list[dict[str, Any]] = []
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for step, doc in docs:
        for r in doc.get("results", []):
            key = (r["id"], r["provider"])
            if key in index:
                first = index[key]
                for k, v in r.items():
                    if first.get(k) is None and v is not None:
                        first[k] = v
                continue
            row = dict(r, step=step)
            index[key] = row
            rows.append(row)
    eager = {r["id"]: r["median_ms"] for r in rows if r["provider"] == "eager" and r.get("median_ms")}
    for r in rows:
        if r.get("median_ms") and r["id"] in eager:
            r["speedup_vs_eager"] = eager[r["id"]] / r["median_ms"]
        else:
            r.pop("speedup_vs_eager", None)
    if docs:
        base_env = dict(docs[0][1]["env"])
        for key in ("git_sha", "tree_sha256"):  # the env phase knows CBAM_GIT_SHA and the tree's digest
            if not base_env.get(key) and env.get(key):
                base_env[key] = env[key]
    else:  # no benchmark document: the env phase's record (the plots need the strings)
        base_env = {k: env.get(k) for k in report.REQUIRED_ENV}
        base_env.update({k: str(env.get(k) or "?") for k in ("device_name", "torch", "triton")},
                        date=env.get("date") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    config = {"steps": {step: doc.get("config", {}) for step, doc in docs}}
    doc = report.make_document(base_env, config, rows)
    doc["targets"] = targets.evaluate(doc)
    return doc


# -------------------------------------------------------------------------------------- report
def _trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters left out ...]\n" + text[-limit:]


def _write_text(path: str, text: str) -> None:
    data = (text if text.endswith("\n") else text + "\n").encode("utf-8", "replace")
    if len(data) > MAX_FILE_BYTES - 1024:
        data = b"[... beginning left out: over 16 MB ...]\n" + data[-(MAX_FILE_BYTES - 4096):]
    with open(path, "wb") as f:
        f.write(data)


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]


#: result columns of summary.md (report.table_rows keeps those with a value)
SUMMARY_COLUMNS = ("id", "provider", "status", "median_ms", "p20_ms", "p80_ms", "speedup_vs_eager", "compile_s",
                   "schedule", "launches", "traffic_x", "dram_model_x", "ncu_dram_x", "floor_gbps", "frac_copy_bw",
                   "peak_mem_bytes", "saved_x", "max_abs_err_vs_eager", "note")


def write_outputs(ctx: Context, exit_status: int) -> None:
    """results.json, the plots and summary.md (env.json, tests.txt and sanitizer.txt are written by
    their phases; a phase that did not run leaves a short placeholder)."""
    from bench import report, targets

    doc = ctx.results.get("bench_doc") or merge_documents([], ctx.env)
    phases = {k: v for k, v in ctx.results.items() if k not in ("bench_doc", "models")}
    record = {"dry": ctx.dry, "exit_status": exit_status, "elapsed_s": round(ctx.elapsed(), 1),
              "budgets": ctx.budgets, "phases": phases,
              "skipped": ctx.skipped, "failures": ctx.failures, "files": list(FILES)}
    doc = dict(doc, gpu_check=record)
    if "models" in ctx.results:  # whole networks (issue 19), apart from the block's rows
        doc["models"] = ctx.results["models"]
    report.write_json(doc, os.path.join(ctx.out_dir, "results.json"))
    try:
        import warnings

        from bench.plots import write_plots

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # matplotlib: "no artists with labels" on an empty plot
            write_plots(doc, ctx.out_dir)
    except Exception as exc:  # noqa: BLE001 - plots are not worth losing the summary over
        ctx.fail(f"report: plots failed: {type(exc).__name__}: {exc}")
    for name, what in (("tests.txt", "tests"), ("sanitizer.txt", "sanitizer"), ("env.json", "env")):
        path = os.path.join(ctx.out_dir, name)
        if not os.path.exists(path):
            reason = "not run (--phases)" if what not in ctx.phases else "did not finish"
            if name.endswith(".json"):
                _write_text(path, json.dumps({"error": f"the {what} phase: {reason}"}) + "\n")
            else:
                _write_text(path, f"the {what} phase: {reason}\n")
    env = ctx.env or doc.get("env", {})
    lines = [f"# GPU acceptance run — {env.get('device_name', '?')} ({env.get('date', '?')})", ""]
    if ctx.dry:
        lines += ["**--dry run on a CPU**: Triton's interpreter, tiny shapes, no compute-sanitizer; it checks that "
                  "the script works, not the GPU.", ""]
    lines += [f"Exit status **{exit_status}**; {ctx.elapsed():.0f} s of the {ctx.budgets['total']:.0f} s budget. "
              + verdict_line(doc, record), ""]
    if ctx.failures:
        lines += ["## Failures", ""] + [f"* {f}" for f in ctx.failures] + [""]
    lines += ["## Skipped or cut", ""] + ([f"* {s}" for s in ctx.skipped] or ["* nothing"]) + [""]
    lines += ["## Environment", ""]
    keys = ("device_name", "capability", "sm_count", "l2_bytes", "total_memory", "driver", "cuda", "python", "torch",
            "triton", "git_sha", "tree_sha256", "platform", "cpu_count")
    lines += _md_table(["", ""], [[k, str(env.get(k))] for k in keys if k in env])
    tools = env.get("tools", {})
    if tools:
        lines += ["", "Tools: " + "; ".join(f"{k}: {v or 'not found'}" for k, v in tools.items())]
    pk = env.get("packages", {})
    if pk:
        lines += ["", "Packages: " + ", ".join(f"{k} {v or 'missing'}" for k, v in pk.items())]
    lines += ["", "## Phases", ""]
    body = []
    for ph in PHASES[:-1]:
        rec = ctx.results.get(ph)
        if ph not in ctx.phases:
            body.append([ph, "not selected", "", "", ""])
        elif rec is None:
            body.append([ph, "not run", "", "", ""])
        elif ph == "bench":
            for s in rec["steps"]:
                calls = s.get("calls", [])
                body.append([f"bench/{s['name']}", s.get("status", ""), str(s.get("elapsed_s", "")),
                             str(s.get("budget_s", "")), "; ".join(filter(None, [s.get("note", ""), s.get("probe", "")]
                                                                          + [c["note"] for c in calls]))])
        elif ph == "sanitizer":
            for r in rec["runs"]:
                body.append([f"sanitizer/{r['tool']}", r.get("result", r["status"]), str(r["elapsed_s"]),
                             str(r["budget_s"]), r.get("why") or r["note"]])
        else:
            body.append([ph, rec["status"], str(rec["elapsed_s"]), str(rec["budget_s"]), rec["note"]])
    lines += _md_table(["phase / step", "status", "seconds", "budget s", "note"], body)
    lines += ["", "## Speed targets (fp16 forward, ResNet-50 shapes; bench/targets.py)", "",
              targets.format_verdicts(doc.get("targets") or targets.evaluate(doc), markdown=True), ""]
    tests = ctx.results.get("tests")
    if tests:
        lines += ["## Tests", "", f"{tests['ran']} run of {tests['collected'] or '?'} collected "
                  f"(CBAM_TEST_DEVICE={tests['device']}): "
                  + (", ".join(f"{v} {k}" for k, v in sorted(tests["totals"].items())) or "none"), ""]
        if tests["not_reached"]:
            lines += ["Not reached (budget): " + ", ".join(tests["not_reached"]), ""]
        lines += [f"* `{f}`" for f in tests["failures"][:100]] + ([""] if tests["failures"] else [])
    san = ctx.results.get("sanitizer")
    if san:
        lines += ["## Sanitizer", "", f"Result: **{san['status']}** (details: sanitizer.txt)", ""]
    lines += ["## Benchmark results", ""]
    if doc["results"]:
        env_d = doc["env"]
        lines += [f"torch {env_d.get('torch')}, triton {env_d.get('triton')}, git {env_d.get('git_sha')}; timer: "
                  + "; ".join(sorted({str(c.get('timer')) for c in doc['config'].get('steps', {}).values()})), ""]
        head, body = report.table_rows(doc["results"], SUMMARY_COLUMNS)
        lines += _md_table(head, body)
    else:
        lines += ["No benchmark rows (the bench phase did not run or produced nothing)."]
    models = ctx.results.get("models")
    if models and models.get("results"):
        columns = getattr(report, "MODEL_COLUMNS", None) or (*SUMMARY_COLUMNS[:-1], *sorted(
            {k for r in models["results"] for k in r if k.startswith("cbam")}), "note")
        head, body = report.table_rows(models["results"], tuple(columns))
        lines += ["", f"### Whole networks (`python -m bench {' '.join(models['args'])}`)", ""] + _md_table(head, body)
        goals = models.get("model_goals") or []
        if goals:
            lines += ["", "Model goals (bench/models.py):", ""] + _md_table(
                ["goal", "status", "worst"], [[str(g.get("target", g.get("goal", ""))), str(g.get("status", "")),
                                               str(g.get("worst", ""))] for g in goals])
    lines += ["", "## Files", "", ", ".join(FILES) + " (results.json: a `python -m bench` result document; "
              "`python -m bench targets results.json` re-judges it, `python -m bench.readme <this folder>` "
              "regenerates the README's Performance section)", ""]
    logs = []
    for name in sorted(os.listdir(ctx.work_dir)) if os.path.isdir(ctx.work_dir) else []:
        if name.endswith(".log") and name not in ("tests.log",):
            tail = _tail(os.path.join(ctx.work_dir, name), 3000).strip()
            logs += [f"<details><summary>{name} (end)</summary>", "", "```", tail, "```", "", "</details>", ""]
    if logs:
        lines += ["## Logs", ""] + logs
    _write_text(os.path.join(ctx.out_dir, "summary.md"), "\n".join(lines))


def verdict_line(doc: dict[str, Any], record: dict[str, Any]) -> str:
    """One sentence: sanitizer, tests, targets (for summary.md and the README)."""
    phases = record.get("phases", {})
    parts = []
    san = phases.get("sanitizer")
    parts.append(f"sanitizer: {san['status']}" if san else "sanitizer: not run")
    tests = phases.get("tests")
    if tests:
        t = tests["totals"]
        parts.append(f"tests: {t.get('passed', 0)} passed, {t.get('failed', 0) + t.get('error', 0)} failed, "
                     f"{t.get('skipped', 0)} skipped of {tests['collected'] or '?'} collected"
                     + (" (cut at the budget)" if tests["status"] == "timeout" else ""))
    else:
        parts.append("tests: not run")
    verdicts = doc.get("targets") or []
    counts = Counter(v["status"] for v in verdicts)
    parts.append("speed targets: " + (", ".join(f"{n} {s}" for s, n in counts.items()) or "none judged"))
    return "; ".join(parts) + "."


# ------------------------------------------------------------------------------------------- main
def _default_out(dry: bool) -> str:
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    gpu = "cpu-dry" if dry else "gpu"
    if not dry:
        try:
            p = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=20)
            if p.returncode == 0 and p.stdout.strip():
                gpu = re.sub(r"[^a-z0-9]+", "-", p.stdout.strip().splitlines()[0].lower()).strip("-")
        except (OSError, subprocess.SubprocessError):
            pass
    return os.path.join(ROOT, "bench", "results", f"{date}-{gpu}")


def run(ctx: Context) -> int:
    """All phases; returns the exit status (the files are always written)."""
    b = ctx.budgets
    bench_min = BENCH_MIN_S[1 if ctx.dry else 0] if "bench" in ctx.phases else 0
    ctx.say("gpu_check", f"{'--dry (CPU, interpreter) ' if ctx.dry else ''}output {ctx.out_dir}; total budget "
                         f"{b['total']:.0f} s; phases {', '.join(ctx.phases)}; work folder {ctx.work_dir}")

    def guarded(name: str, fn: Any, *args: Any) -> None:
        try:
            fn(ctx, *args)
        except Exception as exc:  # noqa: BLE001 - a broken phase is reported, the others still run
            ctx.fail(f"{name}: internal error {type(exc).__name__}: {exc}")
            ctx.say(name, traceback.format_exc())

    guarded("env", phase_env)
    if not ctx.dry and ctx.env and not ctx.env.get("cuda_available"):
        ctx.fail("no CUDA device (torch.cuda.is_available() is False): on a CPU run `bash scripts/gpu_check.sh --dry`")
        ctx.say("gpu_check", ctx.failures[-1])
        write_outputs(ctx, 2)
        return 2
    side = [ph for ph in ("sanitizer", "tests") if ph in ctx.phases]
    threads = []
    for ph in side:
        budget = _phase_budget(ctx, ph, bench_min)
        fn = phase_sanitizer if ph == "sanitizer" else phase_tests
        if budget < min(10.0, b[ph]):
            ctx.skip(ph, f"{budget:.0f} s left of the total budget")
            continue
        t = threading.Thread(target=guarded, args=(ph, fn, budget), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    if "bench" in ctx.phases:
        budget = max(0.0, min(b.get("bench", float("inf")), ctx.remaining()))
        if budget < min(10.0, b.get("bench", 10.0)):
            ctx.skip("bench", f"{budget:.0f} s left of the total budget")
        else:
            guarded("bench", phase_bench, budget)
    status = 1 if ctx.failures else 0
    try:
        write_outputs(ctx, status)
    except Exception as exc:  # noqa: BLE001
        ctx.say("report", f"internal error {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        status = 1
    problems = check_folder(ctx.out_dir)
    for p in problems:
        ctx.say("report", f"PROBLEM: {p}")
    status = 1 if problems else status
    ctx.say("report", f"wrote {ctx.out_dir}: {', '.join(FILES)}")
    for s in ctx.skipped:
        ctx.say("report", f"skipped: {s}")
    for f in ctx.failures:
        ctx.say("report", f"FAILURE: {f}")
    doc_path = os.path.join(ctx.out_dir, "results.json")
    if os.path.exists(doc_path):
        with open(doc_path) as f:
            doc = json.load(f)
        ctx.say("report", verdict_line(doc, doc.get("gpu_check", {})))
    ctx.say("gpu_check", f"done in {ctx.elapsed():.0f} s, exit status {status}")
    return status


def check_folder(out_dir: str) -> list[str]:
    """Problems with an acceptance folder: a missing file of :data:`FILES`, more than 8 files, a file
    over 16 MB."""
    problems = [f"{name} missing" for name in FILES if not os.path.isfile(os.path.join(out_dir, name))]
    names = os.listdir(out_dir)
    if len(names) > len(FILES):
        problems.append(f"{len(names)} entries in {out_dir} (the device tool returns 8 files at most): "
                        + ", ".join(sorted(set(names) - set(FILES))))
    paths = [os.path.join(out_dir, n) for n in names]
    problems += [f"{os.path.basename(f)} is over 16 MB" for f in paths
                 if os.path.isfile(f) and os.path.getsize(f) > MAX_FILE_BYTES]
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_env"]:
        return collect_env(argv[1], "--dry" in argv[2:])
    p = argparse.ArgumentParser(prog="bash scripts/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("out_dir", nargs="?", help="output folder (default bench/results/<date>-<gpu>/)")
    p.add_argument("--dry", action="store_true", help="CPU rehearsal: interpreter, tiny shapes, no sanitizer")
    p.add_argument("--phases", default="sanitizer,tests,bench",
                   help="comma-separated subset of sanitizer,tests,bench (env and report always run)")
    p.add_argument("--steps", default=",".join(s.name for s in STEPS),
                   help="comma-separated bench steps: " + ",".join(s.name for s in STEPS))
    args = p.parse_args(argv)
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    steps = [x.strip() for x in args.steps.split(",") if x.strip()]
    bad = [x for x in phases if x not in PHASES] + [x for x in steps if x not in {s.name for s in STEPS}]
    if bad:
        p.error(f"unknown phase or step {bad}; phases: {', '.join(PHASES[1:4])}; steps: "
                + ", ".join(s.name for s in STEPS))
    try:
        b = budgets(args.dry)
    except ValueError as exc:
        p.error(str(exc))
    out_dir = os.path.abspath(args.out_dir or _default_out(args.dry))
    os.makedirs(out_dir, exist_ok=True)
    others = sorted(set(os.listdir(out_dir)) - set(FILES))
    if others:
        print(f"gpu_check: WARNING: {out_dir} already holds {len(others)} other entries ({', '.join(others[:5])}); "
              "the device tool returns 8 files at most", file=sys.stderr)
    for name in FILES:  # no stale file of an earlier run survives
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    work = tempfile.mkdtemp(prefix="gpu_check-")
    ctx = Context(out_dir=out_dir, work_dir=work, dry=args.dry, budgets=b,
                  phases=("env", *[ph for ph in PHASES if ph in phases], "report"), steps=tuple(steps))
    try:
        return run(ctx)
    finally:
        if os.environ.get("CBAM_GPU_CHECK_KEEP_WORK") != "1":
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
