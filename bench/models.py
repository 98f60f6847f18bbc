"""Whole-network workloads: ``python -m bench --models resnet50-cbam resnet18-cbam yolo-neck-cbam``.

Three networks with CBAM blocks, random weights (seeded; nothing is downloaded), eval mode:

* ``resnet50-cbam``: timm ``resnet50`` with ``block_args=dict(attn_layer="cbam")`` (16 timm
  ``CbamModule``), 224², batches 1 / 8 / 32.
* ``resnet18-cbam``: timm ``resnet18`` likewise (8 blocks) on a small input: the CPU quick case.
* ``yolo-neck-cbam``: a detection-style network built here from plain PyTorch layers: a strided
  conv backbone, a top-down FPN/PAN neck and an ultralytics-style ``CBAM`` after each of its three
  feature levels (stride 8, 16, 32; at 640² these are the ``yolo-p3..p5`` block shapes), 1×1 heads.

timm builds its residual blocks with ``zero_init_last=False`` here: with timm's default the last BN
of every block starts at zero, every CBAM would see an all-zero input and the comparison would
prove nothing. Each CBAM's spatial BatchNorm gets non-trivial running statistics (as the block
benchmark's reference), so folding it is exercised.

Providers: ``eager``; ``compile`` (``torch.compile``, default mode); ``triton`` (``cbam_triton.convert``);
``triton+compile`` (converted, then ``torch.compile(fullgraph=True)``: inductor fuses everything else
and calls the CBAM kernels as one opaque custom operator; a graph break is an error, so a row with
status ok/verified has zero graph breaks); ``triton-tail`` and ``triton-tail+compile`` (the same with
``convert(model, fuse_block_tail=True)``: each ResNet block's ``relu(CBAM(bn(y)) + shortcut)`` is one
operator, three launches; networks without such blocks skip them); on GPU ``triton-cudagraph`` (the
converted network captured in a CUDA graph) and ``compile-cudagraphs`` (``mode="reduce-overhead"``; the
block benchmark's ``max-autotune`` would autotune every convolution of the network). Every output is checked against
eager first with the per-dtype tolerance, the absolute part scaled by max|eager| (random-weight
networks produce logits of 10³–10⁴).

Where the bytes and the time go — the CBAM blocks' share, one definition for every provider: the
*marginal cost* of the blocks, ``T(network) − T(same network with every CBAM replaced by nn.Identity)``,
the baseline run by the same family (eager for ``eager``/``triton``, inductor for ``compile``/
``triton+compile``), divided by ``T(network)``. Traffic T: eager and triton from the dispatch mode
(:class:`bench.measure.TrafficCounter`: every aten op reads its inputs and writes its outputs once)
plus the Triton kernels' own read/write model (``Launch.bytes_read/bytes_written``); compile from
inductor's ``num_bytes_accessed`` (every scheduled kernel's buffers, extern convolutions included);
triton+compile from inductor's count with the opaque CBAM operator's buffers replaced by its kernels'
model. For eager and triton the marginal cost equals the bytes of the ops run inside the CBAM modules
(checked: ``cbam_attributed_bytes``); for the compiled networks it includes what the blocks change in
their neighbours' fusion (a tensor that must be written for the opaque operator, say). Latency share
likewise from the median timings (GPU; on a CPU for the timed providers). On a CPU, a Triton
provider at a size Triton's interpreter can't run (more than INTERPRETER_MAX_ELEMENTS CBAM input
elements) gets a ``modelled`` row: its launches are planned and counted, not run, so its traffic
uses the kernels' traffic model (outputs are verified at small sizes). ``cbam_vs_floor``: the
blocks' bytes over their floor Σ 2·|x_i| (read each block's input, write its output once); for
``triton`` from the DRAM model (bytes the L2 schedule expects L2 to serve subtracted). For the
fused-tail providers the marginal cost also takes off the norm, addition and ReLU that the tail
absorbs (they stay in the CBAM-free baseline), so it can be negative.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench import host, measure
from bench import providers as registry
from bench.accuracy import CHECK_TOL, check_output
from bench.providers import Built, compile_module
from bench.report import is_passing, is_timed
from bench.suite import DTYPES, check_choices, check_common

# ------------------------------------------------------------------------------------------ networks


class ConvBNAct(nn.Sequential):
    """Conv k×k (stride s, padding k // 2, no bias) → BatchNorm2d → SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, s: int = 1):
        super().__init__(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class ChannelAttention(nn.Module):
    """ultralytics' channel attention: ``x * sigmoid(fc(avgpool(x)))`` (one C×C 1×1 conv with bias)."""

    def __init__(self, channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1, 1, 0, bias=True)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.fc(self.pool(x)))


class SpatialAttention(nn.Module):
    """ultralytics' spatial attention: ``x * sigmoid(conv([mean_C x, max_C x]))``."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.cv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.act = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.cv1(torch.cat([torch.mean(x, 1, keepdim=True), torch.max(x, 1, keepdim=True)[0]],
                                               1)))


class CBAM(nn.Module):
    """The CBAM of the YOLO family (ultralytics' layout, written out so that no package is needed);
    ``cbam_triton.convert`` recognises it by structure."""

    def __init__(self, channels: int, kernel_size: int = 7):
        super().__init__()
        self.channel_attention = ChannelAttention(channels)
        self.spatial_attention = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_attention(self.channel_attention(x))


class NeckNet(nn.Module):
    """Backbone (strided ConvBNAct), top-down neck (upsample + concat + ConvBNAct, as YOLOv3/v5),
    CBAM after each of the three levels (stride 8, 16, 32), 1×1 heads; returns the three head maps."""

    def __init__(self, widths: tuple[int, int, int] = (128, 256, 512), outputs: int = 255):
        super().__init__()
        c3, c4, c5 = widths
        self.stem = nn.Sequential(ConvBNAct(3, c3 // 4, 3, 2), ConvBNAct(c3 // 4, c3 // 2, 3, 2))
        self.down3 = nn.Sequential(ConvBNAct(c3 // 2, c3, 3, 2), ConvBNAct(c3, c3))
        self.down4 = nn.Sequential(ConvBNAct(c3, c4, 3, 2), ConvBNAct(c4, c4))
        self.down5 = nn.Sequential(ConvBNAct(c4, c5, 3, 2), ConvBNAct(c5, c5))
        self.lat5 = ConvBNAct(c5, c4, 1)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.fuse4 = ConvBNAct(2 * c4, c4)
        self.lat4 = ConvBNAct(c4, c3, 1)
        self.fuse3 = ConvBNAct(2 * c3, c3)
        self.cbam3, self.cbam4, self.cbam5 = CBAM(c3), CBAM(c4), CBAM(c5)
        self.head3, self.head4, self.head5 = (nn.Conv2d(c, outputs, 1) for c in widths)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3 = self.down3(self.stem(x))
        p4 = self.down4(p3)
        p5 = self.down5(p4)
        n4 = self.fuse4(torch.cat([self.up(self.lat5(p5)), p4], 1))
        n3 = self.fuse3(torch.cat([self.up(self.lat4(n4)), p3], 1))
        return self.head3(self.cbam3(n3)), self.head4(self.cbam4(n4)), self.head5(self.cbam5(p5))


def _timm_resnet(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        try:
            import timm
        except ImportError as exc:
            raise RuntimeError(f"model {name}-cbam needs timm (pip install timm)") from exc
        return timm.create_model(name, pretrained=False, zero_init_last=False,
                                 block_args=dict(attn_layer="cbam"))

    return build


@dataclass(frozen=True)
class ModelSpec:
    """One network: how to build it (random weights), its input size and batches."""

    name: str
    build: Callable[[], nn.Module]
    image_size: int
    batches: tuple[int, ...]
    quick_image_size: int
    quick_batches: tuple[int, ...]
    description: str


MODELS: dict[str, ModelSpec] = {
    "resnet50-cbam": ModelSpec("resnet50-cbam", _timm_resnet("resnet50"), 224, (1, 8, 32), 64, (1,),
                               "timm resnet50, block_args=dict(attn_layer='cbam'): 16 CbamModule"),
    "resnet18-cbam": ModelSpec("resnet18-cbam", _timm_resnet("resnet18"), 64, (1, 8), 64, (1,),
                               "timm resnet18, block_args=dict(attn_layer='cbam'): 8 CbamModule (CPU quick case)"),
    "yolo-neck-cbam": ModelSpec("yolo-neck-cbam", NeckNet, 640, (1, 8, 32), 64, (1,),
                                "plain-PyTorch backbone + FPN neck, ultralytics-style CBAM on P3/P4/P5 "
                                "(128x80², 256x40², 512x20² at 640²), 1x1 heads"),
}

#: providers of the model rows by default (bench/providers.py; "triton+compile" exists only here)
PROVIDERS_CPU = registry.names("network", "cpu", default="network")
PROVIDERS_GPU = registry.names("network", "cuda", default="network")
#: the family whose CBAM-free network is each provider's baseline for the shares
BASE_FAMILY = {p.name: p.base_family for p in registry.REGISTRY.values() if p.base_family and p.network}
#: convert(model, fuse_block_tail=True): every ResNet block with CBAM ends in one fused operator
TAIL_PROVIDERS = tuple(p.name for p in registry.REGISTRY.values() if p.block_tail)
#: CPU: the converted network runs through Triton's interpreter up to this many CBAM input elements
#: per forward (summed over the blocks)
INTERPRETER_MAX_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class ModelCase:
    """One network at an input size, batch, dtype and memory layout (inference, eval mode)."""

    model: str
    batch: int
    image_size: int
    dtype: str
    layout: str

    @property
    def id(self) -> str:
        return f"{self.model}-{self.image_size}px-b{self.batch}-{self.dtype}-{self.layout}"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.image_size, self.image_size)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def x_bytes(self) -> int:
        return self.batch * 3 * self.image_size ** 2 * self.torch_dtype.itemsize

    def as_row(self) -> dict[str, Any]:
        """The result-row fields that every row has (``shape_name`` is the model's name)."""
        return {"id": self.id, "kind": "model", "shape_name": self.model, "batch": self.batch, "channels": 3,
                "height": self.image_size, "width": self.image_size, "reduction_ratio": 0,
                "dtype": self.dtype, "layout": self.layout, "mode": "forward"}


def make_model_cases(names: list[str], batches: list[int] | None, dtypes: list[str], layouts: list[str],
                     image_size: int | None = None, quick: bool = False) -> list[ModelCase]:
    """The cross product in a stable order (``batches`` None: each model's own; ``image_size`` None:
    each model's, its small one when ``quick``); raises ValueError naming an unknown choice."""
    names = list(MODELS) if names == ["all"] else names
    check_choices(("model", names, [*MODELS, "all"]))
    check_common(batches, dtypes, layouts)
    if image_size is not None and (image_size < 32 or image_size % 32):
        raise ValueError(f"--image-size must be a multiple of 32 (>= 32), got {image_size}")
    cases = []
    for n in names:
        spec = MODELS[n]
        size = image_size or (spec.quick_image_size if quick else spec.image_size)
        for b in batches or (spec.quick_batches if quick else spec.batches):
            for d in dtypes:
                for lay in layouts:
                    cases.append(ModelCase(n, b, size, d, lay))
    return cases


def _seeded_gate_bn(model: nn.Module, cbams: list[str]) -> None:
    """Non-trivial statistics for every BatchNorm2d(1) inside a CBAM (as the block benchmark's reference)."""
    for name in cbams:
        for m in model.get_submodule(name).modules():
            if isinstance(m, nn.BatchNorm2d) and m.num_features == 1:
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.3, 0.3)
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)


def cbam_names(model: nn.Module) -> list[str]:
    """Qualified names of the modules ``cbam_triton.convert`` replaces (the model is left alone)."""
    import cbam_triton

    _, done = cbam_triton.convert_with_report(model, inplace=False)
    return [r.name for r in done]


def build_model(case: ModelCase, device: torch.device, seed: int = 0) -> tuple[nn.Module, list[str]]:
    """The eager network of ``case`` (seeded random weights, eval, dtype, layout) and its CBAMs' names."""
    torch.manual_seed(seed)
    model = MODELS[case.model].build().eval()
    names = cbam_names(model)
    _seeded_gate_bn(model, names)
    model = model.to(device=device, dtype=case.torch_dtype)
    if case.layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return model, names


def make_input(case: ModelCase, device: torch.device, seed: int = 1) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(case.shape, generator=g).to(device=device, dtype=case.torch_dtype)
    return x.to(memory_format=torch.channels_last) if case.layout == "channels_last" else x


def without_cbam(model: nn.Module, names: list[str]) -> nn.Module:
    """A deep copy of ``model`` with every named CBAM replaced by ``nn.Identity``."""
    model = copy.deepcopy(model)
    for name in names:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    return model


# ---------------------------------------------------------------------------------------- providers
def _inference(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def fn() -> Any:
        with torch.no_grad():
            return module(x)
    return fn


def compile_model(module: nn.Module, x: torch.Tensor, mode: str | None = None, fullgraph: bool = False) -> Built:
    """``torch.compile`` of ``module`` for inference after a dynamo reset; the first call compiles
    (timed, inductor's metrics on, caches off: from a cache, inductor replays its byte total but not
    the per-kernel list)."""
    torch._dynamo.reset()
    return compile_module(module, x, mode=mode, fullgraph=fullgraph)


def build_provider(name: str, model: nn.Module, x: torch.Tensor) -> Built:
    """A zero-argument callable running the network with provider ``name`` (no_grad; bench/providers.py)."""
    return registry.build(name, model, x, kind="network")


# ------------------------------------------------------------------------------------- traffic count
@dataclass
class NetTraffic:
    """A network's modelled traffic split at the CBAM modules' boundaries (one forward)."""

    total_bytes: int
    cbam_bytes: int          #: bytes of the ops and Triton launches inside the CBAM modules
    cbam_l2_bytes: int       #: of those, what the L2 schedule expects L2 to serve
    cbam_x_bytes: int        #: sum of the CBAM blocks' input sizes |x_i|
    cbam_calls: int
    ops: int                 #: aten ops (+ Triton launches) of the whole forward


def count_network_traffic(module: nn.Module, x: torch.Tensor, names: list[str]) -> NetTraffic:
    """Run ``module(x)`` once (no_grad) under :class:`bench.measure.TrafficCounter`, with the ops run
    inside the named CBAM modules (forward hooks) and every Triton launch (their own model) counted apart."""
    import cbam_triton

    counter = measure.TrafficCounter()
    outside, inside = counter.stats, measure.OpStats()
    state = {"depth": 0, "x_bytes": 0, "calls": 0}

    def pre(_mod: nn.Module, args: tuple[Any, ...]) -> None:
        state["depth"] += 1
        if state["depth"] == 1:
            counter.stats = inside
            state["calls"] += 1
            state["x_bytes"] += args[0].numel() * args[0].element_size()

    def post(_mod: nn.Module, _args: tuple[Any, ...], _out: Any) -> None:
        state["depth"] -= 1
        if state["depth"] == 0:
            counter.stats = outside

    handles = []
    for name in names:
        sub = module.get_submodule(name)
        handles += [sub.register_forward_pre_hook(pre), sub.register_forward_hook(post)]
    try:
        with torch.no_grad(), cbam_triton.record_launches() as launches, counter:
            module(x)
    finally:
        for h in handles:
            h.remove()
    # every Triton launch comes from a CBAM block (cbam_triton launches nothing else)
    inside.bytes_read += sum(launch.bytes_read for launch in launches)
    inside.bytes_written += sum(launch.bytes_written for launch in launches)
    inside.l2_bytes += sum(launch.l2_bytes for launch in launches)
    inside.triton_launches += len(launches)
    return NetTraffic(outside.bytes_total + inside.bytes_total, inside.bytes_total, inside.l2_bytes,
                      state["x_bytes"], state["calls"], outside.launches + inside.launches)


def kernel_model_bytes(fn: Callable[[], Any]) -> tuple[int, int, int]:
    """(bytes, L2-served bytes, launches) of cbam_triton's Triton launches during one ``fn()``."""
    import cbam_triton

    with cbam_triton.record_launches() as launches:
        fn()
    return (sum(lc.bytes_read + lc.bytes_written for lc in launches), sum(lc.l2_bytes for lc in launches),
            len(launches))


# ------------------------------------------------------------------------------------------ running
#: seconds of repetitions per CPU timing (at least 5 calls)
CPU_BUDGET_S = 2.0


def _time(fn: Callable[[], Any], device: torch.device) -> dict[str, float]:
    return measure.time_gpu(fn) if device.type == "cuda" else measure.time_cpu(fn, budget_s=CPU_BUDGET_S)


def _interpreted(device: torch.device, provider: str) -> bool:
    spec = registry.REGISTRY.get(provider)
    return device.type == "cpu" and spec is not None and spec.interpreted_on_cpu


def run_model_case(case: ModelCase, providers: tuple[str, ...], device: torch.device, shares: bool = True,
                   log: Callable[[str], None] | None = None,
                   extra_providers: dict[str, Callable[[nn.Module, torch.Tensor], Built]] | None = None,
                   ) -> list[dict[str, Any]]:
    """Measure every provider on one network; one result row per provider (see the module docstring).

    ``extra_providers``: name -> ``make(model, x)`` (tests; counted like ``triton``, baseline eager)."""
    log = log or (lambda _msg: None)
    model, names = build_model(case, device)
    x = make_input(case, device)
    with torch.no_grad():
        expected = model(x)
    finite = all(bool(torch.isfinite(t).all()) for t in (expected if isinstance(expected, tuple) else (expected,)))
    eager_traffic = count_network_traffic(model, x, names)
    cbam_elements = eager_traffic.cbam_x_bytes // case.torch_dtype.itemsize
    base: dict[str, dict[str, Any]] = {}  # family -> {"traffic_bytes", "median_ms", "compile_s"}

    def baseline(family: str) -> dict[str, Any]:
        if family not in base:
            plain = without_cbam(model, names)
            if family == "eager":
                b: dict[str, Any] = {"traffic_bytes": count_network_traffic(plain, x, []).total_bytes}
                fn = _inference(plain, x)
            else:
                built = compile_model(plain, x)
                fn = built.fn
                b = {"traffic_bytes": built.compile_metrics["bytes_accessed"], "compile_s": built.compile_s}
            b.update(_time(fn, device))
            base[family] = b
        return base[family]

    common = dict(case.as_row(), x_bytes=case.x_bytes(), cbam_blocks=eager_traffic.cbam_calls,
                  cbam_x_bytes=eager_traffic.cbam_x_bytes, cbam_floor_bytes=2 * eager_traffic.cbam_x_bytes)
    builders: dict[str, Callable[[], Built]] = {p: (lambda p=p: build_provider(p, model, x)) for p in providers}
    for pname, make in (extra_providers or {}).items():
        builders[pname] = lambda make=make: make(model, x)
    rows: list[dict[str, Any]] = []
    for name, make in builders.items():
        row: dict[str, Any] = dict(common, provider=name, status="pass", timing="not_measured", note="")
        rows.append(row)
        log(f"{case.id} {name}")
        spec = registry.REGISTRY.get(name)
        reason = spec.unavailable(device.type, "network") if spec is not None else None
        if not reason and name in TAIL_PROVIDERS and not has_tail_blocks(model):
            reason = "no ResNet block with CBAM in this network (the fused tail needs one)"
        if reason:
            row.update(status="skipped", note=reason)
            continue
        if _interpreted(device, name) and cbam_elements > INTERPRETER_MAX_ELEMENTS:
            _modelled_row(row, name, make, names, x, eager_traffic, baseline if shares else None)
            continue
        torch._dynamo.reset()  # each compiled provider compiles afresh
        got = measure.first_run(make, device, row)
        if got is None:  # the error is reported in the row, the run goes on
            continue
        built, out = got
        ok, max_err = check_output(out, expected, case.dtype, scaled=True)
        row["max_abs_err_vs_eager"] = max_err
        row["compile_s"] = built.compile_s
        metrics = built.compile_metrics or {}
        for k in ("generated_kernels", "recompiles", "graphs", "graph_breaks", "bytes_accessed"):
            if k in metrics:
                row[k] = metrics[k]
        if not ok:
            rtol, atol = CHECK_TOL[case.dtype]
            row.update(status="fail_accuracy", note=f"output differs from eager (max abs err {max_err:.3g}, tolerance "
                                               f"{atol:g}·max|eager| + {rtol:g}·|eager|); not timed")
            continue
        if not finite:
            row["note"] = "eager's output has inf/NaN (compared in the same places)"
        # built.fn is used up before the baseline's compile (torch._dynamo.reset() retires compiled code)
        try:
            l2 = _network_traffic(row, name, built, names, x, eager_traffic, model)
        except Exception as exc:  # the traffic model is secondary: say so, keep the row
            l2 = None
            row["note"] = (row["note"] + f" traffic: {type(exc).__name__}: {exc}").strip()[:500]
        interpreted = _interpreted(device, name)
        if not interpreted:
            if device.type == "cuda":
                row["launches"] = measure.count_gpu_kernels(built.fn)
                row["peak_mem_bytes"] = measure.gpu_peak_memory(built.fn, device)
                row["host_us_per_call"] = host.enqueue_us(built.fn)  # (triton+compile: the op's host path)
            row.update(_time(built.fn, device), timing="timed")
        del built
        family = BASE_FAMILY.get(name, "eager" if name in (extra_providers or {}) else None)
        if shares and family is not None:
            b = baseline(family)
            if l2 is not None:
                _shares(row, b, l2)
            if row.get("median_ms"):
                row["base_median_ms"] = b["median_ms"]
                row["cbam_latency_share"] = (row["median_ms"] - b["median_ms"]) / row["median_ms"]
        if interpreted:
            row.update(timing="verified", note=(row["note"] + " matches eager in Triton's CPU interpreter; GPU "
                                                "timings need a CUDA device").strip())
    by = {r["provider"]: r for r in rows if r.get("median_ms")}
    for r in rows:
        if r.get("median_ms"):
            if "eager" in by:
                r["speedup_vs_eager"] = by["eager"]["median_ms"] / r["median_ms"]
            if "compile" in by:
                r["speedup_vs_compile"] = by["compile"]["median_ms"] / r["median_ms"]
    return rows


def _network_traffic(row: dict[str, Any], name: str, built: Built, names: list[str], x: torch.Tensor,
                     eager_traffic: NetTraffic, model: nn.Module | None = None) -> int:
    """The row's network traffic (module docstring); returns the blocks' bytes that the L2 schedule
    expects L2 to serve."""
    l2 = 0
    if built.compile_metrics is None:  # eager, triton, triton-cudagraph, extras: the dispatch mode
        # (no hooks on the CBAMs of a fused-tail network: a hooked CBAM makes its block run unfused;
        # every Triton launch is counted inside the blocks all the same)
        t = eager_traffic if built.module is model else count_network_traffic(
            built.module, x, [] if name in TAIL_PROVIDERS else names)
        row["traffic_bytes"] = t.total_bytes
        row["cbam_attributed_bytes"] = t.cbam_bytes
        l2 = t.cbam_l2_bytes
        if x.device.type == "cpu":
            row["launches"] = t.ops
    else:
        total = built.compile_metrics["bytes_accessed"]
        spec = registry.REGISTRY.get(name)
        if spec is not None and spec.opaque_ours:  # the opaque operator's buffers -> its kernels' own model
            if not built.compile_metrics["cbam_op_bytes"]:
                raise RuntimeError(f"inductor's per-kernel byte counts name no cbam_triton operator (of "
                                   f"{built.compile_metrics['counted_nodes']} counted): network traffic left out")
            kbytes, l2, launches = kernel_model_bytes(built.fn)
            if not launches:
                raise RuntimeError("no cbam_triton launch recorded during the compiled forward: network "
                                   "traffic left out")
            total = total - built.compile_metrics["cbam_op_bytes"] + kbytes
            row["cbam_kernel_bytes"] = kbytes
        row["traffic_bytes"] = total
        if x.device.type == "cpu":
            row["launches"] = built.compile_metrics["generated_kernels"]
    return l2


def has_tail_blocks(model: nn.Module) -> bool:
    """Whether ``convert(..., fuse_block_tail=True)`` fuses the tail of some block of ``model``."""
    from cbam_triton.converter import block_spec

    return any(block_spec(m) is not None for m in model.modules())


@contextlib.contextmanager
def planned_launches() -> Iterator[None]:
    """cbam_triton's launches planned and counted, not run (and its fast path off, whose replays
    launch directly): the traffic model of a network too large for Triton's CPU interpreter."""
    import cbam_triton.fastpath
    from cbam_triton.launchers._common import plan_only

    saved = cbam_triton.fastpath.ENABLED
    cbam_triton.fastpath.ENABLED = False
    try:
        with plan_only():
            yield
    finally:
        cbam_triton.fastpath.ENABLED = saved


def _modelled_row(row: dict[str, Any], name: str, make: Callable[[], Built], names: list[str], x: torch.Tensor,
                  eager_traffic: NetTraffic, baseline: Callable[[str], dict[str, Any]] | None) -> None:
    """A Triton provider on a CPU at a size the interpreter can't run: the network's traffic with
    the kernels' bytes from their traffic model (launches planned, not run); status "modelled",
    the output not checked (the same network is verified at small sizes)."""
    try:
        with planned_launches():
            built = make()
            built.fn()
            l2 = _network_traffic(row, name, built, names, x, eager_traffic)
    except Exception as exc:  # reported in the row, the run goes on
        row.update(status="fail_to_run", timing="not_measured", note=f"{type(exc).__name__}: {exc}"[:500])
        return
    metrics = built.compile_metrics or {}
    for k in ("generated_kernels", "recompiles", "graphs", "graph_breaks", "bytes_accessed"):
        if k in metrics:
            row[k] = metrics[k]
    row["compile_s"] = built.compile_s
    del built
    family = BASE_FAMILY.get(name)
    if baseline is not None and family is not None:
        _shares(row, baseline(family), l2)
    row.update(status="modelled", timing="not_measured",
               note="too large for Triton's CPU interpreter: the kernels' bytes from their traffic model (launches "
                    "planned, not run); output verified on small inputs")


def _shares(row: dict[str, Any], base: dict[str, Any], l2: int) -> None:
    """The CBAM blocks' marginal traffic against the CBAM-free network ``base`` of the same family."""
    row["base_traffic_bytes"] = base["traffic_bytes"]
    cbam = row["traffic_bytes"] - base["traffic_bytes"]
    row["cbam_traffic_bytes"] = cbam
    row["cbam_traffic_share"] = cbam / row["traffic_bytes"]
    if l2:
        row["cbam_dram_model_bytes"] = cbam - l2
    row["cbam_vs_floor"] = (cbam - l2) / row["cbam_floor_bytes"]


# --------------------------------------------------------------------------------------------- goals
#: the goals of the first GPU runs, recorded in every result document, never asserted
GOALS = (
    # (name, provider, row field, goal, unit, at_least, timed: judged on timed rows only)
    ("triton+compile >= 1.1x compile", "triton+compile", "speedup_vs_compile", 1.1, "x compile", True, True),
    ("triton >= 1.15x eager", "triton", "speedup_vs_eager", 1.15, "x eager", True, True),
    ("CBAM traffic of the converted network <= 1.2x its 2|x| floor", "triton", "cbam_vs_floor", 1.2,
     "x floor", False, False),
    # convert(model, fuse_block_tail=True) then torch.compile: each block's relu(CBAM(bn(y)) + shortcut) fused
    ("triton-tail+compile >= 1.15x compile", "triton-tail+compile", "speedup_vs_compile", 1.15, "x compile", True,
     True),
)
GOAL_MODEL, GOAL_DTYPE, GOAL_BATCH = "resnet50-cbam", "fp16", 32


def evaluate_goals(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Verdicts (bench/targets.py's format) of :data:`GOALS` on resnet50-cbam, fp16, batch 32 rows."""
    rows = doc.get("results", [])
    device = doc.get("env", {}).get("device_type")
    verdicts = []
    for name, provider, key, goal, unit, at_least, timed in GOALS:
        judged = is_timed if timed else is_passing
        cases = []
        for r in rows:
            if (r.get("kind") == "model" and r.get("shape_name") == GOAL_MODEL and r.get("dtype") == GOAL_DTYPE
                    and r.get("batch") == GOAL_BATCH and r.get("provider") == provider and judged(r)
                    and isinstance(r.get(key), (int, float))):
                v = float(r[key])
                cases.append({"id": r["id"], "value": round(v, 4), "met": v >= goal if at_least else v <= goal})
        verdict: dict[str, Any] = {"target": f"{GOAL_MODEL} {GOAL_DTYPE} b{GOAL_BATCH}: {name}", "goal": goal,
                                   "unit": unit, "cases": cases}
        if cases:
            values = [c["value"] for c in cases]
            verdict.update(worst=min(values) if at_least else max(values),
                           status="met" if all(c["met"] for c in cases) else "missed", why="")
        else:
            verdict.update(worst=None, status="not measured",
                           why=f"no {'timed ' if timed else ''}'{provider}' row with {key} of {GOAL_MODEL} "
                               f"{GOAL_DTYPE} batch {GOAL_BATCH}"
                               + (f" on this {device} run (GPU goals)" if device != "cuda" else ""))
        verdicts.append(verdict)
    return verdicts
