"""The providers: every way of running CBAM that the benchmark compares, as data.

One :class:`Provider` entry per provider: its name, how it builds a block (and a whole network, and
a training step, where it has them), which devices it runs on, what it needs installed, and what it
counts (the dispatch-mode traffic model, inductor's metrics, or an exported graph's node count). The
block benchmark (``bench/runner.py``), the whole-network benchmark (``bench/models.py``) and the
compiler study (``bench/study.py``) read the same :data:`REGISTRY`; adding a compiler is one entry.

Builders take the eager module and the input and return a :class:`Built`: a zero-argument callable
computing the output, with the build (compile / export) time and what the compiler reported. No
builder resets dynamo: the caller decides (the block and network runs reset before every compiled
provider, the study once per shape, so that the providers of one shape stay compiled side by side).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import importlib.util
import io
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench import measure


@dataclass
class Built:
    """A built provider: ``fn()`` computes the output (a tensor, or a tuple in train mode / networks)."""

    fn: Callable[[], Any]
    compile_s: float | None = None
    compile_metrics: dict[str, Any] | None = None
    #: the eager-callable network behind ``fn`` (dispatch counting, CUDA-graph capture)
    module: nn.Module | None = None
    #: what the compiler generated: kernels, fused ops, graph node counts (see :func:`inductor_kernels`)
    generated: dict[str, Any] | None = None
    #: the generated source (inductor's output code), when captured
    code: list[str] | None = None


BlockFn = Callable[[nn.Module, torch.Tensor], Built]
TrainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Built]


@dataclass(frozen=True)
class Provider:
    """One provider. ``block``/``network``/``train``: its builders (None: not available for that
    kind); ``devices``: where it runs; ``default_devices``: where the plain benchmark runs it by
    default (None: ``devices``); ``defaults``: the default sets it belongs to ("block", "network",
    "study"); ``requires``: importable modules it needs (the ``[study]`` extra); ``counts``: what
    its rows count ("dispatch": the aten-op traffic model and launches, "inductor": inductor's
    metrics, "graph": the optimized graph's node count, "none"); ``counted_as``: the provider whose
    eager launches a CUDA-graph replay repeats (counted instead); ``interpreted_on_cpu``: runs in
    Triton's interpreter on a CPU (verified, never timed); ``family``: the compiler family (the
    networks' CBAM-free baseline: ``base_family``)."""

    name: str
    family: str
    description: str
    block: BlockFn | None
    network: BlockFn | None = None
    train: TrainFn | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    default_devices: tuple[str, ...] | None = None
    defaults: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    counts: str = "dispatch"
    counted_as: str | None = None
    interpreted_on_cpu: bool = False
    cuda_graph: bool = False
    base_family: str | None = None
    schedule: str | None = None
    #: a compiled graph holding our kernels as one opaque operator: its bytes come from the kernels' model
    opaque_ours: bool = False
    #: converts with ``fuse_block_tail=True`` (networks with ResNet blocks carrying CBAM only)
    block_tail: bool = False
    #: a further check, once the required modules are there: ``probe(device)`` -> why not, or None
    probe: Callable[[str], str | None] | None = None

    def unavailable(self, device: str, kind: str = "block", mode: str = "forward") -> str | None:
        """Why this provider cannot run here (one line), or None."""
        if mode == "train":
            if kind != "block" or self.train is None:
                return "forward-only provider (no train mode)"
        elif (self.network if kind == "network" else self.block) is None:
            return f"no {kind} builder (runs on {'whole networks' if kind == 'block' else 'blocks'} only)"
        if device not in self.devices:
            return "needs a CUDA device" if self.devices == ("cuda",) else f"runs on {', '.join(self.devices)} only"
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return f"needs {mod} (pip install -e '.[study]')"
        return self.probe(device) if self.probe is not None else None


# ------------------------------------------------------------------------------------------- eager
def _inference(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def fn() -> Any:
        with torch.no_grad():
            return module(x)
    return fn


def train_step(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], Any]:
    """Forward + backward of ``module`` for x and every parameter; returns (out, dx)."""
    leaf = x.detach().requires_grad_(True)
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        out = module(leaf)
        grads = torch.autograd.grad(out, [leaf, *params], g)
        return out, grads[0]

    return step


def _eager(module: nn.Module, x: torch.Tensor) -> Built:
    return Built(_inference(module, x), module=module)


def _eager_train(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Built:
    return Built(train_step(copy.deepcopy(module), x, g))


def cudagraph(fn: Callable[[], Any]) -> Built:
    """``fn`` captured in a CUDA graph (after three warm-up calls on a side stream), timed by replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> Any:
        graph.replay()
        return out

    return Built(replay)


def _eager_cudagraph(module: nn.Module, x: torch.Tensor) -> Built:
    return Built(cudagraph(_inference(module, x)).fn, module=module)


# --------------------------------------------------------------------------------------- inductor
@dataclass(frozen=True)
class CompileOptions:
    """How :func:`compile_module` treats caches: ``caches_off`` (inductor's caches forced off: a cold
    compile with honest metrics), else ``cache_dir`` (an inductor cache directory to use, e.g. a
    fresh one for a cold compile and the same one again for a warm compile); ``capture_code``: keep
    the generated source (``Built.code``)."""

    caches_off: bool = True
    cache_dir: str | None = None
    capture_code: bool = False


_OPTIONS: contextvars.ContextVar[CompileOptions | None] = contextvars.ContextVar("compile_options", default=None)


@contextlib.contextmanager
def compile_options(options: CompileOptions) -> Iterator[None]:
    """Build compiled providers with ``options`` inside this block (default: caches off)."""
    token = _OPTIONS.set(options)
    try:
        yield
    finally:
        _OPTIONS.reset(token)


@contextlib.contextmanager
def _caches(options: CompileOptions) -> Iterator[None]:
    import warnings

    config = getattr(torch.compiler, "config", None)
    if config is None or not hasattr(config, "force_disable_caches"):
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
        stack.enter_context(config.patch(force_disable_caches=options.caches_off))
        if not options.caches_off and options.cache_dir:
            from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

            stack.enter_context(temporary_cache_dir(options.cache_dir))
        yield


@contextlib.contextmanager
def quiet_metrics_log() -> Iterator[None]:
    """Keep inductor's per-graph metrics (enabled for num_bytes_accessed) out of the terminal: one
    record per graph lists every scheduler node."""
    log = logging.getLogger("torch._inductor.compile_fx.__inductor_metrics")

    def drop(_record: logging.LogRecord) -> bool:
        return False

    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def _cbam_op_bytes(nodes_num_elem: list[Any]) -> int:
    """Bytes inductor counted for cbam_triton's opaque operators (4 * its per-node 'elements')."""
    total = 0
    for node, elems in nodes_num_elem:
        op = getattr(getattr(node, "node", None), "op_overload", None)
        if op is not None and str(op).startswith("cbam_triton."):
            total += 4 * int(elems)
    return total


def _node_bytes(nodes_num_elem: list[Any]) -> list[dict[str, Any]]:
    """Inductor's scheduler nodes with the bytes it counted for each (4 bytes per counted element, as
    ``num_bytes_accessed``): fused nodes name their members."""
    out = []
    for node, elems in nodes_num_elem:
        name = node.get_name() if hasattr(node, "get_name") else str(node)
        out.append({"node": name, "kind": type(node).__name__, "bytes": 4 * int(elems)})
    return out


_KERNEL_DEF = re.compile(r"^(\w+) = async_compile\.(\w+)\(", re.M)
_EXTERN_CALL = re.compile(r"extern_kernels\.(\w+)\(")
#: inductor's kernel names: a prefix, the fused aten ops, an index
_PREFIXES = ("cpp_fused_", "triton_poi_fused_", "triton_red_fused_", "triton_per_fused_", "triton_tem_fused_",
             "triton_fused_", "triton_")


def inductor_kernels(code: list[str]) -> dict[str, Any]:
    """The kernels in inductor's output code: each generated kernel with the ops its name says it fused
    and how often the graph calls it, and the extern (library) calls, e.g. ``addmm`` and ``convolution``."""
    kernels: list[dict[str, Any]] = []
    externs: dict[str, int] = {}
    for src in code:
        for name, how in _KERNEL_DEF.findall(src):
            body = name
            for p in _PREFIXES:
                if name.startswith(p):
                    body = name[len(p):]
                    break
            ops = body.rsplit("_", 1)[0] if body.rsplit("_", 1)[-1].isdigit() else body
            calls = len(re.findall(rf"^\s+{name}(?:\.run)?\(", src, re.M))
            kernels.append({"name": name, "backend": how, "fused_ops": ops, "calls": calls})
        for ext in _EXTERN_CALL.findall(src):
            externs[ext] = externs.get(ext, 0) + 1
    return {"generated_kernels": len(kernels), "kernel_calls": sum(k["calls"] for k in kernels),
            "kernels": kernels, "extern_calls": externs}


def _compile_counts() -> dict[str, int]:
    """dynamo's running totals: graphs compiled, recompilations, graph breaks."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]), "recompiles": int(sum(counters["recompiles"].values())),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def compile_events() -> int:
    """Frames dynamo has been asked to compile so far (a compile or a recompile each; cache hits add none)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"])


def compile_module(module: nn.Module, x: torch.Tensor, mode: str | None = None, fullgraph: bool = False,
                   g: torch.Tensor | None = None) -> Built:
    """``torch.compile`` of ``module`` (not copied); the first call compiles (timed, inductor's metrics
    on, caches as :func:`compile_options` says). ``g`` given: the train mode (forward + backward)."""
    options = _OPTIONS.get() or CompileOptions()
    before = _compile_counts()
    compiled = torch.compile(module, mode=mode, fullgraph=fullgraph)
    fn = train_step(compiled, x, g) if g is not None else _inference(compiled, x)
    code: list[str] | None = None
    with measure.inductor_metrics() as metrics, quiet_metrics_log(), _caches(options):
        t0 = time.perf_counter()
        if options.capture_code:
            from torch._inductor.utils import run_and_get_code

            _, code = run_and_get_code(fn)
        else:
            fn()
        if x.is_cuda:
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
        nodes = list(metrics.nodes_num_elem)
        info = {"bytes_accessed": int(metrics.num_bytes_accessed),
                "generated_kernels": int(metrics.generated_kernel_count),
                "cbam_op_bytes": _cbam_op_bytes(nodes), "counted_nodes": len(nodes)}
        node_bytes = _node_bytes(nodes)
    fn()  # a second call must not recompile
    after = _compile_counts()
    info.update({k: after[k] - before[k] for k in after})
    generated = None
    if code:
        generated = dict(inductor_kernels(code), bytes_accessed=info["bytes_accessed"], scheduler_nodes=node_bytes)
    return Built(fn, compile_s, info, module, generated=generated, code=code)


def _compile(mode: str | None) -> BlockFn:
    return lambda module, x: compile_module(copy.deepcopy(module), x, mode)


def _compile_train(mode: str | None) -> TrainFn:
    return lambda module, x, g: compile_module(copy.deepcopy(module), x, mode, g=g)


# ----------------------------------------------------------------------------------------- triton
def _triton_block(schedule: str, graph: bool = False) -> BlockFn:
    def build(ref: nn.Module, x: torch.Tensor) -> Built:
        import cbam_triton

        ours = cbam_triton.CBAM.from_reference(ref, backend="triton", schedule=schedule)
        fn = _inference(ours, x)
        return Built(cudagraph(fn).fn if graph else fn, module=ours)
    return build


def _triton_train(ref: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Built:
    import cbam_triton

    return Built(train_step(cbam_triton.CBAM.from_reference(ref, backend="triton"), x, g))


@contextlib.contextmanager
def warnings_as_errors() -> Iterator[None]:
    """A CBAM that convert leaves unconverted would make the 'triton' network partly eager: refuse it."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="cbam_triton.convert")
        yield


def convert_network(model: nn.Module, fuse_block_tail: bool = False) -> nn.Module:
    """``cbam_triton.convert`` of a copy of ``model``; raises if it replaced no CBAM or left one (and,
    with ``fuse_block_tail``, if no ResNet block's tail was fused)."""
    import cbam_triton

    with warnings_as_errors():
        converted, done = cbam_triton.convert_with_report(model, inplace=False, fuse_block_tail=fuse_block_tail)
    if not done:
        raise RuntimeError("cbam_triton.convert replaced no CBAM in this network")
    if fuse_block_tail and not any(r.dialect.startswith("tail: ") for r in done):
        raise RuntimeError("no ResNet block with CBAM in this network: nothing for the fused tail")
    return converted


def _triton_network(graph: bool = False, tail: bool = False) -> BlockFn:
    def build(model: nn.Module, x: torch.Tensor) -> Built:
        converted = convert_network(model, tail)
        fn = _inference(converted, x)
        return Built(cudagraph(fn).fn if graph else fn, module=converted)
    return build


def _triton_compile_network(tail: bool = False, mode: str | None = None) -> BlockFn:
    def build(model: nn.Module, x: torch.Tensor) -> Built:
        """Converted, then ``torch.compile(fullgraph=True)`` (``mode``: e.g. ``"reduce-overhead"``, CUDA
        graphs): a graph break raises, so a built provider has none."""
        return compile_module(convert_network(model, tail), x, mode=mode, fullgraph=True)
    return build


# ------------------------------------------------------------------------------------ ONNX Runtime
def export_onnx(module: nn.Module, x: torch.Tensor) -> bytes:
    """The module exported with ``torch.onnx.export`` (the dynamo exporter), as ONNX bytes."""
    buf = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(module, (x,), buf, dynamo=True)
    return buf.getvalue()


def _onnx_node_count(path: str) -> int | None:
    try:
        import onnx

        return len(onnx.load(path).graph.node)
    except Exception:  # the count is secondary: an optimized model that cannot be saved gives none
        return None


def _ort_session(model: bytes, cuda: bool) -> tuple[Any, dict[str, Any]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # torch's thread count, and no spinning: idle ORT threads would otherwise keep the cores busy
    # between calls and slow whatever runs next (an interleaved timing, the rest of a network)
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        so.optimized_model_filepath = path
        providers = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        session = ort.InferenceSession(model, so, providers=providers)
        info = {"graph_nodes": _onnx_node_count(path), "execution_provider": providers[0]}
    return session, info


def _ort_probe(device: str) -> str | None:
    """On a GPU ONNX Runtime needs its CUDA execution provider (the onnxruntime-gpu build)."""
    if device != "cuda":
        return None
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    return None


def _onnxruntime(module: nn.Module, x: torch.Tensor) -> Built:
    """ONNX Runtime: the CPU execution provider on a CPU; on a GPU the CUDA provider with I/O binding
    (input and output stay on the device: no host<->device copy is timed)."""
    import onnxruntime as ort

    cuda = x.is_cuda
    if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError("onnxruntime has no CUDAExecutionProvider here (pip install onnxruntime-gpu)")
    t0 = time.perf_counter()
    model = export_onnx(module, x)
    export_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    session, info = _ort_session(model, cuda)
    name = session.get_inputs()[0].name
    if cuda:
        xc = x.contiguous()
        with torch.no_grad():
            out = torch.empty_like(module(xc), memory_format=torch.contiguous_format)
        binding = session.io_binding()
        elem = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}[x.dtype]
        binding.bind_input(name, "cuda", x.device.index or 0, elem, tuple(xc.shape), xc.data_ptr())
        binding.bind_output(session.get_outputs()[0].name, "cuda", x.device.index or 0, elem, tuple(out.shape),
                            out.data_ptr())

        def fn() -> torch.Tensor:
            session.run_with_iobinding(binding)
            return out
    else:
        xn = x.detach().contiguous().numpy()

        def fn() -> torch.Tensor:
            return torch.from_numpy(session.run(None, {name: xn})[0])

    fn()
    session_s = time.perf_counter() - t1

    def rebuild() -> float:  # warm: the exported model kept, a new session
        t = time.perf_counter()
        _ort_session(model, cuda)
        return time.perf_counter() - t

    info.update(export_s=export_s, session_s=session_s, rebuild=rebuild)
    return Built(fn, export_s + session_s, info, generated={"graph_nodes": info["graph_nodes"],
                                                            "execution_provider": info["execution_provider"]})


# ---------------------------------------------------------------------------------------- OpenVINO
def _openvino(precision: str | None) -> BlockFn:
    def build(module: nn.Module, x: torch.Tensor) -> Built:
        """``openvino.convert_model`` then ``compile_model`` on the CPU plugin; ``precision``: the
        ``INFERENCE_PRECISION_HINT`` (None: the plugin's default, which may lower fp32 to bf16/fp16)."""
        import openvino as ov

        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ov_model = ov.convert_model(module, example_input=x)
        convert_s = time.perf_counter() - t0
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_NUM_THREADS": torch.get_num_threads()}  # as torch and ORT
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        t1 = time.perf_counter()
        compiled = core.compile_model(ov_model, "CPU", config)
        request = compiled.create_infer_request()
        xn = x.detach().contiguous().numpy()

        def fn() -> torch.Tensor:  # no copy of the input or the output (copies would be timed too)
            request.infer({0: xn}, share_inputs=True, share_outputs=True)
            return torch.from_numpy(request.get_output_tensor(0).data)

        fn()
        compile_s = time.perf_counter() - t1

        def rebuild() -> float:  # warm: the converted model kept, compiled again
            t = time.perf_counter()
            core.compile_model(ov_model, "CPU", config)
            return time.perf_counter() - t

        nodes = len(compiled.get_runtime_model().get_ops())
        hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        info = {"convert_s": convert_s, "session_s": compile_s, "graph_nodes": nodes, "precision": hint,
                "rebuild": rebuild}
        return Built(fn, convert_s + compile_s, info, generated={"graph_nodes": nodes, "inference_precision": hint})
    return build


# ---------------------------------------------------------------------------------- Torch-TensorRT
def _tensorrt(module: nn.Module, x: torch.Tensor) -> Built:
    import torch_tensorrt

    t0 = time.perf_counter()
    trt = torch_tensorrt.compile(copy.deepcopy(module), ir="dynamo", inputs=[x], enabled_precisions={x.dtype})
    fn = _inference(trt, x)
    fn()
    torch.cuda.synchronize()
    return Built(fn, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------- registry
_T = "the Triton kernels of cbam_triton"
REGISTRY: dict[str, Provider] = {p.name: p for p in (
    Provider("eager", "eager", "reference.CBAM in eager PyTorch", _eager, _eager, _eager_train,
             defaults=("block", "network", "study"), base_family="eager"),
    Provider("compile", "inductor", "torch.compile, default mode (inductor; C++ kernels on a CPU)",
             _compile(None), lambda m, x: compile_module(copy.deepcopy(m), x), _compile_train(None),
             defaults=("block", "network", "study"), counts="inductor", base_family="compile"),
    Provider("compile-max-autotune", "inductor", "torch.compile(mode='max-autotune-no-cudagraphs')",
             _compile("max-autotune-no-cudagraphs"), None, _compile_train("max-autotune-no-cudagraphs"),
             defaults=("block", "study"), counts="inductor"),
    Provider("triton", "triton", f"{_T}, schedule 'auto' (cbam_triton.convert on networks)",
             _triton_block("auto"), _triton_network(), _triton_train, defaults=("block", "network", "study"),
             interpreted_on_cpu=True, base_family="eager", schedule="auto"),
    Provider("triton-l2", "triton", f"{_T}, schedule forced to 'l2' (x re-read from L2 on a GPU)",
             _triton_block("l2"), defaults=("block", "study"), interpreted_on_cpu=True, schedule="l2"),
    Provider("triton-stream", "triton", f"{_T}, schedule forced to 'stream' (on a CPU 'auto' is 'stream')",
             _triton_block("stream"), defaults=("block",), default_devices=("cuda",), interpreted_on_cpu=True,
             schedule="stream"),
    Provider("triton-cudagraph", "triton", f"{_T} captured in a CUDA graph, timed by replay",
             _triton_block("auto", graph=True), _triton_network(graph=True), devices=("cuda",),
             defaults=("block", "network", "study"), counted_as="triton", interpreted_on_cpu=True,
             cuda_graph=True, schedule="auto"),
    Provider("compile-cudagraphs", "inductor", "torch.compile(mode='max-autotune') on blocks (autotuning + CUDA "
             "graphs), mode='reduce-overhead' on networks", _compile("max-autotune"),
             lambda m, x: compile_module(copy.deepcopy(m), x, mode="reduce-overhead"), devices=("cuda",),
             defaults=("block", "network", "study"), counts="inductor", cuda_graph=True),
    Provider("compile-reduce-overhead", "inductor", "torch.compile(mode='reduce-overhead') (CUDA graphs)",
             _compile("reduce-overhead"), devices=("cuda",), defaults=("study",), counts="inductor",
             cuda_graph=True),
    Provider("eager-cudagraph", "eager", "eager PyTorch captured in a CUDA graph, timed by replay",
             _eager_cudagraph, devices=("cuda",), defaults=("study",), counted_as="eager", cuda_graph=True),
    Provider("triton+compile", "inductor", "cbam_triton.convert, then torch.compile(fullgraph=True): the CBAM "
             "kernels one opaque operator", None, _triton_compile_network(), defaults=("network",),
             counts="inductor", interpreted_on_cpu=True, base_family="compile", opaque_ours=True),
    Provider("triton+compile-cudagraphs", "inductor", "cbam_triton.convert, then torch.compile(mode='reduce-"
             "overhead', fullgraph=True): the compiled network with the CBAM operators captured in CUDA graphs",
             None, _triton_compile_network(mode="reduce-overhead"), devices=("cuda",), defaults=("network",),
             counts="inductor", base_family="compile", opaque_ours=True, cuda_graph=True),
    Provider("triton-tail", "triton", "cbam_triton.convert(fuse_block_tail=True): each ResNet block's "
             "relu(CBAM(bn(y)) + shortcut) in the fused launches", None, _triton_network(tail=True),
             defaults=("network",), interpreted_on_cpu=True, base_family="eager", block_tail=True),
    Provider("triton-tail+compile", "inductor", "convert(fuse_block_tail=True), then torch.compile(fullgraph=True)",
             None, _triton_compile_network(tail=True), defaults=("network",), counts="inductor",
             interpreted_on_cpu=True, base_family="compile", opaque_ours=True, block_tail=True),
    Provider("onnxruntime", "onnxruntime", "torch.onnx.export, then ONNX Runtime (CPU execution provider, torch's "
             "thread count, no spinning; on a GPU the CUDA provider with I/O binding)", _onnxruntime,
             defaults=("study",), requires=("onnxruntime", "onnxscript", "onnx"), counts="graph",
             probe=_ort_probe),
    Provider("openvino", "openvino", "openvino.convert_model + compile_model on the CPU plugin, "
             "INFERENCE_PRECISION_HINT=f32, torch's thread count", _openvino("f32"), devices=("cpu",),
             defaults=("study",), requires=("openvino",), counts="graph"),
    Provider("openvino-default", "openvino", "OpenVINO with the CPU plugin's default inference precision (may "
             "lower fp32)", _openvino(None), devices=("cpu",), defaults=("study",), requires=("openvino",),
             counts="graph"),
    Provider("torch-tensorrt", "tensorrt", "torch_tensorrt.compile(ir='dynamo'), the input's precision",
             _tensorrt, devices=("cuda",), defaults=("study",), requires=("torch_tensorrt",), counts="none"),
)}


def get(name: str) -> Provider:
    """The provider called ``name``; ValueError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown provider {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names(kind: str = "block", device: str | None = None, default: str | None = None) -> tuple[str, ...]:
    """Providers with a ``kind`` builder ("block" or "network"), in registry order; ``device``: those that
    run there; ``default``: only the members of that default set ("block", "network", "study") that
    run by default on ``device``."""
    out = []
    for p in REGISTRY.values():
        if (p.network if kind == "network" else p.block) is None:
            continue
        if device is not None and device not in (p.devices if default is None else (p.default_devices or p.devices)):
            continue
        if default is not None and default not in p.defaults:
            continue
        out.append(p.name)
    return tuple(out)


def train_names() -> tuple[str, ...]:
    """Providers with a train mode (forward + backward)."""
    return tuple(p.name for p in REGISTRY.values() if p.train is not None)


def build(name: str, module: nn.Module, x: torch.Tensor, kind: str = "block") -> Built:
    """Build provider ``name`` for ``module`` (a reference CBAM block, or a network) on input ``x``."""
    p = get(name)
    builder = p.network if kind == "network" else p.block
    if builder is None:
        raise ValueError(f"provider {name!r} has no {kind} builder")
    return builder(module, x)


def build_train(name: str, module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Built:
    """Build the train mode (forward + backward; returns ``(out, dx)``) of provider ``name``."""
    p = get(name)
    if p.train is None:
        raise ValueError(f"provider {name!r} has no train mode (train providers: {', '.join(train_names())})")
    return p.train(module, x, g)
