"""The custom op's host path (cbam_triton/launchers/replay.py) and ``torch.compile`` at its cost.

A call of ``torch.ops.cbam_triton.fused_forward`` whose configuration was seen before replays bound
launches with its own x and weights: bitwise what a call planned from scratch gives, neither planned
nor rebound, for every weight value (the weights are op arguments). ``torch.compile(fullgraph=True)``
(inductor) of a converted block: no graph break, no recompile over new inputs of one shape, at most
one for a new batch size, outputs bitwise the eager module's. GPU only: CUDA graphs
(``mode="reduce-overhead"``) replay without re-capture, and an AOTInductor package matches eager.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_input, make_reference
from torch.utils._python_dispatch import TorchDispatchMode

import cbam_triton
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


def test_compiled_block_no_breaks_no_recompiles_bitwise(device):
    """``torch.compile(fullgraph=True)`` (inductor): 10 calls with new inputs of one shape compile
    once and replay through the op's host path, bitwise the eager module's output; a new batch
    size recompiles at most once (``dynamic=None``: the second shape compiles a dynamic graph)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    replay.clear()
    ours = _module(16, device)
    compiled = torch.compile(ours, fullgraph=True)
    with torch.no_grad():
        for i in range(10):
            x = make_input((1, 16, 6, 7), torch.float32, "channels_last", device)
            _same(compiled(x), ours(x))
            if i == 0:
                recorded = replay.info()["recorded"]
        assert replay.info()["recorded"] == recorded  # calls 2-10 replayed
        assert counters["stats"]["unique_graphs"] == 1 and sum(counters["recompiles"].values()) == 0
        for n in (2, 3, 5):
            x = make_input((n, 16, 6, 7), torch.float32, "channels_last", device)
            _same(compiled(x), ours(x))
    assert counters["stats"]["unique_graphs"] <= 2 and sum(counters["recompiles"].values()) <= 1
    assert fastpath.info(ours)["entries"] > 0  # (the eager calls took the module's own fast path)
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_reduce_overhead_replays_without_recapture():
    """``mode="reduce-overhead"``: the op runs its full path inside the capture (fresh workspaces and
    counters that belong to the graph); later calls replay the graph, with no new capture."""
    cuda = torch.device("cuda")
    torch._dynamo.reset()
    ours = _module(64, cuda).half()
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
                _same(y, ours(x))
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
