"""The fused inference forward: both schedules match the reference, 3 launches per chunk with the
MLP and the conv + BN + sigmoid inside the kernels, the traffic model per schedule, and the
fallbacks (unfusable dialects, batch-statistics BN) with clear errors for an impossible request."""

from __future__ import annotations

import pytest
import torch
from helpers import make_input, make_reference
from tolerance import assert_close_to_reference
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import cbam_triton
from cbam_triton import functional as CF
from cbam_triton.launchers._common import _COUNTERS
from cbam_triton.ops import IMPLEMENTATIONS

FUSED = ["channel_pool_mlp", "spatial_pool", "gate_conv"]


def _sample_bytes(x: torch.Tensor) -> int:
    return x[0].numel() * x.element_size()


def _run(module, x, schedule, chunk_samples=None):
    """module(x) under ``schedule``; with ``chunk_samples`` the L2 budget holds that many samples."""
    budget = chunk_samples * _sample_bytes(x) if chunk_samples else None
    module.set_schedule(schedule, budget)
    with torch.no_grad(), cbam_triton.record_launches() as launches:
        out = module(x)
    return out, launches


class _AtenOps(TorchDispatchMode):
    """Every aten op run (inside cbam_triton's custom ops too), allocations excepted."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        impl = IMPLEMENTATIONS.get(func)
        if impl is not None:
            with self:
                return impl(*args, **(kwargs or {}))
        if not func.__name__.startswith(("empty", "new_empty")) and not getattr(func, "is_view", False):
            self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced_c", "offset"])
@pytest.mark.parametrize("schedule,chunk", [("stream", None), ("l2", 1), ("l2", 2)], ids=["stream", "l2-1", "l2-2"])
def test_schedules_match_reference(schedule, chunk, layout, device):
    ref = make_reference(48, reduction_ratio=8, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((5, 48, 9, 13), torch.float32, layout, device)
    out, launches = _run(ours, x, schedule, chunk)
    assert_close_to_reference(out, ref, x)
    chunks = {None: 1, 1: 5, 2: 3}[chunk]
    assert [launch.name for launch in launches] == FUSED * chunks
    assert all(launch.meta["HINTS"] == (schedule == "l2") for launch in launches)
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout in ("channels_last", "offset"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["fp16", "bf16", "fp64"])
@pytest.mark.parametrize("schedule", ["stream", "l2"])
def test_schedules_low_and_double_precision(schedule, dtype, device):
    ref = make_reference(32, reduction_ratio=4, device=device, dtype=dtype)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((3, 32, 7, 10), dtype, "channels_last" if dtype == torch.float16 else "nchw", device)
    out, _ = _run(ours, x, schedule, 2)
    assert_close_to_reference(out, ref, x)


@pytest.mark.parametrize("shape", [(3, 1, 5, 6), (2, 3, 1, 9), (2, 17, 8, 1), (2, 2048, 2, 2), (1, 5, 1, 1)])
def test_odd_shapes_every_schedule(shape, device):
    c = shape[1]
    ref = make_reference(c, reduction_ratio=16, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    for layout in ("nchw", "channels_last"):
        x = make_input(shape, torch.float32, layout, device)
        for schedule, chunk in (("stream", None), ("l2", 1)):
            out, _ = _run(ours, x, schedule, chunk)
            assert_close_to_reference(out, ref, x)


@pytest.mark.parametrize("reduction,hidden", [(1, None), (16, 1), (4, 5)])
@pytest.mark.parametrize("pool_types", [("avg", "max"), ("avg",), ("max",)], ids=["avgmax", "avg", "max"])
def test_mlp_widths_and_pools(pool_types, reduction, hidden, device):
    """Hidden widths across the kernel's 32x64 MLP tiles (C = 70: partial tiles), each pool mode."""
    ref = make_reference(70, reduction_ratio=reduction, hidden_channels=hidden, pool_types=pool_types, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 70, 5, 5), torch.float32, "nchw", device)
    out, launches = _run(ours, x, "l2", 1)
    assert launches[0].name == "channel_pool_mlp"
    assert_close_to_reference(out, ref, x)


@pytest.mark.parametrize("taps", ["loop", "vector"])
@pytest.mark.parametrize("kernel_size,spatial_norm", [(3, True), (5, False), (1, True), (7, True)])
def test_conv_sizes_and_bn(kernel_size, spatial_norm, taps, device, monkeypatch):
    """Both conv paths of gate_conv (a row loop for long pixel blocks, all taps as one tile for short
    ones; the GPU picks by tile size, the interpreter always vectorises unless forced)."""
    monkeypatch.setenv("CBAM_TRITON_CONV_TAPS", taps)
    ref = make_reference(16, reduction_ratio=4, kernel_size=kernel_size, spatial_norm=spatial_norm, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    for layout in ("channels_last", "nchw"):
        x = make_input((2, 16, 6, 4), torch.float32, layout, device)
        x[1, 2, 3, 1] = float("nan")
        out, launches = _run(ours, x, "l2", 1)
        assert launches[2].meta["KSIZE"] == kernel_size and launches[2].meta["HAS_BN"] == spatial_norm
        assert (launches[2].meta["TAPS"] > 0) == (taps == "vector")
        assert_close_to_reference(out, ref, x)


# (shape, dtype, stage 2's tiles per split), planned for 4 programs: fp32 8² rows in 32-channel tiles,
# splits of 3 and 2 tiles (one turn each, its last one or two tiles masked) and of 6 and 6 (two turns,
# the second cut at the end of a split that is not the last); fp16 16² in 16-channel tiles
STAGE2_UNROLL4_CASES = [((2, 160, 8, 8), torch.float32, (3, 2)), ((2, 384, 8, 8), torch.float32, (6, 6)),
                        ((2, 40, 16, 16), torch.float16, (3,))]


@pytest.mark.parametrize("shape,dtype,tiles", STAGE2_UNROLL4_CASES,
                         ids=["2x160x8x8-fp32", "2x384x8x8-fp32", "2x40x16x16-fp16"])
def test_stage2_aligned_rows_keep_four_tiles_in_flight(shape, dtype, tiles, device, monkeypatch):
    """Stage 2 issues four tiles' loads at once on 16-element aligned rows too (not only on the window
    path) where a program walks three tiles or more; masked tiles of a short turn add nothing."""
    monkeypatch.setenv("CBAM_TRITON_TARGET_PROGRAMS", "4")
    monkeypatch.setenv("CBAM_TRITON_MC_LAUNCH", "always")  # Mc loaded by stage 2 (unrolled walks)
    ref = make_reference(shape[1], reduction_ratio=8, device=device, dtype=dtype)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input(shape, dtype, "nchw", device)
    x[1, -1, 0, 3] = float("nan")  # in the last tile of the last split
    out, launches = _run(ours, x, "stream")
    stage2 = next(launch for launch in launches if launch.name == "spatial_pool")
    per_split, block_c = stage2.args[13], stage2.meta["BLOCK_C"]
    assert (stage2.meta["WIN"], stage2.meta["UNROLL"]) == (0, 4), stage2.meta
    assert tuple(-(-min(per_split, shape[1] - s) // block_c) for s in range(0, shape[1], per_split)) == tiles
    assert_close_to_reference(out, ref, x)


def test_functional_with_conv_bias_bn_without_affine(device):
    """functional.cbam: conv bias, BN running stats without affine parameters, fp16 weights."""
    g = torch.Generator().manual_seed(3)
    c, hid = 24, 6
    t = lambda *s: (torch.randn(*s, generator=g) * 0.3).to(device)  # noqa: E731
    w = dict(fc1_weight=t(hid, c), fc1_bias=t(hid), fc2_weight=t(c, hid), fc2_bias=t(c), conv_weight=t(1, 2, 7, 7),
             conv_bias=t(1))
    rm, rv = t(1), t(1).abs() + 0.5
    x = make_input((3, c, 6, 5), torch.float32, "nchw", device)
    expect = CF.cbam(x, **w, bn_running_mean=rm, bn_running_var=rv, use_bn=True, backend="torch")
    with cbam_triton.record_launches() as launches:
        got = CF.cbam(x, **w, bn_running_mean=rm, bn_running_var=rv, use_bn=True, backend="triton", schedule="l2",
                      l2_budget_bytes=_sample_bytes(x))
    assert [launch.name for launch in launches] == FUSED * 3
    assert not launches[2].meta["HAS_BN_AFFINE"] and launches[2].meta["HAS_CONV_BIAS"]
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)
    half = {k: v.half() for k, v in w.items()}  # weights in another dtype than x: converted in-kernel
    got = CF.cbam(x, **half, backend="triton")
    expect = CF.cbam(x, **half, backend="torch")
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_values_both_schedules(value, layout, device):
    ref = make_reference(16, reduction_ratio=4, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((3, 16, 5, 6), torch.float32, layout, device)
    x[1, 3, 2, 4] = value
    for schedule in ("stream", "l2"):
        out, _ = _run(ours, x, schedule, 1)
        assert_close_to_reference(out, ref, x)


# ---------------------------------------------------------------------------- launches, traffic
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_three_launches_per_chunk_and_no_pytorch_op_between(layout, device, monkeypatch):
    monkeypatch.setenv("CBAM_TRITON_TARGET_PROGRAMS", "4096")  # forces splits: in-kernel combines run
    ours = cbam_triton.CBAM.from_reference(make_reference(256, device=device), backend="triton")
    x = make_input((4, 256, 12, 12), torch.float32, layout, device)
    ours.set_schedule("l2", 2 * _sample_bytes(x))
    with torch.no_grad():
        ours(x[:1])  # the counter buffer exists (its one-time zeroing is not part of later forwards)
    with torch.no_grad(), cbam_triton.record_launches() as launches, _AtenOps() as ops:
        out = ours(x)
    # channels_last: stage 2's many short pixel blocks would each read W2; the model moves Mc to its
    # own launch (cbam_triton.launchers.channel_map.map_launch_pays)
    per_chunk = FUSED if layout == "nchw" else [FUSED[0], "channel_map", *FUSED[1:]]
    assert [launch.name for launch in launches] == per_chunk * 2
    # the splits are combined in-kernel: of H*W in stage 1 (channels_last: short p tiles), of C in stage 2
    if layout == "channels_last":  # short p tiles: stage 1 splits H*W
        assert launches[0].grid[1] > 1 and launches[0].meta["SPLIT"]
    else:  # few pixel blocks: stage 2 splits C
        assert launches[1].grid[1] > 1 and launches[1].meta["COMBINE"]
    # no MLP, conv, BN, sigmoid or combine ops: only views, allocations and the dtype-preserving no-op casts
    assert not [op for op in ops.ops if op not in ("_to_copy", "clone", "contiguous")], ops.ops
    assert torch.all(_COUNTERS[("cpu", None, 0)] == 0)  # every counter was put back to 0
    assert_close_to_reference(out, ours.to_reference(), x)


def test_lone_gates_fuse_too(device):
    ref = make_reference(24, reduction_ratio=4, device=device)
    cg = cbam_triton.CBAM.from_reference(ref, backend="triton").channel_gate
    sg = cbam_triton.CBAM.from_reference(ref, backend="triton").spatial_gate
    x = make_input((3, 24, 5, 7), torch.float32, "channels_last", device)
    for module, names, expect in ((cg, ["channel_pool_mlp", "gate"], ref.channel_gate),
                                  (sg, ["spatial_pool", "gate_conv"], ref.spatial_gate)):
        out, launches = _run(module, x, "l2", 2)
        assert [launch.name for launch in launches] == names * 2
        with torch.no_grad():
            torch.testing.assert_close(out, expect(x), rtol=1e-5, atol=1e-5)


def test_traffic_model_per_schedule(device):
    """Modelled DRAM bytes: stream reads x three times, l2 once (both write the output once)."""
    from cbam_triton.launchers.forward import plan_fused_forward
    from cbam_triton.schedule import plan_schedule

    ours = cbam_triton.CBAM.from_reference(make_reference(64, device=device))
    x = make_input((4, 64, 16, 16), torch.float16, "nchw", device)
    mlp, conv = ours.fused_parts()
    size = x.numel() * x.element_size()
    small = 64 * 4 * (4 * 64 + 4 * 2 * 256)  # generous bound on the small maps' bytes
    for kind, reads in (("stream", 3), ("l2", 1)):
        launches, _ = plan_fused_forward(x, mlp, conv, plan_schedule(4, _sample_bytes(x), kind, 2 * _sample_bytes(x)))
        dram = sum(launch.dram_bytes for launch in launches)
        assert (reads + 1) * size <= dram <= (reads + 1) * size + small, (kind, dram / size)
        logical = sum(launch.bytes_read + launch.bytes_written for launch in launches)
        assert 4 * size <= logical <= 4 * size + small


def test_deterministic_with_splits(device, monkeypatch):
    monkeypatch.setenv("CBAM_TRITON_TARGET_PROGRAMS", "4096")
    ours = cbam_triton.CBAM.from_reference(make_reference(128, device=device), backend="triton")
    x = make_input((2, 128, 8, 8), torch.float32, "nchw", device)
    a, _ = _run(ours, x, "l2", 1)
    b, _ = _run(ours, x, "l2", 1)
    c, _ = _run(ours, x, "stream")
    assert torch.equal(a, b)  # run to run: bitwise (fixed-order combines, integer counters only)
    # another chunking may split the reductions differently: equal up to rounding, not bitwise
    torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ fallbacks
def test_batch_statistics_bn_runs_unfused_and_refuses_l2(device):
    ref = make_reference(16, reduction_ratio=4, device=device, train=True)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((3, 16, 5, 5), torch.float32, "nchw", device)
    out, launches = _run(ours, x, "auto")
    assert [launch.name for launch in launches] == ["channel_pool", "spatial_pool", "gate"]
    with torch.no_grad():
        torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="schedule='l2'.*batch statistics"):
        _run(ours, x, "l2")


class _SiluCBAM(nn.Module):
    """luuuyi-style CBAM with SiLU in the MLP: converted, but its MLP is not fusable."""

    def __init__(self, c):
        super().__init__()
        self.ca = nn.Module()
        self.ca.fc1 = nn.Conv2d(c, c // 4, 1, bias=False)
        self.ca.relu1 = nn.SiLU()
        self.ca.fc2 = nn.Conv2d(c // 4, c, 1, bias=False)
        self.sa = nn.Module()
        self.sa.conv1 = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x):
        ca = self.ca
        y = ca.fc2(ca.relu1(ca.fc1(x.mean((2, 3), keepdim=True)))) + ca.fc2(ca.relu1(ca.fc1(x.amax((2, 3), True))))
        x = x * torch.sigmoid(y)
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.sa.conv1(s))


def test_unfusable_dialect_runs_unfused_and_refuses_l2(device):
    from cbam_triton.converted import ConvertedCBAM, DialectSpec

    src = _SiluCBAM(16).to(device).eval()
    spec = DialectSpec("silu", 16, "avg+max", "ca.fc1", "ca.fc2", "ca.relu1", None, "mean,max", "sa.conv1", None, None)
    ours = ConvertedCBAM(src, spec, backend="triton")
    assert "SiLU" in ours.fused_parts()
    x = make_input((2, 16, 6, 6), torch.float32, "nchw", device)
    out, launches = _run(ours, x, "auto")
    assert [launch.name for launch in launches] == ["channel_pool", "spatial_pool", "gate"]
    with torch.no_grad():
        torch.testing.assert_close(out, src(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="SiLU"):
        _run(ours, x, "l2")


def test_schedule_arguments_are_checked(device):
    with pytest.raises(ValueError, match="schedule"):
        cbam_triton.CBAM(16, schedule="fastest")
    with pytest.raises(TypeError, match="l2_budget_bytes"):
        cbam_triton.CBAM(16, l2_budget_bytes=1.5)
    with pytest.raises(ValueError, match="schedule"):
        cbam_triton.convert(nn.Sequential(), schedule="L2")
    ours = cbam_triton.CBAM(16)
    with pytest.raises(ValueError, match="l2_budget_bytes"):
        ours.set_schedule("l2", 0)
    x = torch.randn(2, 16, 4, 4, device=device)
    w = dict(fc1_weight=torch.randn(4, 16), fc1_bias=None, fc2_weight=torch.randn(16, 4), fc2_bias=None,
             conv_weight=torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match="schedule"):
        CF.cbam(x, **{k: v.to(device) if v is not None else None for k, v in w.items()}, schedule="big")


def test_torch_backend_ignores_schedule(device):
    ref = make_reference(8, reduction_ratio=2, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="torch", schedule="l2")
    x = make_input((2, 8, 4, 4), torch.float32, "nchw", device)
    with torch.no_grad(), cbam_triton.record_launches() as launches:
        torch.testing.assert_close(ours(x), ref(x))
    assert launches == []


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck_fused_forward(layout, device):
    """The fused op's fake implementation (shape, dtype, memory format) and schema hold up."""
    ours = cbam_triton.CBAM.from_reference(make_reference(6, reduction_ratio=2, device=device))
    mlp, conv = ours.fused_parts()
    x = make_input((2, 6, 5, 7), torch.float32, layout, device)
    args = (x, *(t.detach() for t in (mlp.fc1_weight, mlp.fc1_bias, mlp.fc2_weight, mlp.fc2_bias, conv.weight)),
            None, conv.bn_mean, conv.bn_var, conv.bn_weight.detach(), conv.bn_bias.detach(), conv.bn_eps,
            "avg+max", "relu", "max,mean", "l2", 2 * _sample_bytes(x))
    torch.library.opcheck(torch.ops.cbam_triton.fused_forward.default, args)


# ------------------------------------------------------------------------- counters, devices
def test_interrupted_forward_leaves_no_counter_set(device, monkeypatch):
    """A launch that stops part-way (here: an exception after a few arrivals of stage 2, as a
    KeyboardInterrupt in the interpreter would) must not leave an arrival counter set: the next
    forward would let the wrong program combine the partials. The launchers zero them on the way out."""
    if torch.device(device).type != "cpu":
        pytest.skip("interrupts a launch mid-grid through Triton's interpreter")
    from triton.runtime import interpreter

    monkeypatch.setenv("CBAM_TRITON_TARGET_PROGRAMS", "4096")  # splits: both stages count arrivals
    ref = make_reference(256, reduction_ratio=16)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton").eval()
    x = make_input((2, 256, 12, 12), torch.float32, "nchw", "cpu")  # stage 1: 16 arrivals, stage 2: 24
    builder = interpreter.interpreter_builder
    real = builder.create_atomic_rmw
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 16 + 7:  # stage 2, part-way (2 of the 4 splits of a pixel block arrived)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(builder, "create_atomic_rmw", flaky, raising=False)
    with torch.no_grad(), pytest.raises((KeyboardInterrupt, Exception)):
        ours(x)
    monkeypatch.setattr(builder, "create_atomic_rmw", real, raising=False)
    assert torch.all(_COUNTERS[("cpu", None, 0)] == 0)
    with torch.no_grad():
        assert_close_to_reference(ours(x), ref, x)


@pytest.mark.gpu
def test_runs_on_the_inputs_device_not_the_current_one():
    """x on cuda:1 while cuda:0 is current: every launch (fused, unfused, backward) runs on cuda:1."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    ref = make_reference(32, reduction_ratio=8, device="cuda:1")
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton").eval()
    x = make_input((2, 32, 9, 9), torch.float32, "nchw", "cuda:1")
    with torch.cuda.device(0):
        with torch.no_grad():
            out = ours(x)
            again = ours(x)  # the fast path
        torch.cuda.synchronize(1)
        assert out.device == x.device
        assert_close_to_reference(out, ref, x)
        torch.testing.assert_close(again, out, rtol=0, atol=0)
        ours.train()
        xg = x.clone().requires_grad_(True)
        ours(xg).sum().backward()
        assert xg.grad is not None and xg.grad.device == x.device
