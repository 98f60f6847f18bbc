"""``torch.compile`` of a block at the eager fast path's cost: the block as one operator call
(cbam_triton/compiled.py), and the fused operator's own host path (cbam_triton/launchers/replay.py).

An eval-mode block traced with grad mode off is one call of ``cbam_triton::block_forward(x, block)``
(one tensor input) running the module's own fast path at run time: bitwise the eager output, each
call's weights (in-place updates, replaced parameters), no recompile for another block of the class;
anything else traces the module's forward as before. A call of ``torch.ops.cbam_triton.fused_forward``
whose configuration was seen before replays bound launches with its own x and weights: bitwise what a
call planned from scratch gives, neither planned nor rebound, for every weight value (the weights are
op arguments). ``torch.compile(fullgraph=True)`` (inductor) of a block, either way: no graph break, no
recompile over new inputs of one shape, at most one for a new batch size, outputs bitwise the eager
module's. GPU only: CUDA graphs (``mode="reduce-overhead"``) replay without re-capture, and an
AOTInductor package matches eager.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from helpers import make_input, make_reference
from torch.utils._python_dispatch import TorchDispatchMode

import cbam_triton
from cbam_triton import compiled as block_op
from cbam_triton import fastpath
from cbam_triton.launchers import forward as fwd
from cbam_triton.launchers import replay
from cbam_triton.ops import IMPLEMENTATIONS

CUDA = torch.cuda.is_available()
OP = torch.ops.cbam_triton.fused_forward.default


def _module(c: int, device, **kw) -> cbam_triton.CBAM:
    return cbam_triton.CBAM.from_reference(make_reference(c, reduction_ratio=4, device=device, **kw)).eval()


def _op_args(module: cbam_triton.CBAM, x: torch.Tensor) -> tuple[object, ...]:
    mlp, conv = module.fused_parts()
    return (x, mlp.fc1_weight, mlp.fc1_bias, mlp.fc2_weight, mlp.fc2_bias, conv.weight, conv.bias, conv.bn_mean,
            conv.bn_var, conv.bn_weight, conv.bn_bias, float(conv.bn_eps), mlp.pools, mlp.act, conv.input,
            module.schedule, module.l2_budget_bytes)


def _fresh(args) -> torch.Tensor:
    """The op planned from scratch (host path off, plan cache emptied)."""
    saved, replay.ENABLED = replay.ENABLED, False
    fwd.PLANS.clear()
    try:
        with torch.no_grad():
            return OP(*args)
    finally:
        replay.ENABLED = saved


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.stride() == b.stride() and torch.equal(a, b)


@pytest.mark.parametrize(("layout", "chunk"), [("nchw", None), ("channels_last", 1)], ids=["stream", "l2-chunks"])
def test_op_replays_bitwise_with_each_calls_weights(layout, chunk, device):
    replay.clear()
    ours, other = _module(16, device), _module(16, device)  # same configuration, other weights
    for m in (ours, other):
        if chunk:
            m.set_schedule("l2", 16 * 5 * 6 * 4 * chunk)  # one sample per chunk: views of x and out
    xs = [make_input((2, 16, 5, 6), torch.float32, layout, device) for _ in range(3)]
    with torch.no_grad():
        OP(*_op_args(ours, xs[0]))  # records
        recorded, plans = replay.info()["recorded"], (fwd.PLANS.hits, fwd.PLANS.misses)
        got = [OP(*_op_args(m, x)) for x in xs for m in (ours, other)]
        # replayed (nothing planned, rebound or recorded), shared by the block of the same configuration
        assert replay.info()["recorded"] == recorded and (fwd.PLANS.hits, fwd.PLANS.misses) == plans
        ours.spatial_gate.conv.weight.mul_(-0.5)  # weights changed in place: the same key, their new values
        ours.channel_gate.mlp[0].bias.add_(0.25)
        got.append(OP(*_op_args(ours, xs[0])))
        assert replay.info()["recorded"] == recorded
        # each entry replays on the stream it was recorded on (None off CUDA)
        streams = {e.stream for e in replay._ENTRIES.values() if e is not None}
        assert streams == ({torch.cuda.current_stream(device).cuda_stream} if device.type == "cuda" else {None})
        expected = [_fresh(_op_args(m, x)) for x in xs for m in (ours, other)]
    for y, e in zip(got[:-1], expected):
        if y is not got[0] and y is not got[2] and y is not got[4]:  # (ours' weights changed since)
            _same(y, e)
    _same(got[-1], expected[0])
    assert not torch.equal(got[0], got[1]) and not torch.equal(got[0], got[-1])  # each call's own weights
    # a weight at another 16-byte alignment, or x of another layout: a configuration of its own
    mis = torch.empty(ours.spatial_gate.conv.weight.numel() + 1, device=device)[1:].view_as(
        ours.spatial_gate.conv.weight).copy_(ours.spatial_gate.conv.weight)
    args = list(_op_args(ours, xs[1]))
    args[5] = mis
    with torch.no_grad():
        _same(OP(*args), _fresh(args))
    assert replay.info()["recorded"] == recorded + 1


def test_op_host_path_stands_aside(device):
    """Under autograd the op refuses; under a dispatch mode (which looks inside) it takes the full
    path; a planner's copy of x (H and W don't merge) is remembered as not replayable."""
    replay.clear()
    ours = _module(8, device)
    x = make_input((1, 8, 4, 4), torch.float32, "nchw", device)
    with pytest.raises(RuntimeError, match="inference op"):
        OP(*_op_args(ours, x.clone().requires_grad_()))
    seen = []

    class Mode(TorchDispatchMode):  # looks inside cbam_triton's ops (as allocation counters do)
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.__name__)
            impl = IMPLEMENTATIONS.get(func)
            if impl is not None:
                with self:
                    return impl(*args, **(kwargs or {}))
            return func(*args, **(kwargs or {}))

    with torch.no_grad():
        OP(*_op_args(ours, x))
        before = fwd.PLANS.hits + fwd.PLANS.misses
        with Mode():
            y = OP(*_op_args(ours, x))
        assert fwd.PLANS.hits + fwd.PLANS.misses == before + 1 and "empty_like.default" in seen  # the full path ran
        _same(y, _fresh(_op_args(ours, x)))
        copied = make_input((1, 8, 4, 4), torch.float32, "sliced_w", device)
        OP(*_op_args(ours, copied))
        assert replay.info()["full_path"] == 1
        _same(OP(*_op_args(ours, copied)), _fresh(_op_args(ours, copied)))


@pytest.mark.parametrize("as_block", [True, False], ids=["block-op", "weights-as-inputs"])
def test_compiled_block_no_breaks_no_recompiles_bitwise(as_block, device, monkeypatch):
    """``torch.compile(fullgraph=True)`` (inductor): 10 calls with new inputs of one shape compile
    once, bitwise the eager module's output; a new batch size recompiles at most once
    (``dynamic=None``: the second shape compiles a dynamic graph). The block as one operator call
    runs the module's fast path per call; traced as it is (:func:`cbam_triton.compiled.detach`),
    the fused operator replays through its own host path."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    replay.clear()
    ours = _module(16, device)
    if not as_block:
        block_op.detach(ours)
    fast_calls = []
    real = fastpath.forward
    monkeypatch.setattr(fastpath, "forward", lambda m, x: fast_calls.append(m) or real(m, x))
    compiled = torch.compile(ours, fullgraph=True)
    start = replay.info()["recorded"]
    with torch.no_grad():
        for i in range(10):
            x = make_input((1, 16, 6, 7), torch.float32, "channels_last", device)
            before = len(fast_calls)
            y = compiled(x)
            if i:  # (the op ran the module's fast path: a hit; the first call built its entry)
                assert len(fast_calls) - before == (1 if as_block else 0)
            _same(y, ours(x))
            if i == 0:
                recorded = replay.info()["recorded"]
        # calls 2-10 replayed: the module's fast path entries, or the fused operator's host path entry
        assert replay.info()["recorded"] == recorded == start + (0 if as_block else 1)
        assert counters["stats"]["unique_graphs"] == 1 and sum(counters["recompiles"].values()) == 0
        for n in (2, 3, 5):
            x = make_input((n, 16, 6, 7), torch.float32, "channels_last", device)
            _same(compiled(x), ours(x))
    assert counters["stats"]["unique_graphs"] <= 2 and sum(counters["recompiles"].values()) <= 1
    assert fastpath.info(ours)["entries"] > 0
    torch._dynamo.reset()


def test_compiled_block_dynamic_batch_compiles_once(device):
    """``dynamic=True``: new batch sizes (past the 0/1 specialisation) run the one compiled graph."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    ours = _module(16, device)
    compiled = torch.compile(ours, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for n in (2, 3, 5):
            x = make_input((n, 16, 6, 7), torch.float32, "nchw", device)
            _same(compiled(x), ours(x))
    assert counters["stats"]["unique_graphs"] == 1 and sum(counters["recompiles"].values()) == 0
    torch._dynamo.reset()


def _graphs(module, x, **kw) -> list[torch.fx.GraphModule]:
    """The FX graphs dynamo records for ``module(x)`` (run as recorded: the ops eagerly)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(module, fullgraph=True, backend=backend, **kw)(x)
    return graphs, out


def _targets(gm: torch.fx.GraphModule) -> list[object]:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_block_op_graph_one_tensor_input_and_each_calls_weights(device):
    """The traced block is one ``block_forward`` call with x as its only tensor input; the operator
    reads the weights when it runs: in-place updates and a replaced parameter are seen without a
    recompile; blocks of the class share the compiled code; copies get their own BlockRef."""
    from torch._dynamo.utils import counters

    ours = _module(16, device)
    x = make_input((2, 16, 5, 6), torch.float32, "nchw", device)
    with torch.no_grad():
        graphs, out = _graphs(ours, x)
        assert len(graphs) == 1 and _targets(graphs[0]) == [block_op.block_forward]
        placeholders = [n for n in graphs[0].graph.nodes if n.op == "placeholder"]
        assert sum(isinstance(n.meta.get("example_value"), torch.Tensor) for n in placeholders) == 1
        _same(out, ours(x))
        counters.clear()
        compiled = torch.compile(ours, fullgraph=True, backend="eager")
        compiled(x)
        ours.spatial_gate.conv.weight.mul_(-0.5)  # in place
        ours.channel_gate.mlp[0].weight = torch.nn.Parameter(ours.channel_gate.mlp[0].weight * 2)  # replaced
        y = compiled(x)
        _same(y, ours(x))
        assert not torch.equal(y, out)
        other = _module(16, device)  # another block of the class: the same compiled code, its own weights
        _same(torch.compile(other, fullgraph=True, backend="eager")(x), other(x))
        assert sum(counters["recompiles"].values()) == 0
        for twin in (copy.deepcopy(ours), copy.copy(ours), pickle.loads(pickle.dumps(ours)),
                     ours._replicate_for_data_parallel()):
            assert block_op.block_ref(twin).module() is twin and block_op.block_ref(ours).module() is ours
        twin = copy.deepcopy(ours)
        twin.channel_gate.mlp[0].bias.add_(1.0)  # (the copy's own weights are what it runs)
        _same(torch.compile(twin, fullgraph=True, backend="eager")(x), twin(x))
        assert not torch.equal(twin(x), ours(x))
    torch._dynamo.reset()


def test_traced_block_guards_only_its_flags():
    """What dynamo reads while tracing a block becomes a guard every compiled call checks: of the
    module, only its ``training`` flag, its backend and its BlockRef (nothing of its submodules,
    weights or configuration; the backend's resolution is one trace-time constant)."""
    ours = _module(16, torch.device("cpu"))
    with torch.no_grad():
        explained = torch._dynamo.explain(ours)(make_input((1, 16, 5, 6), torch.float32, "nchw", torch.device("cpu")))
    torch._dynamo.reset()
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    read = {g.name for g in explained.out_guards if g.name.startswith("L['self']")}
    assert read == {"L['self']", "L['self'].training", "L['self'].backend", "L['self'].__dict__['_cbam_triton_block']"}
    assert not any("_backend" in g.name for g in explained.out_guards)  # (resolve_backend's globals)


@pytest.mark.parametrize("case", ["training", "grad", "torch-backend", "export", "cpp-wrapper"])
def test_block_op_only_for_eval_inference_on_triton(case, device):
    """Training mode, grad mode on, the PyTorch backend (inductor compiles its math), ``torch.export``
    (standard ops) and inductor's C++ wrapper (no opaque arguments) trace the module's forward instead
    of the block operator."""
    ours = _module(16, device)
    x = make_input((2, 16, 5, 6), torch.float32, "nchw", device)
    if case == "export":
        program = torch.export.export(ours, (x,))
        targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
        assert targets and not any("cbam_triton" in str(t) for t in targets)
        return
    if case == "training":
        ours.train()
    if case == "torch-backend":
        ours.backend = "torch"
    with torch.set_grad_enabled(case == "grad"), torch._inductor.config.patch(cpp_wrapper=case == "cpp-wrapper"):
        graphs, out = _graphs(ours, x)
    targets = [t for gm in graphs for t in _targets(gm)]
    assert targets and block_op.block_forward not in targets
    torch._dynamo.reset()


def test_block_op_full_path_output_has_the_fake_layout(device, monkeypatch):
    """Where the module's fast path does not serve a call, the operator runs its full forward and
    returns it in the layout its fake implementation promised the compiler (values unchanged)."""

    class Contiguous(cbam_triton.CBAM):  # a full forward returning another layout than x's
        def forward(self, x):
            return super().forward(x).contiguous()

    ours = Contiguous.from_reference(make_reference(8, reduction_ratio=4, device=device)).eval()
    x = make_input((2, 8, 5, 6), torch.float32, "channels_last", device)
    monkeypatch.setattr(fastpath, "ENABLED", False)
    with torch.no_grad():
        y = block_op.block_forward(x, block_op.block_ref(ours))
        expected = ours(x)
    assert expected.is_contiguous() and y.stride() == torch.empty_like(x).stride()
    assert torch.equal(y, expected)


def test_block_op_converted_dialects_bitwise(device):
    """A converted CBAM of another dialect (fused or not: the operator runs its eager forward)."""
    from dialects import LuuuyiCBAM, randomize

    import reference

    for source in (LuuuyiCBAM(24, 4), reference.CBAM(24, 4)):
        model = cbam_triton.convert(randomize(source).eval().to(device), inplace=False, backend="triton")
        x = make_input((2, 24, 6, 5), torch.float32, "channels_last", device)
        with torch.no_grad():
            graphs, out = _graphs(model, x)
            assert _targets(graphs[0]) == [block_op.block_forward]
            _same(out, model(x))
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------- GPU only
def _network(cuda: torch.device) -> torch.nn.Module:
    """A small converted network: convolutions around a CBAM (``cbam_triton.convert``), fp16, eval."""
    net = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
                              make_reference(64, reduction_ratio=4), torch.nn.Conv2d(64, 64, 1))
    return cbam_triton.convert(net.to(cuda).half().eval())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["block", "network"])
def test_reduce_overhead_replays_without_recapture(kind):
    """``mode="reduce-overhead"`` of a converted block and of a converted network: the op runs its full
    path inside the capture (fresh workspaces and counters that belong to the graph); later calls
    replay the graph, with no new capture (a block bitwise its eager output; a network, whose
    convolutions inductor compiles, within fp16's tolerance)."""
    cuda = torch.device("cuda")
    torch._dynamo.reset()
    ours = _module(64, cuda).half() if kind == "block" else _network(cuda)
    captures = []
    begin = torch.cuda.CUDAGraph.capture_begin

    def counting(self, *a, **k):
        captures.append(1)
        return begin(self, *a, **k)

    torch.cuda.CUDAGraph.capture_begin = counting
    try:
        compiled = torch.compile(ours, fullgraph=True, mode="reduce-overhead")
        with torch.no_grad():
            for _ in range(3):  # warm-up runs, then the capture
                compiled(make_input((1, 64, 28, 28), torch.float16, "nchw", cuda))
            settled = len(captures)
            assert settled >= 1
            for _ in range(10):
                x = make_input((1, 64, 28, 28), torch.float16, "nchw", cuda)
                y = compiled(x).clone()
                if kind == "block":
                    _same(y, ours(x))
                else:
                    torch.testing.assert_close(y, ours(x), rtol=2e-2, atol=2e-2)
        assert len(captures) == settled
    finally:
        torch.cuda.CUDAGraph.capture_begin = begin
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_aot_inductor_package_matches_eager(tmp_path):
    """An exported converted block (standard ops: cbam_triton/deploy.py) packaged by AOTInductor runs
    without Python and matches the eager module."""
    cuda = torch.device("cuda")
    ours = _module(64, cuda)
    x = make_input((2, 64, 14, 14), torch.float32, "nchw", cuda)
    program = torch.export.export(ours, (x,))
    assert not any("cbam_triton" in str(node.target) for node in program.graph.nodes)
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "cbam.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x), rtol=1e-5, atol=1e-5)
