"""The channel-map launch: Mc of a whole chunk from the MLP's last layer, the weights read once per
chunk instead of once per sample and pixel block, in every MLP dialect; and the model that decides
when it gets its own launch."""

from __future__ import annotations

import pytest
import torch

import cbam_triton
from cbam_triton.fused_parts import ChannelMLP, SpatialConv
from cbam_triton.launchers.forward import fused_forward, plan_chunk
from cbam_triton.schedule import plan_schedule


def _expected(x, mlp: ChannelMLP, conv: SpatialConv):
    """The fused forward's formula in PyTorch (fp64 ground truth)."""
    xd = x.double()
    avg, mx = xd.mean((2, 3)), xd.amax((2, 3))
    ins = {"avg+max": [avg, mx], "avg": [avg], "max": [mx], "light": [0.5 * avg + 0.5 * mx]}[mlp.pools]
    act = torch.relu if mlp.act == "relu" else (lambda v: v)
    w1 = mlp.fc1_weight.double()
    b1 = mlp.fc1_bias.double() if mlp.fc1_bias is not None else 0.0
    if mlp.fc2_weight is None:
        logit = sum(act(v @ w1.T + b1) for v in ins)
    else:
        w2 = mlp.fc2_weight.double()
        b2 = mlp.fc2_bias.double() if mlp.fc2_bias is not None else 0.0
        logit = sum(act(v @ w1.T + b1) @ w2.T + b2 for v in ins)
    y = xd * torch.sigmoid(logit)[:, :, None, None]
    pooled = torch.stack([y.amax(1), y.mean(1)], 1)
    ms = torch.sigmoid(torch.nn.functional.conv2d(pooled, conv.weight.double(), padding=conv.ksize // 2))
    return (y * ms).to(x.dtype)


def _parts(c, hidden, pools, act, bias, two, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    t = lambda *s: (torch.randn(*s, generator=g) * 0.5).to(dtype)  # noqa: E731
    out = c if not two else hidden
    mlp = ChannelMLP(t(out, c), t(out) if bias else None, t(c, hidden) if two else None,
                     t(c) if bias and two else None, pools, act)
    return mlp, SpatialConv(t(1, 2, 3, 3), None)


def _forward(x, mlp, conv):
    with torch.no_grad(), cbam_triton.record_launches() as launches:
        out = fused_forward(x, mlp, conv, plan_schedule(x.shape[0], 0, "stream", None))
    return out, [launch.name for launch in launches]


@pytest.mark.parametrize("pools,act,bias,two", [("avg+max", "relu", True, True), ("avg", "identity", False, True),
                                                ("max", "relu", True, True), ("light", "relu", False, True),
                                                ("avg+max", "relu", True, False), ("avg", "identity", True, False)],
                         ids=["avgmax-relu-bias", "avg-id", "max", "light", "one-layer-avgmax", "one-layer-avg"])
def test_every_dialect_matches(pools, act, bias, two, monkeypatch):
    monkeypatch.setenv("CBAM_TRITON_MC_LAUNCH", "always")
    mlp, conv = _parts(40, 6, pools, act, bias, two)
    x = torch.randn(3, 40, 5, 4)
    out, names = _forward(x, mlp, conv)
    assert names == ["channel_pool_mlp", "channel_map", "spatial_pool", "gate_conv"]
    torch.testing.assert_close(out, _expected(x, mlp, conv), rtol=1e-5, atol=1e-5)


def test_fp64_nan_and_determinism(monkeypatch):
    """fp64 accumulates in fp64; a NaN in one sample's x reaches that sample only; two runs agree bit for bit."""
    monkeypatch.setenv("CBAM_TRITON_MC_LAUNCH", "always")
    mlp, conv = _parts(24, 4, "avg+max", "relu", True, True, torch.float64)
    x = torch.randn(2, 24, 3, 3, dtype=torch.float64)
    out, _ = _forward(x, mlp, conv)
    torch.testing.assert_close(out, _expected(x, mlp, conv), rtol=1e-12, atol=1e-12)
    x[1, 5, 1, 1] = float("nan")
    out, _ = _forward(x, mlp, conv)
    assert torch.isnan(out[1]).all() and not torch.isnan(out[0]).any()
    again, _ = _forward(x, mlp, conv)
    assert torch.equal(out.view(torch.int64), again.view(torch.int64))


def test_weights_read_once_per_chunk_at_the_worst_resnet_shape():
    """2048x7x7, batch 32, fp16, r = 16: computed per sample and pixel block the last layer alone is
    32 reads of W2 (16 MiB); the model moves it to the channel-map launch, which reads it once."""
    n, c = 32, 2048
    x = torch.empty((n, c, 7, 7), dtype=torch.float16, device="meta")
    mlp, conv = _parts(c, c // 16, "avg+max", "relu", True, True, torch.float16)
    mlp = ChannelMLP(*(t.to("meta") if t is not None else None for t in mlp[:4]), mlp.pools, mlp.act)
    conv = SpatialConv(conv.weight.to("meta"), None)
    launches = plan_chunk(x, torch.empty_like(x), mlp, conv, hints=True)
    assert [launch.name for launch in launches] == ["channel_pool_mlp", "channel_map", "spatial_pool", "gate_conv"]
    w2 = c * (c // 16) * 2 + c * 2
    assert launches[1].weight_bytes == w2 and launches[2].weight_bytes == 0
    assert launches[2].meta["MC_MODE"] == 1 and launches[1].longest.other_loads <= 32
    assert launches[1].longest.other_bytes <= 128 * 1024


@pytest.mark.parametrize("group", [2, 3])
def test_layer1_per_sample_group_matches(group, monkeypatch):
    """Layer 1 per group of samples (W1 read once per group, tl.dot on the group's MLP inputs); a last
    group with fewer samples (5 samples in groups of 2 or 3); every pool mode's rows kept apart."""
    monkeypatch.setenv("CBAM_TRITON_MC_LAUNCH", "always")
    monkeypatch.setenv("CBAM_TRITON_L1_GROUP", str(group))
    for pools, act, bias in (("avg+max", "relu", True), ("max", "identity", False)):
        mlp, conv = _parts(40, 6, pools, act, bias, True)
        x = torch.randn(5, 40, 5, 4)
        with torch.no_grad(), cbam_triton.record_launches() as launches:
            out = fused_forward(x, mlp, conv, plan_schedule(5, 0, "stream", None))
        assert launches[0].meta["L1G"] and launches[0].args[-1] == group
        torch.testing.assert_close(out, _expected(x, mlp, conv), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layer1_groups_with_16bit_weights_keep_fp32_accuracy(dtype, monkeypatch):
    """16-bit W1 (exact in tf32) times the fp32 MLP inputs split in two tf32 parts: the hidden vector z
    agrees with fp64 to fp32's accuracy, not tf32's (one tf32 product alone is off by ~1e-4)."""
    monkeypatch.setenv("CBAM_TRITON_MC_LAUNCH", "always")
    monkeypatch.setenv("CBAM_TRITON_L1_GROUP", "2")
    mlp, conv = _parts(64, 16, "avg+max", "relu", True, True, dtype)
    x = (torch.randn(3, 64, 4, 4) * 3 + 1).to(dtype)
    with torch.no_grad(), cbam_triton.record_launches() as launches:
        fused_forward(x, mlp, conv, plan_schedule(3, 0, "stream", None))
    assert launches[0].meta["L1G"]
    z = launches[0].args[8]
    xd = x.double()
    w1, b1 = mlp.fc1_weight.double(), mlp.fc1_bias.double()
    want = sum(torch.relu(v @ w1.T + b1) for v in (xd.mean((2, 3)), xd.amax((2, 3))))
    torch.testing.assert_close(z.double(), want, rtol=2e-6, atol=2e-6)


def test_layer1_groups_two_level_combine_within_the_program_bounds(monkeypatch):
    """C = 2048 in groups of 3 samples: the group's partials of 32 channel blocks are summed in two
    levels, and no program exceeds the serial-tail bounds (observed and modelled)."""
    from cbam_triton.tools.program_work import program_work

    monkeypatch.setenv("CBAM_TRITON_MC_LAUNCH", "always")
    monkeypatch.setenv("CBAM_TRITON_L1_GROUP", "3")
    monkeypatch.setenv("CBAM_TRITON_TARGET_PROGRAMS", "528")
    mlp, conv = _parts(2048, 128, "avg+max", "relu", True, True)
    x = torch.randn(3, 2048, 7, 7)
    with torch.no_grad(), program_work() as work, cbam_triton.record_launches() as launches:
        out = fused_forward(x, mlp, conv, plan_schedule(3, 0, "stream", None))
    assert launches[0].meta["L1G"] and launches[0].args[-1] == 3 and launches[0].meta["TREE"]
    for lw, launch in zip(work.launches, launches):
        assert lw.max_other_loads() <= min(32, launch.longest.other_loads), (lw.name, lw.worst())
        assert lw.max_other_bytes() <= min(128 * 1024, launch.longest.other_bytes), (lw.name, lw.worst())
    torch.testing.assert_close(out, _expected(x, mlp, conv), rtol=1e-4, atol=1e-5)


def test_weight_traffic_model_at_the_worst_resnet_shape():
    """2048x7x7 batch 32 fp16: 33 MiB of modelled weight traffic with both layers per sample; with
    layer 1 per group of samples and the channel-map launch it is a few reads of each layer."""
    n, c = 32, 2048
    x = torch.empty((n, c, 7, 7), dtype=torch.float16, device="meta")
    mlp, conv = _parts(c, c // 16, "avg+max", "relu", True, True, torch.float16)
    mlp = ChannelMLP(*(t.to("meta") for t in mlp[:4]), mlp.pools, mlp.act)
    launches = plan_chunk(x, torch.empty_like(x), mlp, SpatialConv(conv.weight.to("meta"), None), hints=True)
    w1 = c * (c // 16) * 2 + (c // 16) * 2
    gs = launches[0].args[-1]
    assert launches[0].meta["L1G"] and gs >= 4 and launches[0].weight_bytes == -(-n // gs) * w1
    total = sum(launch.weight_bytes for launch in launches)
    weights = w1 + c * (c // 16) * 2 + c * 2
    assert total <= 3 * weights  # (both layers per sample: 32 reads of the weights)
    for launch in launches:  # the group is no larger than the serial-tail bounds allow (modelled)
        assert launch.longest.other_loads <= 32 and launch.longest.other_bytes <= 128 * 1024, launch.name
