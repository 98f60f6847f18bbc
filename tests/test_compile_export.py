"""First-class PyTorch citizen: custom ops (opcheck), torch.compile without graph breaks, dynamic
batch sizes, autocast (torch.export, ONNX export and tracing: tests/test_deploy.py).

On CPU the compiler is exercised with ``backend="aot_eager"`` (fake-tensor tracing through the ops'
fake implementations, AOT autograd; the ops run the Triton kernels in the interpreter);
inductor and CUDA-graph capture run in the GPU-only tests.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_input, make_reference

import cbam_triton

CUDA = torch.cuda.is_available()


def _module(device, c=16, **kw):
    return cbam_triton.CBAM.from_reference(make_reference(c, device=device, reduction_ratio=4, **kw), backend="triton")


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced_w"])
def test_opcheck_every_op(layout, device):
    x = make_input((2, 6, 5, 7), torch.float32, layout, device).requires_grad_(True)
    mc = torch.rand(2, 6, device=device, requires_grad=True)
    ms = torch.rand(2, 1, 5, 7, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.cbam_triton.channel_pool.default, (x,))
    torch.library.opcheck(torch.ops.cbam_triton.spatial_pool.default, (x, mc))
    torch.library.opcheck(torch.ops.cbam_triton.spatial_pool.default, (x, None))
    torch.library.opcheck(torch.ops.cbam_triton.gate.default, (x, mc, ms))
    torch.library.opcheck(torch.ops.cbam_triton.gate.default, (x, None, ms))


def test_fake_output_matches_real_memory_format(device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = make_input((2, 6, 5, 7), torch.float16, "channels_last", device)
    real = torch.ops.cbam_triton.gate(x, None, None)
    with FakeTensorMode() as mode:
        fake = torch.ops.cbam_triton.gate(mode.from_tensor(x), None, None)
    assert fake.stride() == real.stride() and fake.dtype == real.dtype


@pytest.mark.parametrize("train", [False, True])
def test_compile_fullgraph_no_graph_breaks(train, device):
    ours = _module(device).train(train)
    x = make_input((2, 16, 9, 9), torch.float32, "channels_last", device)
    explain = torch._dynamo.explain(ours)(x)
    assert explain.graph_break_count == 0, explain.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    ref = _module(device).train(train)
    ref.load_state_dict(ours.state_dict())
    xr, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_c, y_r = compiled(xc), ref(xr)
    torch.testing.assert_close(y_c, y_r, rtol=1e-5, atol=1e-5)
    y_c.square().sum().backward()
    y_r.square().sum().backward()
    torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_dynamic_batch_does_not_recompile(device):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    ours = _module(device).eval()
    compiled = torch.compile(ours, fullgraph=True, dynamic=True, backend="aot_eager")
    with torch.no_grad():
        for n in (2, 3, 5, 7):
            x = make_input((n, 16, 6, 6), device=device)
            torch.testing.assert_close(compiled(x), ours(x), rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(counters["recompiles"].values()) == 0


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_autocast_matches_eager_autocast(x_dtype, device):
    ref = make_reference(16, device=device, reduction_ratio=4)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 16, 8, 8), x_dtype, "nchw", device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        y_ref, y = ref(x), ours(x)
    assert y.dtype == y_ref.dtype
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=3e-2, atol=3e-2)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_inductor_and_cuda_graphs_on_gpu():
    ours = cbam_triton.CBAM.from_reference(make_reference(64, device="cuda")).eval()
    x = torch.randn(8, 64, 28, 28, device="cuda")
    with torch.no_grad():
        for mode in (None, "reduce-overhead"):
            torch._dynamo.reset()
            compiled = torch.compile(ours, fullgraph=True, mode=mode)
            for _ in range(3):
                y = compiled(x)
            torch.testing.assert_close(y, ours(x), rtol=1e-5, atol=1e-5)
