"""GPU acceptance run: one command that measures what a CUDA machine can tell about the library.

    bash scripts/gpu_check.sh [--dry] [--phases sanitizer,tests,bench] [--steps triton,ncu,...] [OUT_DIR]

Phases, each a subprocess cut at its time budget (``CBAM_GPU_CHECK_BUDGET_<NAME>`` seconds): ``env`` ->
env.json; ``sanitizer`` (``bench/gpu_check_driver.py`` plainly, then under compute-sanitizer memcheck,
racecheck, synccheck) -> sanitizer.txt, beside ``tests`` (pytest, read from its JUnit XML) -> tests.txt;
``bench`` (:data:`STEPS`, merged) -> results.json and three plots; ``report`` -> summary.md. ``--dry``: a
CPU rehearsal (interpreter, tiny shapes). Exit status: 0 clean; 1 a sanitizer error, a failed check or test,
a failing benchmark row or a crashed step (one cut at its budget is reported, not failed); 2 bad usage or
no CUDA device without ``--dry``."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pathlib
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import measure, report
from bench.budgeted import run_budgeted
from bench.junit import parse_junit
from bench.ncu import METRICS, parse_csv
from bench.plots import write_plots
from bench.report import verdict_line
from bench.sanitizer import classify_sanitizer
from bench.status import is_flagged
from bench.targets import RESNET50

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ("summary.md", "results.json", "tests.txt", "sanitizer.txt", "latency.png", "speedup.png",
         "bandwidth.png", "env.json")
MAX_FILE_BYTES = 16 * 2**20
PHASES = ("env", "sanitizer", "tests", "bench", "report")
#: seconds, (GPU, --dry); "bench" has no default (what the total leaves), sanitizer.* and bench.* are caps
DEFAULT_BUDGETS: dict[str, tuple[float, float]] = {
    "total": (450, 115), "env": (30, 25), "sanitizer": (140, 45), "tests": (140, 45), "report": (20, 10),
    "sanitizer.driver": (60, 45), "sanitizer.memcheck": (70, 0), "sanitizer.racecheck": (70, 0),
    "sanitizer.synccheck": (40, 0), "bench.triton": (120, 40), "bench.compile": (90, 60), "bench.train": (45, 30),
    "bench.ncu": (75, 10), "bench.max-autotune": (80, 30), "bench.models": (60, 30), "bench.nchw": (40, 25)}
BENCH_MIN_S = (120, 40)  # kept for the bench phase by the phases before it
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
TESTS_GRACE_S = 20  # pytest's SIGINT comes this long before its budget ends, so that it writes what ran
#: test files first in line on the GPU (the rest of tests/test_*.py follows, minus the excluded)
GPU_TESTS_FIRST = ("tests/test_fused_forward.py", "tests/test_cbam_parity.py", "tests/test_kernels.py",
                   "tests/test_backward.py", "tests/test_allocations.py", "tests/test_plan_cache.py",
                   "tests/test_robustness.py", "tests/test_compile_export.py", "tests/test_schedule.py")
GPU_TESTS_EXCLUDED = {"tests/test_aot_compile.py": "the ahead-of-time compile gate is a CPU job (CI runs it)",
                      "tests/test_bench.py": "the bench phase runs the benchmark itself",
                      "tests/test_gpu_check.py": "this script's own tests"}
DRY_TESTS = ("tests/test_errors.py", "tests/test_schedule.py", "tests/test_fused_forward.py::test_lone_gates_fuse_too")
DRIVER = ("-m", "bench.gpu_check_driver")
#: the folders whose .py and .sh files env.json's tree_sha256 digests (the code of a run, even without .git)
TREE = ("cbam_triton", "reference", "bench", "tests", "scripts")
TOOLS = {"compute-sanitizer": "--version", "ncu": "--version", "nvidia-smi": "-L"}
PACKAGES = ("pytest", "pytest-xdist", "hypothesis", "timm", "onnx", "onnxruntime", "matplotlib", "numpy", "ultralytics")
NCU_PROBE = ("import torch; x = torch.ones(1 << 22, device='cuda'); y = x * 2; torch.cuda.synchronize(); "
             "print('ncu probe: ran')")


@dataclass(frozen=True)
class BenchStep:
    """``python -m bench`` with ``args`` + each of ``calls`` while its budget lasts (a cut call loses only its rows;
    ``similar_calls``: stop when under 1.2x the longest call is left), or ``dry_args`` once (None: GPU only)."""

    name: str
    args: str
    dry_args: str | None
    min_s: float
    calls: tuple[str, ...] = ("",)
    similar_calls: bool = False
    dry_min_s: float = 8


R50, _FWD = " ".join(RESNET50), "--dtypes fp16 --modes forward --layouts channels_last"
#: --dry: fp32 (on a CPU eager fp16 training is itself off by ~0.6 in dx against fp64 at the tiny shape)
_DRY = "--cpu --shapes tiny --batch 1 --dtypes fp32 --layouts channels_last"
_TRITON = "eager triton triton-l2 triton-stream"
#: in priority order: the last ones are dropped first when time runs out (the runbook says what each measures)
STEPS = (
    BenchStep("triton", f"--shapes {R50} {_FWD} --providers {_TRITON} triton-cudagraph",  # targets 1, 3, 4
              f"{_DRY} --modes forward --providers {_TRITON}", 30, ("--batch 32", "--batch 1")),
    BenchStep("compile", f"--shapes {R50} {_FWD} --providers compile", f"{_DRY} --modes forward --providers compile",
              30, ("--batch 32", "--batch 1")),
    BenchStep("train", "--shapes resnet50-s2 --batch 32 --dtypes fp16 --layouts channels_last --modes train",
              f"{_DRY} --modes train --providers eager triton", 20,
              ("--providers eager triton", "--providers compile")),
    BenchStep("ncu", f"--batch 32 {_FWD} --ncu", None, 25, (  # target 5
        *(f"--shapes {' '.join(RESNET50[i:i + 2])} --providers triton-l2" for i in (0, 2)),
        "--shapes resnet50-s2 --providers eager triton-stream")),
    BenchStep("max-autotune", f"--batch 32 {_FWD} --providers compile-max-autotune",  # target 2
              f"{_DRY} --modes forward --providers compile-max-autotune", 25, tuple(f"--shapes {s}" for s in RESNET50),
              similar_calls=True),
    # timm's and plain PyTorch networks only, no compile of a whole network; CBAM_GPU_CHECK_MODELS_ARGS replaces args
    BenchStep("models", "--models resnet50-cbam --batch 32 --dtypes fp16 --layouts channels_last --providers eager "
              "triton triton-tail triton-cudagraph", "--cpu --models resnet18-cbam --batch 1 --dtypes fp32 "
              "--layouts channels_last --providers eager triton --no-shares", 30),
    BenchStep("nchw", f"--shapes {R50} --batch 32 --dtypes fp16 --modes forward --layouts nchw --providers {_TRITON}",
              None, 20),
)


def budgets(dry: bool, environ: dict[str, str] | None = None) -> dict[str, float]:
    """:data:`DEFAULT_BUDGETS` (the GPU or ``--dry`` column), each overridden by ``CBAM_GPU_CHECK_BUDGET_<NAME>``
    (``.`` and ``-`` as ``_``, e.g. ``..._BENCH_MAX_AUTOTUNE=120``), ``bench`` too; ValueError names a bad value."""
    environ = os.environ if environ is None else environ
    out = {k: v[dry] for k, v in DEFAULT_BUDGETS.items()}
    for key, var in ((k, "CBAM_GPU_CHECK_BUDGET_" + re.sub(r"[.\-]", "_", k).upper()) for k in [*out, "bench"]):
        if var in environ and not re.fullmatch(r"\s*\d+(\.\d*)?\s*", environ[var]):
            raise ValueError(f"{var} must be a number of seconds >= 0, got {environ[var]!r}")
        out.update({key: float(environ[var])} if var in environ else {})
    return out


@dataclass
class Step:
    """The outcome of one command: ``status`` ok / failed / timeout / error."""

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
    budgets: dict[str, float] = field(default_factory=dict)
    phases: tuple[str, ...] = PHASES
    steps: tuple[str, ...] = tuple(s.name for s in STEPS)
    start: float = field(default_factory=time.monotonic)
    env: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # phase -> its record
    ran: list[Step] = field(default_factory=list)  # every command, in order (summary.md's phase table)
    skipped: list[str] = field(default_factory=list)  # what was not run or cut, and why
    failures: list[str] = field(default_factory=list)  # what makes the exit status 1

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start

    def budget(self, phase: str, later_min: float = 0.0) -> float:
        """A phase's budget: its own, at most what the total leaves (the report's reserve and ``later_min``)."""
        left = self.budgets["total"] - self.budgets["report"] - self.elapsed() - later_min
        return max(0.0, min(self.budgets.get(phase, float("inf")), left))

    def say(self, phase: str, msg: str) -> None:
        """A progress line (one write: the threads' lines do not mix)."""
        print(f"[{self.elapsed():6.1f}s] {phase}: {msg}\n", end="", flush=True)

    def skip(self, what: str, why: str) -> None:
        """Something not run or cut (said and listed)."""
        self.skipped.append(f"{what}: {why}")
        self.say(what.split("/")[0].split(" ")[0], f"SKIPPED {what}: {why}")

    def child_env(self, **extra: str) -> dict[str, str]:
        """A phase's environment: this checkout first on PYTHONPATH; ``--dry``: Triton's interpreter."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg",
                   PYTHONPATH=os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH")))))
        env.pop("TRITON_INTERPRET", None)
        if self.dry:  # (inductor's caches may serve a second compile: --dry checks the plumbing)
            env.update(TRITON_INTERPRET="1", CBAM_TEST_DEVICE="cpu",
                       TORCHINDUCTOR_FORCE_DISABLE_CACHES=os.environ.get("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "0"))
        return dict(env, **extra)


def _tail(path: str | None, nbytes: int = 4096) -> str:
    return pathlib.Path(path).read_bytes()[-nbytes:].decode("utf-8", "replace") if path and os.path.exists(path) else ""


def _last_line(path: str | None) -> str:
    lines = [ln.strip() for ln in _tail(path, 2048).replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1][:110] if lines else ""


def _write_text(path: str, text: str) -> None:
    data = (text.rstrip("\n") + "\n").encode("utf-8", "replace")
    if len(data) > MAX_FILE_BYTES - 1024:
        data = b"[... beginning left out: over 16 MB ...]\n" + data[-(MAX_FILE_BYTES - 4096):]
    with open(path, "wb") as f:
        f.write(data)


def run_step(ctx: Context, label: str, cmd: list[str], budget_s: float, log: str,
             env: dict[str, str] | None = None, interrupt_before_s: float = 0.0) -> Step:
    """Run ``cmd`` in the repository root (output -> ``log``) for at most ``budget_s`` seconds
    (:func:`bench.budgeted.run_budgeted`: its own process group; SIGINT ``interrupt_before_s`` early, so
    that pytest writes its report; SIGTERM, then SIGKILL, at the budget)."""
    phase = label.split("/")[0]
    ctx.say(phase, f"{label}: start (budget {budget_s:.0f} s): {shlex.join(cmd)}")
    done = run_budgeted(cmd, log, budget_s, cwd=ROOT, env=env or ctx.child_env(),
                        interrupt_before_s=interrupt_before_s, on_interrupt=lambda: ctx.say(phase, f"{label}: SIGINT"))
    if done.status == "error":
        ctx.say(phase, f"{label}: {done.note}")
        return Step(label, "error", 0.0, budget_s, None, done.note, log)
    ctx.say(phase, f"{label}: {done.status} in {done.elapsed_s:.1f} s" + (f" ({done.note})" if done.note else ""))
    ctx.ran.append(Step(label, done.status, round(done.elapsed_s, 1), round(budget_s), done.rc, done.note, log))
    return ctx.ran[-1]


def collect_env(path: str, dry: bool) -> int:
    """The env phase's subprocess: bench/measure.py's machine card, packages, tools, the tree's digest -> ``path``."""
    import torch

    cuda = torch.cuda.is_available()
    env = dict(measure.machine_card(torch.device("cuda" if cuda else "cpu")), cuda_available=cuda, dry=dry,
               packages=measure.package_versions(PACKAGES), tools=measure.tool_versions(TOOLS),
               tree_sha256=measure.tree_digest(ROOT, TREE))
    if not env.get("git_sha") and os.environ.get("CBAM_GIT_SHA"):  # a copy of the tree without .git
        env["git_sha"] = os.environ["CBAM_GIT_SHA"] + " (CBAM_GIT_SHA)"
    _write_text(path, json.dumps(env, indent=1))
    return 0


def phase_env(ctx: Context) -> None:
    """:func:`collect_env` in a subprocess -> env.json and ``ctx.env``."""
    path = os.path.join(ctx.out_dir, "env.json")
    step = run_step(ctx, "env", [sys.executable, "-m", "bench.gpu_check", "_env", path, *["--dry"][:ctx.dry]],
                    ctx.budget("env"), os.path.join(ctx.work_dir, "env.log"))
    ctx.results["env"] = asdict(step)
    if step.status != "ok" or not os.path.exists(path):
        return ctx.failures.append(f"env: {step.status} ({step.note}): {_tail(step.log, 600)}")
    with open(path) as f:
        ctx.env = e = json.load(f)
    ctx.say("env", _env_line(e) + "; tools: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in e["tools"].items())
            + "; packages missing: " + (", ".join(k for k, v in e["packages"].items() if v is None) or "none"))


def _env_line(env: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {env.get(k)}" for k in (
        "device_name", "capability", "sm_count", "l2_bytes", "total_memory", "driver", "cuda", "python", "torch",
        "triton", "git_sha", "tree_sha256", "platform", "cpu_count") if k in env)


def phase_sanitizer(ctx: Context, budget: float) -> None:
    """The driver plainly, then under each compute-sanitizer tool -> sanitizer.txt."""
    deadline, driver = time.monotonic() + budget, [sys.executable, *DRIVER, *(["--tiny"] if ctx.dry else [])]
    exe = None if ctx.dry else measure.find_tool("compute-sanitizer")
    ctx.results["sanitizer"] = record = {"runs": [], "status": "not run"}
    text = [f"sanitizer phase — {'--dry: CPU, Triton interpreter' if ctx.dry else 'CUDA'}", ""]
    for key in ("driver", *(SANITIZER_TOOLS if exe else ())):
        tool, left = "driver (plain run)" if key == "driver" else key, deadline - time.monotonic()
        if left < 5:
            ctx.skip(f"sanitizer/{key}", f"{max(0, left):.0f} s of the phase budget left")
            record["runs"].append({"tool": tool, "status": "skipped", "result": "skipped"})
            continue
        cmd = driver if key == "driver" else [exe, "--tool", key, "--error-exitcode", "97", "--print-limit", "30",
                                              "--launch-timeout", "120", *driver]
        step = run_step(ctx, f"sanitizer/{key}", cmd, min(ctx.budgets[f"sanitizer.{key}"], left),
                        os.path.join(ctx.work_dir, f"{key}.log"), env=ctx.child_env(PYTORCH_NO_CUDA_MEMORY_CACHING="1"))
        output = _tail(step.log, 4 << 20)
        if key == "driver":
            result, errors, why = {"ok": "ok", "timeout": "timeout"}.get(step.status, "driver-failed"), None, step.note
        else:
            result, errors, why = classify_sanitizer(output, step.rc, step.status == "timeout")
            step.note = f"{result}: {why}" if why else result
        record["runs"].append(dict(asdict(step), tool=tool, result=result, errors=errors, why=why))
        if result in ("errors", "driver-failed"):
            ctx.failures.append(f"sanitizer {key}: {result}" + (f" ({errors} errors)" if errors else "") + f": {why}")
        elif result in ("unavailable", "timeout"):
            ctx.skip(f"sanitizer/{key}", why if result == "unavailable" else f"cut at its {step.budget_s} s budget")
        text += [f"== {tool}: {result} (errors: {errors}) in {step.elapsed_s} s; {why}",
                 f"command: {shlex.join(cmd)}", output[-(1 << 20):], ""]
    results = {r["result"] for r in record["runs"]}
    if not exe:
        text.append("--dry: compute-sanitizer skipped (no CUDA device); the driver ran in Triton's interpreter"
                    if ctx.dry else "compute-sanitizer not found (PATH, /usr/local/cuda*/bin): the memory and race "
                    "checks did not run")
        ctx.skip("sanitizer/compute-sanitizer", text[-1])
    record["status"] = "FAILED" if {"errors", "driver-failed"} & results else (
        "clean" if results == {"ok", "clean"} else "incomplete: " + ", ".join(
            f"{r['tool']} {r['result']}" for r in record["runs"][1:])) if exe else (
        "skipped (--dry)" if results == {"ok"} else f"driver {record['runs'][0]['result']}") if ctx.dry \
        else "compute-sanitizer not found"
    _write_text(os.path.join(ctx.out_dir, "sanitizer.txt"), "\n".join(text))


def test_files(dry: bool) -> tuple[list[str], dict[str, str]]:
    """The tests phase's selection and what it leaves out (file -> why)."""
    if dry:
        return list(DRY_TESTS), {}
    present = sorted(f"tests/{f}" for f in os.listdir(os.path.join(ROOT, "tests")) if re.match(r"test_.*\.py$", f))
    first = [f for f in GPU_TESTS_FIRST if f in present]
    return first + [f for f in present if f not in first and f not in GPU_TESTS_EXCLUDED], \
        {f: why for f, why in GPU_TESTS_EXCLUDED.items() if f in present}


def phase_tests(ctx: Context, budget: float) -> None:
    """pytest on the device, read from its JUnit XML -> tests.txt."""
    files, excluded = test_files(ctx.dry)
    device, xml = ("cpu" if ctx.dry else "cuda"), os.path.join(ctx.work_dir, "tests.xml")
    xdist = not ctx.dry and ctx.env.get("packages", {}).get("pytest-xdist")
    workers = max(2, min(8, (os.cpu_count() or 4) // 2)) if xdist else 0
    cmd = [sys.executable, "-m", "pytest", "-rfE", "-p", "no:cacheprovider", "--color=no", f"--junitxml={xml}",
           *(["-n", str(workers), "--dist", "load"] if workers else []), *files]
    step = run_step(ctx, "tests", cmd, budget, os.path.join(ctx.work_dir, "tests.log"),
                    env=ctx.child_env(CBAM_TEST_DEVICE=device), interrupt_before_s=min(TESTS_GRACE_S, budget / 4))
    output, parsed = _tail(step.log, 2 << 20), parse_junit(xml)
    counted = re.findall(r"collected (\d+) items?|\[(\d+) items?\]", output)
    totals, collected = parsed["totals"], (int("".join(counted[-1])) if counted else None)
    ran, bad = sum(totals.values()), totals.get("failed", 0) + totals.get("error", 0)
    not_reached = [f for f in files if "::" not in f and f not in parsed["files_reported"]]
    summary = (f"{ran} run of {collected or '?'} collected: " + ", ".join(f"{v} {k}" for k, v in sorted(totals.items()))
               if ran else "no test result")
    ctx.results["tests"] = dict(asdict(step), device=device, workers=workers, files=files, excluded=excluded, ran=ran,
                                collected=collected, not_reached=not_reached, summary=summary, **parsed)
    ctx.say("tests", summary)
    if bad:
        ctx.failures.append(f"tests: {bad} failed/errored (tests.txt lists them)")
    if step.status == "timeout":
        ctx.skip("tests", f"cut at its {budget:.0f} s budget after {ran} tests; not reached: "
                 + (", ".join(not_reached) or "parts of the files started"))
    elif step.status != "ok" and step.rc != 1 and not bad:
        ctx.failures.append(f"tests: pytest exit status {step.rc} ({_last_line(step.log)})")
    lines = [f"tests phase — CBAM_TEST_DEVICE={device} ({'Triton interpreter' if ctx.dry else 'compiled kernels'})"
             + (f", {workers} pytest-xdist workers" if workers else ""), f"command: {shlex.join(cmd)}",
             f"budget {budget:.0f} s, elapsed {step.elapsed_s} s, outcome: {step.status} {step.note}".rstrip(),
             f"result: {summary}", *[f"left out: {f}: {why}" for f, why in excluded.items()],
             *(["not reached (budget): " + ", ".join(not_reached)] if not_reached else []), "", "failures and errors:",
             *([f"  {ln}" for ln in parsed["failures"]] or ["  none"]), "", "---- pytest output (the end) ----", output]
    _write_text(os.path.join(ctx.out_dir, "tests.txt"), "\n".join(lines))


def ncu_probe(ctx: Context, budget: float) -> tuple[bool, str]:
    """Whether Nsight Compute reads DRAM counters here: one tiny kernel profiled (fails fast where the
    counters are not readable, e.g. ERR_NVGPUCTRPERM)."""
    exe = measure.find_tool("ncu")
    if exe is None:
        return False, "ncu (Nsight Compute) not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/nsight-compute)"
    step = run_step(ctx, "bench/ncu-probe", [exe, "--metrics", ",".join(METRICS), "--csv", "--target-processes", "all",
                                             sys.executable, "-c", NCU_PROBE], budget,
                    os.path.join(ctx.work_dir, "ncu-probe.log"))
    out, end = _tail(step.log, 1 << 20), f"(exit status {step.rc}); {_last_line(step.log)}"
    if step.status == "timeout":
        return False, f"the ncu probe did not finish in {budget:.0f} s"
    if "ERR_NVGPUCTRPERM" in out:
        return False, "ncu may not read the GPU performance counters here (ERR_NVGPUCTRPERM)"
    try:
        got = parse_csv(out)
    except ValueError as exc:
        return False, f"ncu probe failed: {exc} {end}"
    if step.rc != 0 or got["kernels"] == 0 or got["read"] + got["write"] == 0:
        return False, f"ncu probe read no DRAM bytes ({got}) {end}"
    return True, f"ncu reads DRAM counters ({got['kernels']} kernels, {got['read'] + got['write']} bytes)"


def phase_bench(ctx: Context, budget: float) -> None:
    """The selected :data:`STEPS` in order while the budget lasts -> one merged result document (the models step's
    rows apart, in ``ctx.results["models"]``: whole networks are reported apart from the block's rows)."""
    deadline, docs = time.monotonic() + budget, []
    ctx.results["bench"] = record = {"steps": []}
    for spec in STEPS:
        label, cap = f"bench/{spec.name}", min(ctx.budgets[f"bench.{spec.name}"], deadline - time.monotonic())
        args, min_s = (spec.dry_args, spec.dry_min_s) if ctx.dry else (spec.args, spec.min_s)
        record["steps"].append(entry := {"name": spec.name, "budget_s": round(cap), "calls": []})
        if spec.name not in ctx.steps:
            entry["status"] = "not selected"
            continue
        why = (f"--dry: {'Nsight Compute needs a CUDA device' if spec.name == 'ncu' else 'GPU only'}" if args is None
               else f"{cap:.0f} s left of the bench budget, needs {min_s:.0f}" if cap < min_s else None)
        exe = spec.name == "ncu" and not why and measure.find_tool("ncu")  # bench/ncu.py looks on PATH first
        env = ctx.child_env(PATH=os.path.dirname(exe) + os.pathsep + os.environ.get("PATH", "")) if exe else None
        if spec.name == "ncu" and not why:
            ok, entry["probe"] = ncu_probe(ctx, min(40.0, cap))
            ctx.say("bench", f"ncu: {entry['probe']}")
            why = None if ok else entry["probe"]
        if why:
            entry.update(status="skipped", note=why)
            ctx.skip(label, why)
            continue
        args = tuple(shlex.split(spec.name == "models" and os.environ.get("CBAM_GPU_CHECK_MODELS_ARGS") or args))
        calls, t0, longest, entry["status"] = ("",) if ctx.dry else spec.calls, time.monotonic(), 0.0, "ok"
        for i, extra in enumerate(calls):
            rest = min(cap - (time.monotonic() - t0), deadline - time.monotonic())
            if i and (rest < min_s or (spec.similar_calls and rest < 1.2 * longest)):
                entry["status"] = "partial"
                ctx.skip(f"{label} calls {i + 1}-{len(calls)}", f"{rest:.0f} s left of its budget, one call took "
                         f"{longest:.0f} s: " + "; ".join(calls[i:]))
                break
            name = f"{label}/{i + 1}" if len(calls) > 1 else label
            out = os.path.join(ctx.work_dir, name.replace("/", "_"))
            step = run_step(ctx, name, [sys.executable, "-m", "bench", *args, *extra.split(), "--out", out,
                                        "--no-plots"], rest, out + ".log", env=env)
            if step.status == "ok" and os.path.exists(os.path.join(out, "results.json")):
                with open(os.path.join(out, "results.json")) as f:
                    doc = json.load(f)
                if "--models" in args:
                    ctx.results["models"] = dict({k: doc.get(k) for k in ("env", "config", "model_goals")},
                                                 args=list(args), results=doc.get("results", []))
                else:
                    docs.append((name.split("/", 1)[1], doc))
            elif step.status in ("failed", "error"):
                ctx.failures.append(f"{name}: {step.note}: {_last_line(step.log)}")
            elif step.status == "timeout":
                ctx.skip(name, f"cut at its {rest:.0f} s budget: its rows are lost")
            entry["calls"].append(asdict(step))
            longest = max(longest, step.elapsed_s)
            entry["status"] = entry["status"] if step.status == "ok" else "partial"
        entry["elapsed_s"] = round(time.monotonic() - t0, 1)
    doc = ctx.results["bench_doc"] = report.merge_documents(docs, ctx.env)
    record["documents"] = [name for name, _ in docs]
    record["flagged"] = [f"{r.get('id')} {r.get('provider')}: {r.get('status')} {r.get('note', '')}".strip()
                         for r in doc["results"] + ctx.results.get("models", {}).get("results", []) if is_flagged(r)]
    ctx.failures.extend(f"bench row {f}" for f in record["flagged"])


def write_outputs(ctx: Context, exit_status: int) -> str:
    """results.json, the plots and summary.md (a placeholder for a phase's file it did not write); returns the
    verdict line."""
    record = {"dry": ctx.dry, "exit_status": exit_status, "elapsed_s": round(ctx.elapsed(), 1), "budgets": ctx.budgets,
              "phases": {k: v for k, v in ctx.results.items() if k not in ("bench_doc", "models")},
              "skipped": ctx.skipped, "failures": ctx.failures, "files": list(FILES)}
    doc = dict(ctx.results.get("bench_doc") or report.merge_documents([], ctx.env), gpu_check=record)
    models = doc["models"] = ctx.results.get("models", {})  # whole networks, apart from the block's rows
    report.write_json(doc, os.path.join(ctx.out_dir, "results.json"))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No artists with labels", category=UserWarning)
            write_plots(doc, ctx.out_dir)
    except Exception as exc:  # noqa: BLE001 - plots are not worth losing the summary over
        ctx.failures.append(f"report: plots failed: {type(exc).__name__}: {exc}")
    for name, what in (("tests.txt", "tests"), ("sanitizer.txt", "sanitizer"), ("env.json", "env")):
        why = f"the {what} phase: " + ("not run (--phases)" if what not in ctx.phases else "did not finish")
        if not os.path.exists(os.path.join(ctx.out_dir, name)):
            _write_text(os.path.join(ctx.out_dir, name), json.dumps({"error": why}) if name.endswith("json") else why)
    env, tests, verdict = ctx.env or doc["env"], ctx.results.get("tests"), verdict_line(doc, record)
    phases = [[s.name, s.status, s.elapsed_s, s.budget_s, s.note] for s in ctx.ran] + \
        [[ph, "not selected", "", "", ""] for ph in PHASES if ph not in ctx.phases]
    lines = [f"# GPU acceptance run — {env.get('device_name', '?')} ({env.get('date', '?')})", "",
             *(["**--dry run on a CPU**: Triton's interpreter, tiny shapes, no compute-sanitizer; it checks that the "
                "script works, not the GPU.", ""] if ctx.dry else []),
             f"Exit status **{exit_status}**; {ctx.elapsed():.0f} s of the {ctx.budgets['total']:.0f} s budget. "
             + verdict, "", *(["## Failures", "", *[f"* {f}" for f in ctx.failures], ""] if ctx.failures else []),
             "## Skipped or cut", "", *([f"* {s}" for s in ctx.skipped] or ["* nothing"]), "", "## Phases", "",
             *["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"
               for row in [["phase / step", "status", "seconds", "budget s", "note"], ["---"] * 5, *phases]], "",
             "## Environment", "", _env_line(env) + " (env.json)", "",
             *(["Tools: " + "; ".join(f"{k}: {v or 'not found'}" for k, v in env["tools"].items()), ""]
               if env.get("tools") else [])]
    if tests:
        lines += ["## Tests", "", f"{tests['summary']} (CBAM_TEST_DEVICE={tests['device']})", "",
                  *[f"* `{f}`" for f in tests["failures"][:100]], ""]
    bench_md = os.path.join(ctx.work_dir, "results.md")  # the benchmark's own report, headings one level down
    report.write_markdown(dict(doc, results=doc["results"] + models.get("results", []),
                               model_goals=models.get("model_goals")), bench_md)
    with open(bench_md) as f:
        lines += ["#" + ln if ln.startswith("#") else ln for ln in f.read().splitlines()]
    lines += ["", "## Files", "", ", ".join(FILES) + " (results.json: a `python -m bench` result document; "
              "`python -m bench targets results.json` re-judges it, `python -m bench.readme <this folder>` "
              "regenerates the README's Performance section)", ""]
    for name in sorted(n for n in os.listdir(ctx.work_dir) if n.endswith(".log") and n != "tests.log"):
        lines += [f"<details><summary>{name} (end)</summary>", "", "```",
                  _tail(os.path.join(ctx.work_dir, name), 3000).strip(), "```", "", "</details>", ""]
    _write_text(os.path.join(ctx.out_dir, "summary.md"), "\n".join(lines))
    return verdict


def check_folder(out_dir: str) -> list[str]:
    """Problems with an acceptance folder: a file of :data:`FILES` missing, other entries, a file over 16 MB."""
    names = os.listdir(out_dir)
    problems = [f"{name} missing" for name in FILES if not os.path.isfile(os.path.join(out_dir, name))]
    if len(names) > len(FILES):
        problems.append(f"{len(names)} entries in {out_dir} (an acceptance folder holds its 8 files only): "
                        + ", ".join(sorted(set(names) - set(FILES))))
    return problems + [f"{n} is over 16 MB" for n in names if os.path.isfile(os.path.join(out_dir, n))
                       and os.path.getsize(os.path.join(out_dir, n)) > MAX_FILE_BYTES]


def _guarded(ctx: Context, name: str, fn: Any, *args: Any) -> None:
    try:
        fn(ctx, *args)
    except Exception as exc:  # noqa: BLE001 - a broken phase is reported, the others still run
        ctx.failures.append(f"{name}: internal error {type(exc).__name__}: {exc}")
        ctx.say(name, traceback.format_exc())


def run(ctx: Context) -> int:
    """All phases; returns the exit status (the files are always written)."""
    ctx.say("gpu_check", f"{'--dry (CPU, interpreter) ' if ctx.dry else ''}output {ctx.out_dir}; total budget "
                         f"{ctx.budgets['total']:.0f} s; phases {', '.join(ctx.phases)}; work folder {ctx.work_dir}")
    _guarded(ctx, "env", phase_env)
    if not ctx.dry and ctx.env and not ctx.env.get("cuda_available"):
        ctx.failures.append("no CUDA device (torch.cuda.is_available() is False): on a CPU run `bash "
                            "scripts/gpu_check.sh --dry`")
        ctx.say("gpu_check", ctx.failures[-1])
        write_outputs(ctx, 2)
        return 2
    bench_min, threads = (BENCH_MIN_S[ctx.dry] if "bench" in ctx.phases else 0), []
    for ph, fn in (("sanitizer", phase_sanitizer), ("tests", phase_tests), ("bench", phase_bench)):
        for t in threads if ph == "bench" else ():  # sanitizer and tests side by side, then the bench
            t.join()
        budget = ctx.budget(ph, 0 if ph == "bench" else bench_min)
        if ph in ctx.phases and budget < min(10.0, ctx.budgets.get(ph, 10.0)):
            ctx.skip(ph, f"{budget:.0f} s left of the total budget")
        elif ph in ctx.phases:
            threads.append(threading.Thread(target=_guarded, args=(ctx, ph, fn, budget), daemon=True))
            threads[-1].start()
    for t in threads:
        t.join()
    status = 1 if ctx.failures else 0
    try:
        verdict = write_outputs(ctx, status)
    except Exception:  # noqa: BLE001 - said; the folder check below names what is missing
        status, verdict = 1, f"internal error: {traceback.format_exc()}"
    problems = check_folder(ctx.out_dir)
    for line in [*(f"PROBLEM: {p}" for p in problems), f"wrote {ctx.out_dir}: {', '.join(FILES)}",
                 *(f"skipped: {s}" for s in ctx.skipped), *(f"FAILURE: {f}" for f in ctx.failures), verdict]:
        ctx.say("report", line)
    status = 1 if problems else status
    ctx.say("gpu_check", f"done in {ctx.elapsed():.0f} s, exit status {status}")
    return status


def main(argv: list[str] | None = None) -> int:
    """The command line (``bash scripts/gpu_check.sh``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_env"]:
        return collect_env(argv[1], "--dry" in argv[2:])
    names = [s.name for s in STEPS]
    p = argparse.ArgumentParser(prog="bash scripts/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("out_dir", nargs="?", help="output folder (default bench/results/<date>-<gpu>/)")
    p.add_argument("--dry", action="store_true", help="CPU rehearsal: interpreter, tiny shapes, no sanitizer")
    p.add_argument("--phases", default="sanitizer,tests,bench",
                   help="comma-separated subset of sanitizer,tests,bench (env and report always run)")
    p.add_argument("--steps", default=",".join(names), help="comma-separated bench steps: " + ",".join(names))
    args = p.parse_args(argv)
    phases, steps = ([x.strip() for x in a.split(",") if x.strip()] for a in (args.phases, args.steps))
    bad = [x for x in phases if x not in PHASES] + [x for x in steps if x not in names]
    if bad:
        p.error(f"unknown phase or step {bad}; phases: {', '.join(PHASES[1:4])}; steps: {', '.join(names)}")
    try:
        b = budgets(args.dry)
    except ValueError as exc:
        p.error(str(exc))
    out_dir = os.path.abspath(args.out_dir or os.path.join(ROOT, "bench", "results", "-".join((
        f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d}", "cpu-dry" if args.dry else measure.gpu_slug() or "gpu"))))
    os.makedirs(out_dir, exist_ok=True)
    for name in FILES:  # no stale file of an earlier run survives
        pathlib.Path(out_dir, name).unlink(missing_ok=True)
    ctx = Context(out_dir=out_dir, work_dir=tempfile.mkdtemp(prefix="gpu_check-"), dry=args.dry, budgets=b,
                  phases=("env", *[ph for ph in PHASES if ph in phases], "report"), steps=tuple(steps))
    try:
        return run(ctx)
    finally:
        if os.environ.get("CBAM_GPU_CHECK_KEEP_WORK") != "1":
            shutil.rmtree(ctx.work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
