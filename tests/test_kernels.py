"""Each launcher + kernel against its PyTorch twin (cbam_triton._torch_stages), incl. forced splits."""

from __future__ import annotations

import pytest
import torch
from helpers import make_input

from cbam_triton import _torch_stages
from cbam_triton.launchers import channel_pool, gate, spatial_pool
from cbam_triton.launchers._common import choose_split, tile_for

SHAPES = [(2, 5, 3, 37), (1, 70, 9, 9), (3, 1, 1, 1), (1, 3, 1, 300)]


@pytest.mark.parametrize("split", [None, 1, 2, 3, 64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced_c"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_channel_pool_splits(shape, layout, split, device):
    x = make_input(shape, torch.float32, layout, device)
    avg, mx = channel_pool(x, split=split)
    ref_avg, ref_max = _torch_stages.channel_pool(x)
    torch.testing.assert_close(avg, ref_avg, rtol=1e-6, atol=1e-6)
    assert torch.equal(mx, ref_max)  # max is exact


@pytest.mark.parametrize("split", [None, 1, 2, 5])
@pytest.mark.parametrize("with_mc", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_spatial_pool_splits(shape, layout, with_mc, split, device):
    x = make_input(shape, torch.float32, layout, device)
    mc = torch.rand(shape[:2], device=device) if with_mc else None
    out = spatial_pool(x, mc, split=split)
    ref = _torch_stages.spatial_pool(x, mc)
    assert out.shape == (shape[0], 2, shape[2], shape[3]) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("maps", ["mc+ms", "mc", "ms", "none"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "transposed"])
def test_gate(layout, maps, dtype, device):
    shape = (2, 19, 5, 23)
    x = make_input(shape, dtype, layout, device)
    mc = torch.rand(shape[:2], device=device) if "mc" in maps else None
    ms = torch.rand(shape[0], 1, shape[2], shape[3], device=device) if "ms" in maps else None
    out = gate(x, mc, ms)
    ref = _torch_stages.gate(x, mc, ms)
    assert out.dtype == dtype
    if dtype == torch.bfloat16:  # the interpreter truncates fp32 -> bf16 stores: 1 ulp
        torch.testing.assert_close(out.float(), ref.float(), rtol=2 ** -7, atol=1e-6)
    else:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_propagates_nan_and_inf_like_amax(layout, split, device):
    x = make_input((2, 6, 4, 9), torch.float32, layout, device)
    x[0, 1, 2, 3] = float("nan")
    x[0, 2, 0, 0] = float("inf")
    x[1, 4, 3, 8] = float("-inf")
    x[1, :, 1, 1] = float("nan")
    avg, mx = channel_pool(x, split=split)
    ref_avg, ref_max = _torch_stages.channel_pool(x)
    torch.testing.assert_close(mx, ref_max, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(avg, ref_avg, equal_nan=True)
    sp = spatial_pool(x, None, split=split)
    torch.testing.assert_close(sp, _torch_stages.spatial_pool(x), equal_nan=True)
    assert torch.isnan(sp[1, :, 1, 1]).all() and torch.isnan(mx[0, 1])


def test_all_negative_max_is_not_zero(device):
    """Masked lanes must not leak 0 (or -inf) into the max: all values are negative here."""
    x = -1.0 - torch.rand(1, 3, 5, 7, device=device)
    _, mx = channel_pool(x, split=2)
    assert torch.equal(mx, x.amax(dim=(2, 3)))
    sp = spatial_pool(x, torch.ones(1, 3, device=device))
    assert torch.equal(sp[:, 0], x.amax(dim=1))


def test_fp16_sum_that_overflows_fp16_is_exact_in_fp32(device):
    x = torch.full((1, 2, 64, 64), 60000.0, dtype=torch.float16, device=device)
    avg, mx = channel_pool(x)
    assert torch.equal(avg, torch.full_like(avg, 60000.0))
    sp = spatial_pool(x, torch.ones(1, 2, device=device))
    assert torch.isfinite(sp).all()


def test_split_rule():
    # no split when there are enough programs; every split non-empty; per_split a block multiple
    assert choose_split(1000, 4096, 256, 528) == (1, 4096)
    for extent in (1, 7, 255, 256, 257, 5000, 100_000):
        for block in (16, 256, 1024):
            for target in (8, 528):
                n, per = choose_split(1, extent, block, target)
                assert per % block == 0 and 1 <= n <= 64
                assert (n - 1) * per < extent <= n * per
    assert choose_split(1, 1000, 16, 8, forced=3) == (3, 336)


def test_tile_rule():
    assert tile_for("p", 64, 128 * 128) == (2, 1024)
    assert tile_for("p", 2048, 49) == (32, 64)
    assert tile_for("c", 2048, 49) == (1024, 2)
    assert tile_for("c", 3, 100) == (16, 128)
