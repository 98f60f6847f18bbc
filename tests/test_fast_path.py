"""The guarded fast path of a module's forward (cbam_triton/fastpath.py, launchers/bound.py).

A replayed call must be invisible: bitwise what the full path planned from scratch gives, for every
layout, dtype and schedule and after every kind of module change; nothing of a call kept alive; a
bounded, thread-safe cache. Eval mode with grad mode on takes the same launches and gives the
reference's gradients. GPU-only: direct launches against ``kernel[grid]``, and the usage guide's
CUDA-graph example.
"""

from __future__ import annotations

import copy
import gc
import pickle
import re
import threading
import weakref
from pathlib import Path

import pytest
import torch
from helpers import make_input, make_reference
from tolerance import assert_grad_close
from torch.utils._python_dispatch import TorchDispatchMode

import cbam_triton
from cbam_triton import fastpath
from cbam_triton._layout import ncp_strides
from cbam_triton.launchers import Launch, bound
from cbam_triton.launchers import forward as fwd
from cbam_triton.ops import IMPLEMENTATIONS

CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def _module(c: int, device, **kw) -> cbam_triton.CBAM:
    return cbam_triton.CBAM.from_reference(make_reference(c, reduction_ratio=4, device=device, **kw))


def _full(module, x):
    """module(x) through the full path, planned from scratch (no_grad)."""
    saved, fastpath.ENABLED = fastpath.ENABLED, False
    fwd.PLANS.clear()
    try:
        with torch.no_grad():
            return module(x)
    finally:
        fastpath.ENABLED = saved


def _replayed(module, x):
    """module(x) (no_grad), checked to have been replayed: neither planned nor rebound."""
    before = fwd.PLANS.hits, fwd.PLANS.misses
    with torch.no_grad():
        y = module(x)
    assert (fwd.PLANS.hits, fwd.PLANS.misses) == before, "the call took the full path"
    return y


def _same(a, b):
    assert a.dtype == b.dtype and a.stride() == b.stride() and torch.equal(a, b)


CASES = [(layout, torch.float32) for layout in ("nchw", "channels_last", "sliced_c", "transposed", "expanded",
                                                "offset", "sliced_w")]
CASES += [(layout, dtype) for layout in ("nchw", "channels_last") for dtype in (torch.float16, torch.float64)]


@pytest.mark.parametrize("chunk", [None, 1], ids=["stream", "l2-chunks"])
@pytest.mark.parametrize(("layout", "dtype"), CASES, ids=[f"{lay}-{str(dt)[6:]}" for lay, dt in CASES])
def test_replay_equals_a_fresh_plan(layout, dtype, chunk, device):
    ours = _module(16, device).to(dtype)
    x_shape = (2, 16, 5, 6)
    if chunk:
        ours.set_schedule("l2", 16 * 5 * 6 * torch.finfo(dtype).bits // 8 * chunk)
    xs = [make_input(x_shape, dtype, layout, device) for _ in range(3)]
    copied = ncp_strides(xs[0]) is None  # H and W don't merge: x is copied first, the full path runs
    with torch.no_grad():
        first = ours(xs[0])  # records
    got = [first] + [(_full if copied else _replayed)(ours, x) for x in xs[1:]]
    info = fastpath.info(ours)
    assert info["entries"] == 1 and info["full_path"] == copied  # (remembered as such)
    for x, y in zip(xs, got):
        _same(y, _full(ours, x))


def test_every_kind_of_module_change_is_seen(device, monkeypatch):
    ours = _module(16, device)
    x = make_input((2, 16, 5, 6), torch.float32, "nchw", device)
    other = _module(16, device)

    def check(changed=True):
        with torch.no_grad():
            ours(x)  # rebuilds what changed
        y = _replayed(ours, x)
        _same(y, _full(ours, x))
        if changed:
            assert not torch.equal(y, check.last)
        check.last = y

    check.last = _full(ours, x)
    with torch.no_grad():
        ours.channel_gate.mlp[0].weight.mul_(-1.5)                 # in place (version counter)
    check()
    ours.load_state_dict(other.state_dict())                      # load_state_dict (copy_)
    check()
    with torch.no_grad():
        ours.spatial_gate.bn.running_var.fill_(3.0)               # a buffer in place
    check()
    ours.spatial_gate.conv.weight = torch.nn.Parameter(torch.randn_like(ours.spatial_gate.conv.weight))
    check()                                                       # a replaced parameter
    ours.half()                                                   # .half(): same objects, new data
    check()
    ours.float()                                                  # (the fp16-rounded values: same output)
    check(changed=False)
    ours.to(memory_format=torch.channels_last)                    # the conv weight becomes non-contiguous
    check(changed=False)
    with torch.no_grad():
        ours.spatial_gate.conv.weight.mul_(0.5)                   # (the kernels read a copy of it)
    check()
    ours.set_schedule("l2", 16 * 5 * 6 * 4)                       # the schedule (an attribute)
    check(changed=False)
    monkeypatch.setenv("CBAM_TRITON_CONV_TAPS", "loop")           # a tile-rule override
    check(changed=False)
    ours.spatial_gate.bn.eps = 0.5                                # a BatchNorm attribute
    check()
    ours.spatial_gate.bn = None                                   # a replaced submodule
    check()
    # train(): BatchNorm with batch statistics (running statistics updated) takes the full path
    ours = _module(16, device)
    ours(x)
    ours.train()
    twin = copy.deepcopy(ours)
    with torch.no_grad():
        y = ours(x)
    _same(y, _full(twin, x))
    torch.testing.assert_close(ours.spatial_gate.bn.running_var, twin.spatial_gate.bn.running_var, rtol=0, atol=0)
    ours.eval()
    with torch.no_grad():
        ours(x)
    _same(_replayed(ours, x), _full(ours, x))


def test_guard_sees_removed_and_shadowing_attributes(device):
    """The snapshot's generated check: an attribute removed from a watched dictionary, or a class
    default the module shadows later, fails it; put back as it was, it holds again."""
    ours = _module(16, device)
    state = fastpath._State(ours)
    assert state.valid(ours)
    bn = ours.spatial_gate.bn.__dict__
    momentum = bn.pop("momentum")
    assert not state.valid(ours)
    bn["momentum"] = momentum
    assert state.valid(ours)
    gate = ours.channel_gate  # (a lone gate keeps the class defaults of schedule and budget)
    gate_state = fastpath._State(gate)
    extra = next(k for k in fastpath._ROOT_EXTRA if k not in gate.__dict__)
    gate.__dict__[extra] = getattr(gate, extra)  # the same value, now the module's own
    assert not gate_state.valid(gate)
    del gate.__dict__[extra]
    assert gate_state.valid(gate)
    with torch.no_grad():
        ours.channel_gate.mlp[2].bias.add_(0)  # (a version bump alone)
    assert not state.valid(ours)


def test_guard_code_is_shared_by_modules_of_one_structure(device):
    """The generated check names no value: modules of one structure share its compiled code (a new
    snapshot costs no compile), each check still holds for its own module only."""
    a, b = _module(16, device), _module(16, device)
    fastpath._State(a)
    makers = len(fastpath._GUARD_MAKERS)
    state_a, state_b = fastpath._State(a), fastpath._State(b)
    assert len(fastpath._GUARD_MAKERS) == makers
    assert state_a.valid(a) and state_b.valid(b) and not state_a.valid(b) and not state_b.valid(a)


def test_cache_is_bounded_and_thread_safe(device, monkeypatch):
    monkeypatch.setattr(fastpath, "SIZE", 3)
    ours = _module(8, device)
    with torch.no_grad():
        for n in range(1, 6):
            ours(make_input((n, 8, 3, 3), torch.float32, "nchw", device))
    assert fastpath.info(ours)["entries"] == 3
    xs = [make_input((2, 8, 4, 5), torch.float32, "channels_last", device) for _ in range(12)]
    got: dict[int, torch.Tensor] = {}

    def work(i):
        with torch.no_grad():
            for j in range(i, len(xs), 4):
                got[j] = ours(xs[j])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for j, x in enumerate(xs):
        _same(got[j], _full(ours, x))


def test_nothing_of_a_call_is_kept_and_the_cache_dies_with_the_module(device):
    ours = _module(8, device)
    refs = []
    for _ in range(2):  # the recording call, then a replay
        x = make_input((1, 8, 4, 4), torch.float32, "nchw", device)
        with torch.no_grad():
            y = ours(x)
        refs += [weakref.ref(x), weakref.ref(y)]
        del x, y
    gc.collect()
    assert all(r() is None for r in refs) and fastpath.info(ours)["entries"] == 1
    x = make_input((1, 8, 4, 4), torch.float32, "nchw", device)
    for twin in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):  # copies start without a cache
        assert fastpath.info(twin)["entries"] == 0
        _same(_full(twin, x), _full(ours, x))
    module = weakref.ref(ours)
    gc.disable()
    try:
        del ours
        assert module() is None  # no reference cycle through the cache: freed at once
    finally:
        gc.enable()


#: the aten ops of a replay besides the stubbed launches: the output's allocation, laid out as x
ONE_ALLOCATION = ["aten::empty_like", "aten::empty_strided"]


def _aten_ops(fn):
    """Names of the aten ops ``fn`` runs (the profiler sees them without a dispatch mode)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name.startswith("aten::")]


def test_eval_with_grad_mode_on_launches_the_same_and_gives_the_references_gradients(device, monkeypatch):
    ref = make_reference(12, reduction_ratio=3, device=device)
    ours = cbam_triton.CBAM.from_reference(ref)
    x = make_input((2, 12, 5, 6), torch.float32, "nchw", device)
    with torch.no_grad(), cbam_triton.record_launches() as no_grad:
        ours(x)
    with cbam_triton.record_launches() as launches:
        out = ours(x.requires_grad_())
    assert [launch.name for launch in launches] == [launch.name for launch in no_grad]
    assert type(out.grad_fn).__name__ == "_EvalForwardBackward"
    # host work of the forward besides the launches: allocating the output (kernels stubbed out)
    from triton.runtime.interpreter import InterpretedFunction

    if device.type == "cpu":
        monkeypatch.setattr(InterpretedFunction, "run", lambda self, *a, **k: None)
        assert _aten_ops(lambda: ours(x)) == ONE_ALLOCATION
        with torch.no_grad():
            assert _aten_ops(lambda: ours(x)) == ONE_ALLOCATION
        monkeypatch.undo()
    # gradients of x and every weight, after a recording call and after a replay
    g = make_input(x.shape, torch.float32, "nchw", device)
    ref64 = copy.deepcopy(ref).double()
    leaf64 = x.detach().double().requires_grad_()
    (ref64(leaf64) * g.double()).sum().backward()
    leaf_e = x.detach().clone().requires_grad_()
    (ref(leaf_e) * g).sum().backward()
    for _ in range(2):
        ours.zero_grad()
        leaf = x.detach().clone().requires_grad_()
        (ours(leaf) * g).sum().backward()
        assert_grad_close(leaf.grad, leaf_e.grad, leaf64.grad, "x.grad")
        for (name, p), pe, p64 in zip(ours.named_parameters(), ref.parameters(), ref64.parameters()):
            assert_grad_close(p.grad, pe.grad, p64.grad, name)
    # saliency: only x requires grad
    ours.requires_grad_(False)
    leaf = x.detach().clone().requires_grad_()
    (ours(leaf) * g).sum().backward()
    assert_grad_close(leaf.grad, leaf_e.grad, leaf64.grad, "x.grad")
    ours.requires_grad_(True)
    # what autograd would refuse is refused: a weight changed in place before the backward, double backward
    out = ours(leaf)
    with torch.no_grad():
        ours.spatial_gate.conv.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()
    gx, = torch.autograd.grad(ours(leaf).sum(), leaf, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()
    # train(): the training path (its own Triton backward), not a recomputation
    assert type(ours.train()(leaf).grad_fn).__name__ != "_EvalForwardBackward"


def test_interpreter_hides_its_ops_only_from_an_active_dispatch_mode(device, monkeypatch):
    import torch.utils._python_dispatch as pd

    if device.type != "cpu":
        pytest.skip("the interpreter's own aten ops")
    calls = []
    real = pd._disable_current_modes

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setattr(pd, "_disable_current_modes", counting)
    ours = _module(8, device)
    x = make_input((1, 8, 4, 4), torch.float32, "nchw", device)
    with torch.no_grad():
        ours(x), ours(x)
    assert not calls

    class Mode(TorchDispatchMode):  # looks inside cbam_triton's ops (as allocation counters do)
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            impl = IMPLEMENTATIONS.get(func)
            if impl is not None:
                with self:
                    return impl(*args, **(kwargs or {}))
            return func(*args, **(kwargs or {}))

    with Mode(), torch.no_grad():
        y = ours(x)
    assert calls
    _same(y, _full(ours, x))


class CompiledKernel:  # noqa: D101 - a stand-in for Triton's (same name): records the launcher call
    function, packed_metadata = "function", "packed"

    def __init__(self):
        self.calls = []
        self.run = lambda *args: self.calls.append(args)

    def launch_metadata(self, grid, stream, *args):
        return ("metadata", grid, stream)


@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "chunked"])
def test_direct_launch_passes_what_triton_would(chunk, device, monkeypatch):
    """The pre-bound launcher call (GPU path) is exactly what ``JITFunction.run`` makes: every kernel
    parameter in order (constexprs and defaults included) as Triton's own binder binds it, with this
    call's x and output (views of them as device addresses)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    ours = _module(16, device)
    if chunk:
        ours.set_schedule("l2", 16 * 5 * 6 * 4 * chunk)
    x, x2 = (make_input((2, 16, 5, 6), torch.float32, "channels_last", device) for _ in range(2))
    with torch.no_grad(), cbam_triton.record_launches() as launches:
        out = _full(ours, x)
    out2 = torch.empty_like(out)
    backend = make_backend(GPUTarget("cuda", 90, 32))
    hook = []
    replays = []
    for launch in launches:
        kernel = getattr(launch.kernel, "fn", launch.kernel)
        twin = Launch(JITFunction(kernel), launch.grid, launch.args, launch.meta, launch.num_warps)
        compiled = CompiledKernel()
        replay = bound.BoundLaunch(twin, compiled, x, out)
        assert replay.direct
        replays.append((replay, compiled))
        replay(x2, out2, 1234)
        knobs.runtime.launch_enter_hook.add(hook.append)  # a profiler's hook: metadata and hooks passed on
        try:
            replay(x2, out2, 1234)
        finally:
            knobs.runtime.launch_enter_hook.remove(hook.append)
        # what Triton's binder makes of the same launch with x2 and out2 in place of x and out
        args = [x2 if a is x else out2 if a is out else a for a in launch.args]
        for pos, role, view in replay.holes:
            base = x2 if role == bound.X else out2
            args[pos] = base.as_strided(view[0], view[1], base.storage_offset() + view[2]) if view else base
        binder = create_function_from_signature(twin.kernel.signature, twin.kernel.params, backend)
        expected = list(binder(*args, **launch.meta, num_warps=launch.num_warps)[0].values())
        grid = (*launch.grid, 1, 1)[:3]
        plain = [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in expected]
        for call, extra in zip(compiled.calls, ((None, None, None),
                                                (("metadata", launch.grid, 1234), knobs.runtime.launch_enter_hook,
                                                 knobs.runtime.launch_exit_hook))):
            assert call[:7] == (*grid, 1234, "function", "packed", extra[0]) and call[7:9] == extra[1:]
            assert [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in call[9:]] == plain
    # a whole plan replays in one flattened loop where no hole is a view: the same launcher calls
    plan = bound.BoundPlan([r for r, _ in replays], out, 1234, x)
    assert plan.mode == (bound._EACH if chunk else bound._DIRECT)
    out3 = plan.run(x2)
    assert out3.shape == out.shape and out3.stride() == out.stride() and out3.data_ptr() != out2.data_ptr()
    for replay, compiled in replays:  # what each launch passes on its own with the same x and output
        replay(x2, out3, 1234)
        got, expected = compiled.calls[-2:]
        assert len(compiled.calls) == 4 and got[:9] == expected[:9]
        assert [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in got[9:]] == \
            [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in expected[9:]]


def _doc_example(title: str) -> str:
    """The python code block of docs/usage.md that follows ``title`` (the examples tested here)."""
    text = USAGE.read_text()
    start = text.index(title)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_usage_lean_path_example(device):
    code = _doc_example("Lowest batch-1 latency")
    scope = {"device": device}
    exec(compile(code, "docs/usage.md", "exec"), scope)  # noqa: S102 - the guide's own example
    assert fastpath.info(scope["model"])["entries"] == 1


# --------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("schedule", ["auto", "stream"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "offset"])
@pytest.mark.parametrize("shape", [(1, 256, 56, 56), (1, 2048, 7, 7), (3, 64, 17, 19)])
def test_direct_launches_equal_triton_launches(shape, layout, dtype, schedule, monkeypatch):
    cuda = torch.device("cuda")
    ours = _module(shape[1], cuda).to(dtype)
    ours.set_schedule(schedule)
    xs = [make_input(shape, dtype, layout, cuda) for _ in range(2)]
    got = {}
    for direct in (True, False):
        monkeypatch.setattr(bound, "DIRECT", direct)
        fastpath.clear(ours)
        with torch.no_grad():
            ours(xs[0])  # records
        got[direct] = [_replayed(ours, x) for x in xs]
        assert fastpath.info(ours)["direct"] == direct
    for x, a, b in zip(xs, got[True], got[False]):
        _same(a, b)
        _same(a, _full(ours, x))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_each_stream_has_its_own_entry():
    cuda = torch.device("cuda")
    ours = _module(64, cuda)
    x = make_input((1, 64, 9, 9), torch.float32, "nchw", cuda)
    with torch.no_grad():
        y = ours(x)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            ys = [ours(x) for _ in range(3)]
        torch.cuda.current_stream().wait_stream(side)
    assert fastpath.info(ours)["entries"] == 2
    for other in ys:
        _same(other, y)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_usage_cuda_graph_example():
    scope: dict[str, object] = {}
    exec(compile(_doc_example("CUDA graphs for the last microseconds"), "docs/usage.md", "exec"), scope)  # noqa: S102
    model, x = scope["model"], scope["x"]
    with torch.no_grad():
        expected = model(x)
    _same(scope["static_y"], expected)
    torch.testing.assert_close(scope["y"], expected)
