"""Run benchmark cases: build each provider, check it against eager, then measure it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bench import measure
from bench import providers as registry
from bench.accuracy import CHECK_TOL, check_output
from bench.providers import Built
from bench.suite import Case

__all__ = ["CHECK_TOL", "Built", "Case", "build_provider", "build_train_provider", "check_output", "make_grad",
           "make_input", "make_reference", "run_case"]

#: the block providers run by default (bench/providers.py): "triton" runs the default schedule
#: ("auto"); "triton-l2" / "triton-stream" force one so that a GPU run compares them (on a CPU "auto"
#: resolves to "stream": triton-stream would repeat triton's verification)
PROVIDERS_CPU = registry.names("block", "cpu", default="block")
PROVIDERS_GPU = registry.names("block", "cuda", default="block")
#: providers of the forward+backward ("train") mode; the CUDA-graph ones are forward-only
TRAIN_PROVIDERS = registry.train_names()
#: the physical floor of big-tensor traffic, in units of |x|: forward reads x and writes out; forward +
#: backward also reads the output gradient and x and writes dx
FLOOR_X = {"forward": 2, "train": 5}
#: On CPU the Triton provider runs through the interpreter: verified on cases up to this size only.
INTERPRETER_MAX_ELEMENTS = 1 << 20


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


def build_provider(name: str, ref: torch.nn.Module, x: torch.Tensor) -> Built:
    """A zero-argument callable computing CBAM(x) with provider ``name`` (bench/providers.py)."""
    return registry.build(name, ref, x)


def build_train_provider(name: str, ref: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> Built:
    """A zero-argument callable running forward + backward (train mode) with provider ``name``;
    it returns ``(out, dx)``. The parameters' gradients are computed too (not returned)."""
    return registry.build_train(name, ref, x, g)


def _schedule_of(ref: torch.nn.Module, x: torch.Tensor, schedule: str) -> str:
    """The resolved schedule of the fused forward, e.g. ``"l2 x2"`` (2 chunks) or ``"stream"``."""
    import cbam_triton
    from cbam_triton.explain import explain

    plan = explain(cbam_triton.CBAM.from_reference(ref, schedule=schedule), x)
    if plan["path"] != "fused":
        return "unfused"
    s = plan["schedule"]
    return s["kind"] if s["num_chunks"] == 1 else f"{s['kind']} x{s['num_chunks']}"


def run_case(case: Case, providers: tuple[str, ...], device: torch.device,
             extra_providers: dict[str, Callable[[torch.nn.Module, torch.Tensor], Built]] | None = None,
             log: Callable[[str], None] | None = None, copy_gbps: float | None = None) -> list[dict[str, Any]]:
    """Measure every provider on ``case``; one result row per provider (``status`` and ``timing``:
    bench/report.py). ``extra_providers``: name -> ``make(ref, x)`` (train mode ``make(ref, x, g)``),
    counted with the dispatch mode like eager (tests)."""
    log = log or (lambda _msg: None)
    extra = extra_providers or {}
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
    for name, make in extra.items():
        builders[name] = (lambda make=make: make(ref, x, g)) if train else (lambda make=make: make(ref, x))
    for name, make in builders.items():
        row: dict[str, Any] = dict(case.as_dict(), provider=name, x_bytes=x_bytes, status="pass",
                                   timing="not_measured", note="")
        rows.append(row)
        log(f"{case.id} {name}")
        spec = registry.REGISTRY.get(name)
        interpreted = device.type == "cpu" and spec is not None and spec.interpreted_on_cpu
        reason = spec.unavailable(device.type, "block", case.mode) if spec is not None else None
        if reason:
            row.update(status="skipped", note=reason)
            continue
        if interpreted and case.batch * case.channels * case.height * case.width > INTERPRETER_MAX_ELEMENTS:
            row.update(status="skipped", note="Triton on CPU runs in the interpreter: verified on small cases only")
            continue
        torch._dynamo.reset()  # each compiled provider compiles afresh
        got = measure.first_run(make, device, row)
        if got is None:  # the error is reported in the row, the run goes on
            continue
        built, out = got
        ok, max_err = check_output(out, expected, case.dtype, scaled=train)
        row["max_abs_err_vs_eager"] = max_err
        row["compile_s"] = built.compile_s
        if built.compile_metrics:
            row.update({k: v for k, v in built.compile_metrics.items() if isinstance(v, (int, float))})
        if not ok:
            row.update(status="fail_accuracy",
                       note=f"output differs from eager (max abs err {max_err:.3g}); not timed")
            continue
        counts = "dispatch" if spec is None else spec.counts
        if counts == "dispatch":  # traffic model and launches
            fn_for_count = built.fn
            if spec is not None and spec.counted_as:  # count the eager launches that the graph replays
                fn_for_count = build_provider(spec.counted_as, ref, x).fn
            stats = measure.count_traffic(fn_for_count, grad=train)
            row["traffic_bytes"] = stats.bytes_total
            row["dram_model_bytes"] = stats.bytes_total - stats.l2_bytes
            row["dram_model_x"] = row["dram_model_bytes"] / x_bytes
            if spec is not None and spec.schedule and not train:
                row["schedule"] = _schedule_of(ref, x, spec.schedule)
            if train:  # what autograd keeps between forward and backward
                row["saved_bytes"] = measure.saved_tensor_bytes(built.fn)
                row["saved_x"] = row["saved_bytes"] / x_bytes
            if device.type == "cpu":
                row["launches"] = stats.launches
                row["alloc_count"] = stats.alloc_count
                row["alloc_bytes"] = stats.alloc_bytes
        elif counts == "inductor" and built.compile_metrics:
            row["traffic_bytes"] = built.compile_metrics["bytes_accessed"]
            if device.type == "cpu":
                row["launches"] = built.compile_metrics["generated_kernels"]
                row["note"] = "launches: inductor-generated kernels only (plus extern conv/mm)"
        if row.get("traffic_bytes") is not None:
            row["traffic_x"] = row["traffic_bytes"] / x_bytes
        if interpreted:
            row.update(timing="verified",
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
        row["timing"] = "timed"
    eager = next((r for r in rows if r["provider"] == "eager" and r.get("median_ms")), None)
    for r in rows:
        if eager and r.get("median_ms"):
            r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"]
    return rows
