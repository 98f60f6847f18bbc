"""Host-side fast path of the fused forward: plans are cached and rebound to each call's tensors
(launchers/forward.py ``PlanCache``), and the custom op's implementation is called directly when
nothing would intercept the op (ops.py ``direct_call_ok``). Both must be invisible: same results as
a fresh plan, every call's own x and weights used, nothing of an earlier call kept alive."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from helpers import make_input, make_reference
from torch.utils._python_dispatch import TorchDispatchMode

import cbam_triton
from cbam_triton import fastpath, stages
from cbam_triton.launchers import forward as fwd
from cbam_triton.ops import IMPLEMENTATIONS, direct_call_ok


@pytest.fixture
def plans(monkeypatch):
    monkeypatch.setattr(fastpath, "ENABLED", False)  # the plan cache is what the module's full path uses
    fwd.PLANS.clear()
    fwd.PLANS.hits = fwd.PLANS.misses = 0
    yield fwd.PLANS
    fwd.PLANS.clear()


def _fresh(module, x):
    """module(x) planned from scratch (cache emptied first)."""
    fwd.PLANS.clear()
    with torch.no_grad():
        return module(x)


def _module(c, device, **kw):
    ref = make_reference(c, reduction_ratio=4, device=device, **kw)
    return cbam_triton.CBAM.from_reference(ref, backend="triton")


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced_w", "transposed", "expanded", "offset"])
@pytest.mark.parametrize("chunk", [None, 1], ids=["one-chunk", "l2-chunks"])
def test_rebound_plan_equals_fresh_plan(layout, chunk, plans, device):
    ours = _module(24, device)
    if chunk:
        ours.set_schedule("l2", 24 * 7 * 9 * 4 * chunk)
    xs = [make_input((3, 24, 7, 9), torch.float32, layout, device) for _ in range(3)]
    with torch.no_grad():
        got = [ours(x) for x in xs]  # first call plans, the others rebind
    assert plans.misses == 1 and plans.hits == 2 and len(plans) == 1
    for x, y in zip(xs, got):
        fresh = _fresh(ours, x)
        assert torch.equal(y, fresh) and y.stride() == fresh.stride()  # bitwise: same launches, arguments


def test_each_call_uses_its_own_weights_and_input(plans, device):
    ours = _module(16, device)
    x = make_input((2, 16, 5, 6), torch.float32, "nchw", device)
    with torch.no_grad():
        first = ours(x)
        ours.channel_gate.mlp[0].weight.mul_(-1.5)           # in place: same tensor, new values
        ours.spatial_gate.conv.weight = torch.nn.Parameter(torch.randn_like(ours.spatial_gate.conv.weight))
        ours.spatial_gate.bn.running_var.fill_(3.0)
        second = ours(x)
        x2 = x * 2
        third = ours(x2)
    assert plans.hits == 2
    assert not torch.equal(first, second)
    assert torch.equal(second, _fresh(ours, x)) and torch.equal(third, _fresh(ours, x2))


def test_a_weight_the_planner_copies_is_copied_again_per_call(plans, device):
    """A channels_last model's conv weight is not contiguous: the planner's contiguous copy of it is
    made again by every rebound call (with the call's weight), not left as an empty workspace."""
    ours = _module(16, device).to(memory_format=torch.channels_last)
    assert not ours.spatial_gate.conv.weight.is_contiguous()
    x = make_input((2, 16, 5, 6), torch.float32, "channels_last", device)
    got = []
    for _ in range(2):
        with torch.no_grad():
            ours(x)
            got.append((ours(x), _fresh(ours, x)))  # rebound, then planned from scratch
            ours.spatial_gate.conv.weight.mul_(0.5)
    assert plans.hits >= 2
    for rebound, fresh in got:
        assert torch.equal(rebound, fresh)
    assert not torch.equal(got[0][0], got[1][0])


def test_a_different_configuration_is_planned_anew(plans, device, monkeypatch):
    ours = _module(16, device)
    x = make_input((2, 16, 5, 6), torch.float32, "nchw", device)
    with torch.no_grad():
        ours(x)
        ours(make_input((2, 16, 5, 6), torch.float32, "channels_last", device))  # other strides
        ours(make_input((3, 16, 5, 6), torch.float32, "nchw", device))            # other batch
        ours.double()(x.double())                                                 # other dtypes
        ours.float()
        ours.set_schedule("l2", 16 * 5 * 6 * 4)                                   # other schedule
        ours(x)
        monkeypatch.setenv("CBAM_TRITON_CONV_TAPS", "loop")                      # other tile-rule override
        ours(x)
        ours.spatial_gate.bn = None                                               # other dialect
        ours(x)
    assert plans.misses == 7 and plans.hits == 0


def test_no_tensor_of_a_call_is_kept_alive(plans, device):
    ours = _module(16, device)
    x = make_input((2, 16, 5, 6), torch.float32, "nchw", device)
    with torch.no_grad():
        y = ours(x)
    refs = [weakref.ref(x), weakref.ref(y)]
    del x, y
    gc.collect()
    assert all(r() is None for r in refs) and len(plans) == 1


def test_cache_is_bounded(plans, device, monkeypatch):
    monkeypatch.setattr(fwd.PlanCache, "SIZE", 3)
    ours = _module(8, device)
    with torch.no_grad():
        for n in range(1, 6):
            ours(make_input((n, 8, 3, 3), torch.float32, "nchw", device))
    assert len(plans) == 3 and plans.misses == 5


def test_op_is_dispatched_when_something_could_intercept_it(device):
    ours = _module(8, device).eval()
    x = make_input((2, 8, 4, 4), torch.float32, "nchw", device)
    seen = []

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.__name__)
            impl = IMPLEMENTATIONS.get(func)
            if impl is not None:
                with self:
                    return impl(*args, **(kwargs or {}))
            return func(*args, **(kwargs or {}))

    w = ours.channel_gate.mlp[0].weight
    assert direct_call_ok(x, w, None)
    with Mode(), torch.no_grad():
        assert not direct_call_ok(x)
        ours(x)
    assert "fused_forward.default" in seen
    with torch.overrides.TorchFunctionMode():
        assert not direct_call_ok(x)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
    assert not direct_call_ok(fake)
    assert torch.func.vmap(lambda t: torch.tensor(direct_call_ok(t)))(x.unsqueeze(0)).item() is False


def test_plain_call_skips_the_dispatcher_with_the_same_result(device, monkeypatch):
    ours = _module(8, device).eval()
    x = make_input((2, 8, 4, 4), torch.float32, "nchw", device)
    with torch.no_grad():
        direct = ours(x)
        monkeypatch.setattr(stages.ops, "direct_call_ok", lambda *t: False)
        through_op = ours(x)
    assert torch.equal(direct, through_op)
