"""The compiler study: every provider a CBAM user could pick, correctness first, then speed.

    python -m bench study [--quick] [--suite study|resnet50|seed|...] [--device cpu|cuda] [--out DIR]

Per shape (one case: a named shape at batch 1, fp32, NCHW by default):

1. **Build and check, cold.** dynamo is reset; each provider is built from nothing (inductor: a fresh,
   empty cache directory, in-memory caches cleared, so nothing can be hit; ONNX Runtime: export and
   session; OpenVINO: conversion and compile) and run once: ``compile_s_cold``. Its output is
   compared with the float64 reference under the project's tolerance rule (``bench/accuracy.py``):
   ``pass`` or ``fail_accuracy``; an exception is ``fail_to_run`` with its first line; a provider
   that cannot run here is ``skipped`` with the reason. What the compiler generated is kept
   (inductor's kernels and their fused ops, its bytes per scheduler node and the output code; the
   optimized graph's node count for ONNX Runtime and OpenVINO; our kernels' launches and modelled bytes).
2. **Warm build.** Built again with the provider's own caches filled (inductor: dynamo reset, same
   cache directory; ONNX Runtime: the exported model kept, a new session; OpenVINO: the converted
   model compiled again): ``compile_s_warm``.
3. **Time, interleaved.** dynamo is reset once more and every passing provider is rebuilt (warm) so
   that all live side by side; warm-up rounds are excluded; then rounds of one call each, the order
   alternating (A B C, C B A, ...), so that clock drift and a neighbour's load hit all alike. On a
   GPU L2 is flushed before every call (CUDA events). A provider that makes dynamo compile anything
   while being timed fails its row (``fail_to_run``: recompiled while being timed). Median, p20,
   p80 and the raw samples are kept. Providers that run in Triton's interpreter on a CPU (ours)
   are ``verified``, never timed.

Only ``pass``/``timed`` rows enter the summaries (bench/study_report.py): pass rate, geomean speedup
over eager, ``fast_p``, mean cold/warm compile time, peak-memory ratio, per provider and device.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bench import measure, runner
from bench import providers as registry
from bench.accuracy import check_against_reference
from bench.providers import Built, CompileOptions, compile_options
from bench.suite import SHAPES, Case, check_choices, make_cases

#: study.json's schema version (bench/study_report.py validates it)
STUDY_SCHEMA_VERSION = 1
#: the study's suites: the ResNet-50 stage shapes and the seed shape; quick: one tiny shape
STUDY_SUITES: dict[str, list[str]] = {
    "study": ["resnet50-s1", "resnet50-s2", "resnet50-s3", "resnet50-s4", "seed"],
    "resnet50": ["resnet50-s1", "resnet50-s2", "resnet50-s3", "resnet50-s4"],
    "yolo": ["yolo-p3", "yolo-p4", "yolo-p5"],
    "seed": ["seed"],
    "quick": ["tiny"],
}
#: providers left out of --quick (a second inductor compile of the same block)
QUICK_SKIP = ("compile-max-autotune",)
FAST_P = (0.0, 1.0, 1.5, 2.0)
#: ours runs in the interpreter on a CPU up to this many elements per case
INTERPRETER_MAX_ELEMENTS = runner.INTERPRETER_MAX_ELEMENTS

METHODOLOGY = {
    "reference": "float64: the eager module and input converted to float64",
    "tolerance": "float32: |out - ref64| <= 1e-5 + 1e-5*|ref64|, or no further than 2x eager float32's own "
                 "largest error where that is larger; float16/bfloat16: 2*max|eager - ref64| + 1 ulp; NaN/inf "
                 "in the reference's places (tests/tolerance.py, bench/accuracy.py)",
    "dynamo": "reset before each provider's cold and warm builds and once per shape before timing; a provider "
              "that makes dynamo compile a frame while being timed fails its row",
    "warmup": "warm-up rounds of every provider before timing, not recorded",
    "interleaving": "one call per provider per round, order alternating (A B C, C B A, ...)",
    "cpu_timer": "time.perf_counter around a synchronous call",
    "gpu_timer": "CUDA events around each call; L2 flushed before every call by writing 256 MiB",
    "statistics": "median with p20/p80 (inclusive quantiles) over the rounds; raw samples kept (samples_ms)",
    "compile_s_cold": "first build and first call with nothing cached (inductor: fresh empty cache directory, "
                      "in-memory caches cleared; ONNX Runtime: torch.onnx.export + session; OpenVINO: "
                      "convert_model + compile_model); the process's one-time costs (first imports, the C++ "
                      "toolchain's first use) paid beforehand by a throwaway build of a ReLU per family "
                      "(config.process_warmup_s)",
    "compile_s_warm": "a second build with the provider's caches filled (inductor: same cache directory after a "
                      "dynamo reset; ONNX Runtime: new session from the exported model; OpenVINO: compile_model "
                      "of the converted model)",
    "speedup": "median(eager) / median(provider), same case, same interleaved run",
    "summaries": "passing timed rows only; geomean (never an arithmetic mean) of speedups; fast_p = share of "
                 "the cases run (not skipped) that pass and, for p > 0, are timed and faster than p x eager",
    "memory_ratio": "geomean over cases of eager peak / provider peak (torch.cuda.max_memory_allocated above "
                    "the inputs); null on a CPU (no peak measured)",
    "threads": "every provider runs with torch's thread count (config.threads): torch and inductor's OpenMP "
               "kernels, ONNX Runtime intra-op threads (spinning off), OpenVINO INFERENCE_NUM_THREADS",
    "noise": "a shared machine: other processes load the CPU; interleaving spreads their load over every "
             "provider, it does not remove it",
}


@dataclass
class StudyConfig:
    """What a study runs: named shapes at one batch, dtype and layout on one device."""

    shapes: list[str]
    providers: list[str]
    device: str = "cpu"
    batch: int = 1
    dtype: str = "fp32"
    layout: str = "nchw"
    quick: bool = False
    warmup: int = 3
    min_reps: int = 7
    max_reps: int = 100
    budget_s: float = 8.0
    #: CPU threads of every provider (torch.set_num_threads; ONNX Runtime and OpenVINO read it)
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def cases(self) -> list[Case]:
        check_choices(("shape", self.shapes, SHAPES))
        return make_cases(self.shapes, [self.batch], [self.dtype], [self.layout])


def default_providers(device: str, quick: bool) -> list[str]:
    """The study's providers on ``device`` (bench/providers.py's "study" set; --quick leaves out
    :data:`QUICK_SKIP`). CUDA-only providers are listed on a CPU too: their rows say why they are skipped."""
    names = [p for p in registry.names("block", None, default="study")]
    if quick:
        names = [p for p in names if p not in QUICK_SKIP]
    return names


class _Guarded:
    """A provider's callable for the interleaved timer: an exception is kept (the row fails), not raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn, self.error = fn, ""

    def __call__(self) -> Any:
        if self.error:
            return None
        try:
            return self.fn()
        except Exception as exc:  # reported in the row
            self.error = measure.error_line(exc)
            return None


def _fail(row: dict[str, Any], status: str, note: str) -> None:
    row.update(status=status, timing="not_measured", note=note)
    for k in ("median_ms", "p20_ms", "p80_ms", "reps", "samples_ms", "speedup_vs_eager"):
        row.pop(k, None)


def _ours_generated(fn: Callable[[], Any], x_bytes: int) -> dict[str, Any]:
    """Our launches during one call and their modelled bytes (each kernel's own read/write model)."""
    import cbam_triton

    with torch.no_grad(), cbam_triton.record_launches() as launches:
        fn()
    kernels = [{"name": lc.name or getattr(lc.kernel, "__name__", "kernel"), "bytes": lc.bytes_read + lc.bytes_written,
                "l2_bytes": lc.l2_bytes} for lc in launches]
    total = sum(k["bytes"] for k in kernels)
    return {"launches": len(kernels), "kernels": kernels, "model_bytes": total, "model_x": total / x_bytes,
            "dram_model_x": (total - sum(k["l2_bytes"] for k in kernels)) / x_bytes,
            "note": "modelled bytes (each kernel's read/write model), not measured"}


def _dispatch_generated(fn: Callable[[], Any], x_bytes: int) -> dict[str, Any]:
    stats = measure.count_traffic(fn)
    return {"launches": stats.launches, "aten_ops": len(stats.ops), "model_bytes": stats.bytes_total,
            "model_x": stats.bytes_total / x_bytes,
            "note": "aten ops under the dispatch-mode traffic model (each op reads its inputs, writes its outputs)"}


def _save_code(code_dir: str | None, case: Case, name: str, built: Built) -> str | None:
    if not code_dir or not built.code:
        return None
    os.makedirs(code_dir, exist_ok=True)
    path = os.path.join(code_dir, f"{case.id}.{name}.py")
    with open(path, "w") as f:
        f.write("\n\n# ---- next graph ----\n\n".join(built.code))
    return path


def run_study_case(case: Case, names: list[str], cfg: StudyConfig, log: Callable[[str], None] = lambda _m: None,
                   extra: dict[str, registry.Provider] | None = None,
                   code_dir: str | None = None) -> list[dict[str, Any]]:
    """One row per provider for ``case`` (module docstring). ``extra``: providers not in the registry
    (tests: a deliberately wrong or raising provider)."""
    device = torch.device(cfg.device)
    specs = {n: (extra or {}).get(n) or registry.get(n) for n in names}
    torch._dynamo.reset()
    ref = runner.make_reference(case, device)
    x = runner.make_input(case, device)
    with torch.no_grad():
        eager_out = ref(x)
        ref64 = copy.deepcopy(ref).double()(x.double())
    x_bytes = case.x_bytes()
    rows: dict[str, dict[str, Any]] = {}
    built: dict[str, Built] = {}
    dirs: dict[str, str] = {}
    tmp_root = tempfile.mkdtemp(prefix="cbam-study-")
    try:
        # ---------------------------------------------------------------- 1 + 2: cold, check, warm
        for name, spec in specs.items():
            row: dict[str, Any] = dict(case.as_dict(), kind="block", provider=name, family=spec.family,
                                       device=device.type, x_bytes=x_bytes, status="pass", timing="not_measured",
                                       note="", compile_s_cold=None, compile_s_warm=None)
            rows[name] = row
            log(f"{case.id} {name}: build")
            reason = spec.unavailable(device.type, "block")
            interpreted = device.type == "cpu" and spec.interpreted_on_cpu
            if not reason and interpreted and case.batch * case.channels * case.height * case.width \
                    > INTERPRETER_MAX_ELEMENTS:
                reason = "runs in Triton's interpreter on a CPU: verified on cases up to 2^20 elements only"
            if reason:
                row.update(status="skipped", note=reason)
                continue
            inductor = spec.counts == "inductor"
            dirs[name] = os.path.join(tmp_root, name)
            try:
                torch._dynamo.reset()
                with compile_options(CompileOptions(caches_off=False, cache_dir=dirs[name], capture_code=True)):
                    b = spec.block(ref, x)
                    out = b.fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                row["compile_s_cold"] = b.compile_s  # None: nothing compiled (eager, ours)
                check = check_against_reference(out, ref64, eager_out)
                row["max_abs_err"] = check["max_abs_err"]
                row["eager_max_abs_err"] = check["eager_max_abs_err"]
                if not check["ok"]:
                    _fail(row, "fail_accuracy", check["error"] + "; not timed")
                    continue
                row["generated"] = _generated(spec, b, x_bytes)
                row["code_file"] = _save_code(code_dir, case, name, b)
                metrics = dict(b.compile_metrics or {})
                rebuild = metrics.pop("rebuild", None)
                if inductor:
                    torch._dynamo.reset()
                    with compile_options(CompileOptions(caches_off=False, cache_dir=dirs[name])):
                        row["compile_s_warm"] = spec.block(ref, x).compile_s
                    if metrics.get("bytes_accessed"):
                        row["traffic_bytes"] = metrics["bytes_accessed"]
                        row["launches"] = metrics.get("generated_kernels")
                else:
                    if callable(rebuild):
                        row["compile_s_warm"] = rebuild()
                    built[name] = b
                gen = row.get("generated") or {}
                if "model_bytes" in gen:
                    row["traffic_bytes"] = gen["model_bytes"]
                    row["launches"] = gen.get("launches")
                if row.get("traffic_bytes"):
                    row["traffic_x"] = row["traffic_bytes"] / x_bytes
            except Exception as exc:  # reported in the row, the study goes on
                _fail(row, "fail_to_run", measure.error_line(exc))
        # ------------------------------------------------------------------ 3: rebuild, time
        torch._dynamo.reset()
        for name, row in rows.items():
            spec = specs[name]
            if row["status"] != "pass" or spec.counts != "inductor":
                continue
            try:
                with compile_options(CompileOptions(caches_off=False, cache_dir=dirs[name])):
                    b = spec.block(ref, x)
                check = check_against_reference(b.fn(), ref64, eager_out)
                if not check["ok"]:
                    _fail(row, "fail_accuracy", check["error"] + " (warm rebuild); not timed")
                    continue
                built[name] = b
            except Exception as exc:
                _fail(row, "fail_to_run", measure.error_line(exc))
        for name, row in rows.items():
            if row["status"] == "pass" and device.type == "cpu" and specs[name].interpreted_on_cpu:
                row.update(timing="verified", note="matches the float64 reference in Triton's CPU interpreter; "
                                                   "not timed (GPU timings need a CUDA device)")
        timed = {n: _Guarded(built[n].fn) for n, r in rows.items() if r["status"] == "pass" and r["timing"] !=
                 "verified" and n in built}
        if device.type == "cuda":
            for n in timed:
                rows[n]["peak_mem_bytes"] = measure.gpu_peak_memory(built[n].fn, device)
        events: dict[str, int] = {n: 0 for n in timed}
        mark = {"n": 0}

        def before(_n: str) -> None:
            mark["n"] = registry.compile_events()

        def after(n: str) -> None:
            events[n] += registry.compile_events() - mark["n"]

        if timed:
            log(f"{case.id}: timing {len(timed)} providers interleaved")
            samples = measure.time_interleaved(timed, device, warmup=cfg.warmup, min_reps=cfg.min_reps,
                                               max_reps=cfg.max_reps, budget_s=cfg.budget_s, before=before,
                                               after=after)
            for n, s in samples.items():
                row = rows[n]
                if timed[n].error:
                    _fail(row, "fail_to_run", timed[n].error + " (while being timed)")
                elif events[n]:
                    _fail(row, "fail_to_run", f"recompiled while being timed ({events[n]} frame(s) compiled "
                                              "after warm-up); timings discarded")
                else:
                    row.update(measure.sample_stats(s), timing="timed")
        eager = rows.get("eager")
        for row in rows.values():
            if eager and eager.get("timing") == "timed" and row.get("timing") == "timed":
                row["speedup_vs_eager"] = eager["median_ms"] / row["median_ms"]
            if eager and eager.get("peak_mem_bytes") and row.get("peak_mem_bytes"):
                row["memory_ratio"] = eager["peak_mem_bytes"] / row["peak_mem_bytes"]
    finally:
        built.clear()
        torch._dynamo.reset()
        shutil.rmtree(tmp_root, ignore_errors=True)
    return list(rows.values())


def _generated(spec: registry.Provider, b: Built, x_bytes: int) -> dict[str, Any] | None:
    """What the provider generated for the block (module docstring)."""
    if spec.counts == "inductor":
        return b.generated
    if spec.counts == "graph":
        return b.generated
    if spec.cuda_graph:
        return None
    if spec.family == "triton":
        return _ours_generated(b.fn, x_bytes)
    if spec.counts == "dispatch":
        return _dispatch_generated(b.fn, x_bytes)
    return None


def geomean(values: list[float]) -> float | None:
    """Geometric mean (None for no values)."""
    vals = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per device and provider: ``pass_rate`` (share of the cases run — not skipped — that pass, with
    ``passed``/``cases``), ``geomean_speedup`` over eager on passing timed cases, ``fast_p`` (share of
    the cases run that pass and, for p > 0, are timed faster than p x eager; null for p > 0 where
    nothing was timed), mean ``compile_s_cold``/``compile_s_warm`` of passing cases, ``memory_ratio``
    (geomean of eager peak / provider peak; null without peaks), mean ``traffic_x`` and ``launches``
    where known, and how many rows were timed, verified, failed or skipped."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for dev in dict.fromkeys(r["device"] for r in rows):
        out[dev] = {}
        for prov in dict.fromkeys(r["provider"] for r in rows if r["device"] == dev):
            rs = [r for r in rows if r["device"] == dev and r["provider"] == prov]
            run = [r for r in rs if r["status"] != "skipped"]
            passed = [r for r in run if r["status"] == "pass"]
            timed = [r for r in passed if r["timing"] == "timed" and r.get("speedup_vs_eager")]
            n = len(run)
            fast: dict[str, float | None] = {}
            for p in FAST_P:
                key = f"{p:g}"
                if not n:
                    fast[key] = None
                elif p == 0:
                    fast[key] = len(passed) / n
                else:
                    fast[key] = (sum(1 for r in timed if r["speedup_vs_eager"] > p) / n) if timed else None
            out[dev][prov] = {
                "pass_rate": len(passed) / n if n else None, "passed": len(passed), "cases": n,
                "geomean_speedup": geomean([r["speedup_vs_eager"] for r in timed]),
                "fast_p": fast,
                "compile_s_cold": _mean([r.get("compile_s_cold") for r in passed]),
                "compile_s_warm": _mean([r.get("compile_s_warm") for r in passed]),
                "memory_ratio": geomean([r["memory_ratio"] for r in passed if r.get("memory_ratio")]),
                "traffic_x": _mean([r.get("traffic_x") for r in passed]),
                "launches": _mean([r.get("launches") for r in passed]),
                "timed": len(timed), "verified": sum(1 for r in passed if r["timing"] == "verified"),
                "fail_accuracy": sum(1 for r in rs if r["status"] == "fail_accuracy"),
                "fail_to_run": sum(1 for r in rs if r["status"] == "fail_to_run"),
                "skipped": len(rs) - n,
                "skip_reason": next((r.get("note") for r in rs if r["status"] == "skipped"), None),
            }
    return out


#: distributions whose versions the machine card records
VERSIONED = ("torch", "triton", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "openvino", "torch-tensorrt",
             "numpy")


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def warm_process(names: list[str], device: torch.device) -> dict[str, float]:
    """Pay the process's one-time costs before anything is timed: a throwaway build of a trivial
    module (ReLU) by every family in ``names`` that can run here, so that no provider's cold build
    also pays for first imports, the exporter's start-up or the C++ toolchain's first use. Returns
    the seconds each family took (recorded, not reported as a compile time)."""
    tiny = torch.nn.ReLU()
    x = torch.randn(1, 4, 4, 4, device=device)
    done: dict[str, float] = {}
    for n in names:
        spec = registry.REGISTRY.get(n)
        if spec is None or spec.family in done or spec.family == "triton" or spec.unavailable(device.type):
            continue
        t0 = time.perf_counter()
        try:
            torch._dynamo.reset()
            with compile_options(CompileOptions(caches_off=True)):
                spec.block(tiny, x).fn()
        except Exception:  # a family that fails here fails again, and is reported, in the study itself
            pass
        done[spec.family] = round(time.perf_counter() - t0, 2)
    torch._dynamo.reset()
    return done


def run_study(cfg: StudyConfig, log: Callable[[str], None] = lambda _m: None,
              extra: dict[str, registry.Provider] | None = None, code_dir: str | None = None) -> dict[str, Any]:
    """Run every case of ``cfg``; the study document (rows, summary, machine card, methodology)."""
    device = torch.device(cfg.device)
    rows: list[dict[str, Any]] = []
    sha = measure.environment(device)["git_sha"]  # the code that ran (read before, not after, the run)
    load_start = _load()
    t0 = time.perf_counter()
    log("warming the process up (a trivial module through each compiler family)")
    warmup_s = warm_process(cfg.providers, device)
    for case in cfg.cases():
        rows += run_study_case(case, cfg.providers, cfg, log, extra, code_dir)
    env = measure.machine_card(device)
    env["git_sha"] = sha
    env["versions"] = measure.package_versions(VERSIONED)
    config = dict(asdict(cfg), shapes={s: SHAPES[s] for s in cfg.shapes},
                  providers={n: ((extra or {}).get(n) or registry.get(n)).description for n in cfg.providers})
    config.pop("extra", None)
    config["process_warmup_s"] = warmup_s
    config["load_average"] = {"start": load_start, "end": _load()}  # 1-min load: how shared the machine was
    return {"schema": "cbam-triton-study", "schema_version": STUDY_SCHEMA_VERSION, "env": env,
            "methodology": METHODOLOGY, "config": config, "elapsed_s": round(time.perf_counter() - t0, 1),
            "rows": rows, "summary": summarize(rows)}
