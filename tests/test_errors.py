"""Bad input gets a clear TypeError/ValueError naming the problem."""

from __future__ import annotations

import pytest
import torch

import cbam_triton
import reference
from cbam_triton import functional as CF


@pytest.fixture
def module():
    return cbam_triton.CBAM(8, reduction_ratio=2).eval()


@pytest.mark.parametrize("shape", [(8, 4, 4), (1, 8, 4), (1, 1, 8, 4, 4), (8,)])
def test_wrong_rank(module, shape):
    with pytest.raises(ValueError, match="4-D"):
        module(torch.randn(shape))


def test_channel_mismatch(module):
    with pytest.raises(ValueError, match="7 channels but the module/weights expect 8"):
        module(torch.randn(1, 7, 4, 4))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_non_float_dtype(module, dtype):
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        module(torch.zeros(1, 8, 4, 4).to(dtype))


def test_not_a_tensor(module):
    with pytest.raises(TypeError, match="torch.Tensor"):
        module([[1.0]])


@pytest.mark.parametrize("shape", [(1, 8, 0, 4), (1, 8, 4, 0)])
def test_empty_spatial(module, shape):
    with pytest.raises(ValueError, match="H, W >= 1"):
        module(torch.randn(shape))


def test_device_mismatch(module):
    x = torch.randn(1, 8, 4, 4, device="meta")
    with pytest.raises(ValueError, match="is on cpu but x is on meta"):
        module(x)


def test_unknown_backend(module):
    with pytest.raises(ValueError, match="backend must be one of"):
        cbam_triton.CBAM(8, backend="cuda")(torch.randn(1, 8, 2, 2))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(channels=0), ValueError, "channels must be >= 1"),
    (dict(channels=8.0), TypeError, "channels must be an int"),
    (dict(channels=8, reduction_ratio=0), ValueError, "reduction_ratio"),
    (dict(channels=8, spatial_kernel_size=4), ValueError, "odd"),
    (dict(channels=8, pool_types=("avg", "lp")), ValueError, "lp"),
    (dict(channels=8, pool_types=()), ValueError, "pool_types"),
    (dict(channels=8, pool_types=("max", "max")), ValueError, "pool_types"),
    (dict(channels=8, hidden_channels=0), ValueError, "hidden_channels"),
])
def test_bad_config(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cbam_triton.CBAM(**kwargs)
    with pytest.raises(exc, match=match):
        reference.CBAM(**kwargs)


def test_functional_bad_weights():
    x = torch.randn(1, 8, 4, 4)
    w1, w2 = torch.randn(2, 8), torch.randn(8, 2)
    conv = torch.randn(1, 2, 7, 7)
    with pytest.raises(ValueError, match="MLP weights"):
        CF.cbam(x, torch.randn(2, 8), None, torch.randn(7, 2), None, conv)
    with pytest.raises(ValueError, match="conv_weight"):
        CF.cbam(x, w1, None, w2, None, torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="pool_types"):
        CF.cbam(x, w1, None, w2, None, conv, pool_types=("lse",))
    with pytest.raises(ValueError, match="mc must have shape"):
        CF.apply_gates(x, torch.rand(1, 7))
    with pytest.raises(ValueError, match="ms must have"):
        CF.apply_gates(x, None, torch.rand(1, 1, 4, 5))
    with pytest.raises(TypeError, match="fc1_weight must be a floating tensor"):
        CF.cbam(x, w1.long(), None, w2, None, conv)


def test_compiled_module_raises_the_eager_error(monkeypatch):
    """Under torch.compile a backend that cannot run raises the ValueError eager raises (not an
    error of dynamo's)."""
    monkeypatch.setenv("CBAM_TRITON_BACKEND", "bogus")
    module = cbam_triton.CBAM(8, reduction_ratio=2).eval()
    torch._dynamo.reset()
    try:
        with torch.no_grad(), pytest.raises(ValueError, match="backend must be one of"):
            torch.compile(module, backend="eager")(torch.randn(1, 8, 2, 2))
    finally:
        torch._dynamo.reset()


def test_backend_triton_refused_on_meta():
    with pytest.raises(ValueError, match="backend='triton' cannot run here"):
        CF.channel_pool(torch.randn(1, 2, 3, 3, device="meta"), backend="triton")
