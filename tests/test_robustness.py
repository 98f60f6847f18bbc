"""Robustness: determinism, extreme values, hostile input, and (GPU only) streams, graphs, > 2^31 elements."""

from __future__ import annotations

import pytest
import torch
from helpers import make_input, make_reference
from tolerance import assert_close_to_reference

import cbam_triton

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


# ------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("programs", ["natural", "1", "4096"])  # no split / forced splits everywhere
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced_c", "transposed"])
def test_bitwise_deterministic(layout, programs, device, monkeypatch):
    if programs != "natural":
        monkeypatch.setenv("CBAM_TRITON_TARGET_PROGRAMS", programs)
    ours = cbam_triton.CBAM.from_reference(make_reference(40, device=device, reduction_ratio=4), backend="triton")
    x = make_input((2, 40, 33, 31), torch.float16, layout, device)
    with torch.no_grad():
        a, b = ours(x), ours(x)
    assert torch.equal(a, b)


def test_gradients_bitwise_deterministic(device):
    ours = cbam_triton.CBAM.from_reference(make_reference(12, device=device, reduction_ratio=4), backend="triton")
    x0 = make_input((2, 12, 9, 9), device=device)
    grads = []
    for _ in range(2):
        x = x0.clone().requires_grad_(True)
        ours(x).square().sum().backward()
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])


# --------------------------------------------------------------------------------- extreme values
def test_fp16_sum_overflowing_fp16_gives_the_right_output(device):
    ref = make_reference(8, device=device, reduction_ratio=2, dtype=torch.float16)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = torch.full((2, 8, 64, 64), 30000.0, dtype=torch.float16, device=device)  # sum over H*W: 1.2e8
    x[:, :, 0, 0] = 60000.0
    with torch.no_grad():
        y = ours(x)
    assert torch.isfinite(y).all()
    assert_close_to_reference(y, ref, x)


def test_huge_logits_do_not_give_nan(device):
    ref = make_reference(16, device=device, reduction_ratio=4)
    with torch.no_grad():
        for p in ref.channel_gate.mlp.parameters():
            p.mul_(1e18)
        ref.spatial_gate.conv.weight.mul_(1e18)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 16, 7, 7), device=device)
    with torch.no_grad():
        y = ours(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("where", ["mlp", "conv", "bn"])
def test_non_finite_weights_propagate_like_the_reference(where, device):
    ref = make_reference(8, device=device, reduction_ratio=2)
    with torch.no_grad():
        target = {"mlp": ref.channel_gate.mlp[0].weight, "conv": ref.spatial_gate.conv.weight,
                  "bn": ref.spatial_gate.bn.running_var}[where]
        target.view(-1)[0] = float("nan") if where != "bn" else float("inf")
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 8, 5, 6), device=device)
    with torch.no_grad():
        y = ours(x)
        expected = ref(x)
    # same precision: which padded taps a NaN weight reaches is the convolution backend's choice
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.isnan(y).any() or torch.isinf(y).any() or where == "bn"


# ---------------------------------------------------------------------------------- hostile input
@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                             (torch.float32, torch.float16)])
def test_mixed_dtypes_between_x_and_weights_work(x_dtype, w_dtype, device):
    """Eager CBAM raises here; cbam_triton computes in fp32 and returns x's dtype."""
    ref = make_reference(12, device=device, reduction_ratio=3, dtype=w_dtype)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 12, 6, 6), x_dtype, "nchw", device)
    with torch.no_grad():
        y = ours(x)
        expected = ref.float()(x.float())
    assert y.dtype == x_dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float32: 1e-5}[x_dtype]
    torch.testing.assert_close(y.float(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("bad,exc,match", [
    (lambda: torch.randn(2, 8, 4), ValueError, "4-D"),
    (lambda: torch.randn(2, 7, 4, 4), ValueError, "7 channels"),
    (lambda: torch.zeros(2, 8, 4, 4, dtype=torch.int64), TypeError, "float16, bfloat16"),
    (lambda: torch.zeros(2, 8, 4, 4, dtype=torch.bool), TypeError, "float16, bfloat16"),
    (lambda: torch.zeros(2, 8, 4, 4, dtype=torch.complex64), TypeError, "float16, bfloat16"),
    (lambda: torch.zeros(2, 8, 0, 4), ValueError, "H, W >= 1"),
    (lambda: torch.zeros(2, 8, 4, 4, device="meta"), ValueError, "is on cpu but x is on meta"),
    (lambda: "not a tensor", TypeError, "torch.Tensor"),
])
def test_hostile_input_raises_clear_errors(bad, exc, match):
    ours = cbam_triton.CBAM(8, reduction_ratio=2, backend="triton").eval()
    with pytest.raises(exc, match=match):
        ours(bad())


def test_zero_batch_works(device):
    ours = cbam_triton.CBAM(8, reduction_ratio=2, backend="triton").to(device).eval()
    for layout in ("nchw", "channels_last"):
        x = make_input((0, 8, 5, 5), torch.float16, layout, device)
        with torch.no_grad(), cbam_triton.record_launches() as launches:
            y = ours.half()(x)
        assert y.shape == x.shape and launches == []


# ------------------------------------------------------------------------------------- GPU only
@gpu
def test_launches_go_to_the_current_stream():
    ours = cbam_triton.CBAM.from_reference(make_reference(64, device="cuda")).eval()
    x = torch.randn(8, 64, 56, 56, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        y = ours(x)
        ref = ours.to_reference()(x)
    s.synchronize()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@gpu
def test_two_streams_with_different_shapes():
    a = cbam_triton.CBAM.from_reference(make_reference(64, device="cuda")).eval()
    b = cbam_triton.CBAM.from_reference(make_reference(256, device="cuda")).eval()
    xa = torch.randn(16, 64, 80, 80, device="cuda")
    xb = torch.randn(16, 256, 14, 14, device="cuda").to(memory_format=torch.channels_last)
    sa, sb = torch.cuda.Stream(), torch.cuda.Stream()
    for s in (sa, sb):
        s.wait_stream(torch.cuda.current_stream())
    with torch.no_grad():
        for _ in range(5):
            with torch.cuda.stream(sa):
                ya = a(xa)
            with torch.cuda.stream(sb):
                yb = b(xb)
        torch.cuda.synchronize()
        torch.testing.assert_close(ya, a.to_reference()(xa), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(yb, b.to_reference()(xb), rtol=1e-5, atol=1e-5)


@gpu
def test_cuda_graph_capture_and_replay():
    ours = cbam_triton.CBAM.from_reference(make_reference(128, device="cuda")).eval().half()
    x = torch.randn(4, 128, 40, 40, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            ours(x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = ours(x)
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(y, ours(x), rtol=0, atol=0)


@gpu
@pytest.mark.slow
def test_more_than_2_31_elements():
    free, _ = torch.cuda.mem_get_info()
    n, c, h, w = 2, 64, 4100, 4100  # 2.15e9 elements
    if free < 3 * n * c * h * w * 2:
        pytest.skip("not enough GPU memory")
    ours = cbam_triton.CBAM(c, reduction_ratio=4).cuda().half().eval()
    x = torch.randn(n, c, h, w, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        y = ours(x)
        # spot-check the last sample's last channel against the reference math on that slice
        avg, mx = x.float().mean((2, 3)), x.float().amax((2, 3))
        mc = ours.channel_gate.channel_map(avg, mx)
        tail = x[-1:, :, -64:, -64:].float() * mc[-1:, :, None, None]
    assert torch.isfinite(y[-1, -1, -64:, -64:]).all()
    assert (y[-1, :, -64:, -64:].float().abs() <= tail[0].abs() + 1e-2).all()
