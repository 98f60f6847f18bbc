"""Run benchmark cases: build each provider, check it against eager, then measure it."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench import measure
from bench.models import quiet_metrics_log
from bench.suite import Case

#: "triton" runs the default schedule ("auto"); "triton-l2" / "triton-stream" force one (see
#: cbam_triton.schedule) so that a GPU run compares them
#: (on a CPU "auto" resolves to "stream": triton-stream would repeat triton's verification)
PROVIDERS_CPU = ("eager", "compile", "compile-max-autotune", "triton", "triton-l2")
PROVIDERS_GPU = ("eager", "compile", "compile-max-autotune", "triton", "triton-l2", "triton-stream",
                 "triton-cudagraph", "compile-cudagraphs")
#: the forced schedule of each Triton provider
TRITON_SCHEDULES = {"triton": "auto", "triton-l2": "l2", "triton-stream": "stream", "triton-cudagraph": "auto"}
#: providers of the forward+backward ("train") mode; the CUDA-graph ones are forward-only
TRAIN_PROVIDERS = ("eager", "compile", "compile-max-autotune", "triton")
#: the physical floor of big-tensor traffic, in units of |x|: forward reads x and writes out; forward +
#: backward also reads the output gradient and x and writes dx
FLOOR_X = {"forward": 2, "train": 5}
#: Output check against eager, per dtype: |out - eager| <= atol + rtol * |eager|.
CHECK_TOL = {"fp32": (1e-4, 1e-4), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2)}
#: On CPU the Triton provider runs through the interpreter: verified on cases up to this size only.
INTERPRETER_MAX_ELEMENTS = 1 << 20


@dataclass
class Built:
    fn: Callable[[], torch.Tensor]
    compile_s: float | None = None
    compile_metrics: dict[str, Any] | None = None


def make_reference(case: Case, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The eager reference with seeded weights and non-trivial BN statistics, eval mode."""
    import reference

    torch.manual_seed(seed)
    ref = reference.CBAM(case.channels, case.reduction_ratio)
    with torch.no_grad():
        bn = ref.spatial_gate.bn
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.3)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return ref.to(device=device, dtype=case.torch_dtype).eval()


def make_input(case: Case, device: torch.device, seed: int = 1) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(case.shape, generator=g).to(device=device, dtype=case.torch_dtype)
    return x.to(memory_format=torch.channels_last) if case.layout == "channels_last" else x


def make_grad(case: Case, device: torch.device, seed: int = 2) -> torch.Tensor:
    """The output gradient of the train mode (seeded, x's dtype and layout)."""
    return make_input(case, device, seed)


def _train_step(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], Any]:
    """Forward + backward of ``module`` for x and every parameter; returns (out, dx)."""
    leaf = x.detach().requires_grad_(True)
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        out = module(leaf)
        grads = torch.autograd.grad(out, [leaf, *params], g)
        return out, grads[0]

    return step


def _compile(ref: torch.nn.Module, x: torch.Tensor, mode: str | None, g: torch.Tensor | None = None) -> Built:
    """torch.compile of the reference; ``g`` given: the train mode (forward + backward compiled)."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = torch.compile(copy.deepcopy(ref), mode=mode)
    if g is not None:
        fn = _train_step(compiled, x, g)
    else:
        def fn() -> torch.Tensor:
            with torch.no_grad():
                return compiled(x)
    with measure.inductor_metrics() as metrics, quiet_metrics_log():
        t0 = time.perf_counter()
        fn()
        if x.is_cuda:
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        info = {"bytes_accessed": int(metrics.num_bytes_accessed),
                "generated_kernels": int(metrics.generated_kernel_count)}
    fn()  # a second call must not recompile
    info["recompiles"] = int(sum(counters["recompiles"].values())) if "recompiles" in counters else 0
    info["graphs"] = int(counters["stats"].get("unique_graphs", 0))
    return Built(fn, compile_s, info)


def _cudagraph(fn: Callable[[], torch.Tensor]) -> Built:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return Built(replay)


def build_provider(name: str, ref: torch.nn.Module, x: torch.Tensor) -> Built:
    """A zero-argument callable computing CBAM(x) with provider ``name``."""
    import cbam_triton

    if name == "eager":
        def eager() -> torch.Tensor:
            with torch.no_grad():
                return ref(x)
        return Built(eager)
    if name == "compile":
        return _compile(ref, x, None)
    if name == "compile-max-autotune":
        return _compile(ref, x, "max-autotune-no-cudagraphs")
    if name == "compile-cudagraphs":
        return _compile(ref, x, "max-autotune")
    if name not in TRITON_SCHEDULES:
        raise ValueError(f"unknown provider {name!r}")
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton", schedule=TRITON_SCHEDULES[name])

    def triton_fn() -> torch.Tensor:
        with torch.no_grad():
            return ours(x)

    if name == "triton-cudagraph":
        return _cudagraph(triton_fn)
    return Built(triton_fn)


def build_train_provider(name: str, ref: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> Built:
    """A zero-argument callable running forward + backward (train mode) with provider ``name``;
    it returns ``(out, dx)``. The parameters' gradients are computed too (not returned)."""
    import cbam_triton

    if name == "eager":
        return Built(_train_step(copy.deepcopy(ref), x, g))
    if name == "compile":
        return _compile(ref, x, None, g)
    if name == "compile-max-autotune":
        return _compile(ref, x, "max-autotune-no-cudagraphs", g)
    if name == "triton":
        return Built(_train_step(cbam_triton.CBAM.from_reference(ref, backend="triton"), x, g))
    raise ValueError(f"provider {name!r} has no train mode (train providers: {', '.join(TRAIN_PROVIDERS)})")


def _schedule_of(ref: torch.nn.Module, x: torch.Tensor, schedule: str) -> str:
    """The resolved schedule of the fused forward, e.g. ``"l2 x2"`` (2 chunks) or ``"stream"``."""
    import cbam_triton
    from cbam_triton.explain import explain

    plan = explain(cbam_triton.CBAM.from_reference(ref, schedule=schedule), x)
    if plan["path"] != "fused":
        return "unfused"
    s = plan["schedule"]
    return s["kind"] if s["num_chunks"] == 1 else f"{s['kind']} x{s['num_chunks']}"


def check_output(out: Any, expected: Any, dtype: str, scaled: bool = False) -> tuple[bool, float]:
    """Whether ``out`` matches eager within the per-dtype tolerance, and the max abs error.

    ``out``/``expected`` are tensors or tuples of tensors (train mode: output and dx). ``scaled``:
    the absolute tolerance is relative to the largest |expected| (gradients are sums of many terms).
    """
    if isinstance(out, tuple):
        results = [check_output(o, e, dtype, scaled) for o, e in zip(out, expected)]
        return all(ok for ok, _ in results) and len(out) == len(expected), max(err for _, err in results)
    if out.shape != expected.shape or out.dtype != expected.dtype:
        return False, float("inf")
    o, e = out.detach().float(), expected.detach().float()
    err = (o - e).abs()
    max_err = float(err.max()) if err.numel() else 0.0
    rtol, atol = CHECK_TOL[dtype]
    finite = torch.isfinite(e)
    if scaled and finite.any():
        atol = atol * max(1.0, float(e[finite].abs().max()))
    nan_ok = torch.equal(torch.isnan(o), torch.isnan(e))
    ok = nan_ok and bool((err[finite] <= atol + rtol * e[finite].abs()).all())
    return ok, max_err


def run_case(case: Case, providers: tuple[str, ...], device: torch.device,
             extra_providers: dict[str, Callable[[torch.nn.Module, torch.Tensor], Built]] | None = None,
             log: Callable[[str], None] | None = None, copy_gbps: float | None = None) -> list[dict[str, Any]]:
    """Measure every provider on ``case``; one result row per provider."""
    log = log or (lambda _msg: None)
    train = case.mode == "train"
    ref = make_reference(case, device)
    x = make_input(case, device)
    if train:
        ref.train()
        g = make_grad(case, device)
        expected = build_train_provider("eager", ref, x, g).fn()
    else:
        with torch.no_grad():
            expected = ref(x)
    x_bytes = case.x_bytes()
    rows = []
    builders: dict[str, Callable[[], Built]] = {}
    for p in providers:
        if train:
            builders[p] = lambda p=p: build_train_provider(p, ref, x, g)
        else:
            builders[p] = lambda p=p: build_provider(p, ref, x)
    for name, make in (extra_providers or {}).items():  # train mode: make(ref, x, g)
        builders[name] = (lambda make=make: make(ref, x, g)) if train else (lambda make=make: make(ref, x))
    for name, make in builders.items():
        row: dict[str, Any] = dict(case.as_dict(), provider=name, x_bytes=x_bytes, status="ok", note="")
        rows.append(row)
        log(f"{case.id} {name}")
        interpreted = device.type == "cpu" and name.startswith("triton")
        if train and name not in TRAIN_PROVIDERS and name not in (extra_providers or {}):
            row.update(status="skipped", note="forward-only provider (no train mode)")
            continue
        if interpreted and case.batch * case.channels * case.height * case.width > INTERPRETER_MAX_ELEMENTS:
            row.update(status="skipped", note="Triton on CPU runs in the interpreter: verified on small cases only")
            continue
        got = measure.first_run(make, device, row)
        if got is None:  # the error is reported in the row, the run goes on
            continue
        built, out = got
        ok, max_err = check_output(out, expected, case.dtype, scaled=train)
        row["max_abs_err_vs_eager"] = max_err
        row["compile_s"] = built.compile_s
        if built.compile_metrics:
            row.update(built.compile_metrics)
        if not ok:
            row.update(status="mismatch", note=f"output differs from eager (max abs err {max_err:.3g}); not timed")
            continue
        # traffic model and launches
        if name == "eager" or name in TRITON_SCHEDULES or name in (extra_providers or {}):
            fn_for_count = built.fn
            if name == "triton-cudagraph":  # count the eager launches that the graph replays
                fn_for_count = build_provider("triton", ref, x).fn
            stats = measure.count_traffic(fn_for_count, grad=train)
            row["traffic_bytes"] = stats.bytes_total
            row["dram_model_bytes"] = stats.bytes_total - stats.l2_bytes
            row["dram_model_x"] = row["dram_model_bytes"] / x_bytes
            if name in TRITON_SCHEDULES and not train:
                row["schedule"] = _schedule_of(ref, x, TRITON_SCHEDULES[name])
            if train:  # what autograd keeps between forward and backward
                row["saved_bytes"] = measure.saved_tensor_bytes(built.fn)
                row["saved_x"] = row["saved_bytes"] / x_bytes
            if device.type == "cpu":
                row["launches"] = stats.launches
                row["alloc_count"] = stats.alloc_count
                row["alloc_bytes"] = stats.alloc_bytes
        elif built.compile_metrics:
            row["traffic_bytes"] = built.compile_metrics["bytes_accessed"]
            if device.type == "cpu":
                row["launches"] = built.compile_metrics["generated_kernels"]
                row["note"] = "launches: inductor-generated kernels only (plus extern conv/mm)"
        if row.get("traffic_bytes") is not None:
            row["traffic_x"] = row["traffic_bytes"] / x_bytes
        if interpreted:
            row.update(status="verified",
                       note="matches eager in Triton's CPU interpreter; GPU timings need a CUDA device")
            continue
        if device.type == "cuda":
            row["launches"] = measure.count_gpu_kernels(built.fn)
            row["peak_mem_bytes"] = measure.gpu_peak_memory(built.fn, device)
            row.update(measure.time_gpu(built.fn))
            t = row["median_ms"] * 1e-3
            row["floor_gbps"] = FLOOR_X[case.mode] * x_bytes / t / 1e9
            if row.get("traffic_bytes"):
                row["model_gbps"] = row["traffic_bytes"] / t / 1e9
            if copy_gbps:
                row["copy_gbps"] = copy_gbps
                row["frac_copy_bw"] = row["floor_gbps"] / copy_gbps
        else:
            row.update(measure.time_cpu(built.fn))
    eager = next((r for r in rows if r["provider"] == "eager" and r.get("median_ms")), None)
    for r in rows:
        if eager and r.get("median_ms"):
            r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"]
    return rows
