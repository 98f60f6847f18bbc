"""The fused forward's window path (contiguous NCHW whose channel rows are not 16-byte aligned: 7², 14²,
odd maps): each stage reads x (and stage 3 writes out) through 16-byte-aligned windows, so every access
is 128-bit on a GPU; rows longer than one window are read in pixel blocks of windows. Here: the path
is taken where it should be and nowhere else, and it matches the reference at row offsets of every
class, with channel splits, NaN/Inf next to a row or block boundary, both schedules and the fused
block tail (whose stage 3 takes windows too where its residual is laid out as y)."""

from __future__ import annotations

import pytest
import torch
from dialects import randomize
from helpers import make_input, make_reference
from tolerance import assert_close_to_reference
from torch import nn

import cbam_triton
import reference
from cbam_triton import functional as CF
from cbam_triton.launchers._common import row_window, window_blocks, window_elems


def _forward(ours, x, schedule="stream", chunk_samples=None):
    budget = chunk_samples * x[0].numel() * x.element_size() if chunk_samples else None
    ours.set_schedule(schedule, budget)
    with torch.no_grad(), cbam_triton.record_launches() as launches:
        out = ours(x)
    return out, {launch.name: launch for launch in launches}


# (shape, dtype): fp32 rows of 49 and 35 elements (4 per 16 bytes: offsets 0-3), fp16 rows of 49
# (8 per 16 bytes: every offset 0-7), 196 (offsets 0, 4) and 9 (a row barely longer than a chunk);
# rows longer than one window, read in pixel blocks (WBLOCKS): fp16 33² (1089: every offset, five
# blocks a row) and fp32 23x47 (1081: three blocks)
CASES = [((3, 24, 7, 7), torch.float32), ((2, 20, 5, 7), torch.float32), ((2, 40, 7, 7), torch.float16),
         ((2, 16, 14, 14), torch.float16), ((2, 24, 3, 3), torch.float16), ((2, 16, 33, 33), torch.float16),
         ((2, 12, 23, 47), torch.float32)]


@pytest.mark.parametrize("shape,dtype", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else
                         str(v).removeprefix("torch."))
def test_window_path_matches_reference(shape, dtype, device, monkeypatch):
    monkeypatch.setenv("CBAM_TRITON_TARGET_PROGRAMS", "64")  # channel splits: rows of every class start a split
    monkeypatch.setenv("CBAM_TRITON_CONV_TAPS", "loop")  # the conv by rows (rolled at 14²: 8 x 256 taps a row)
    ref = make_reference(shape[1], reduction_ratio=4, device=device, dtype=dtype)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input(shape, dtype, "nchw", device)
    for schedule, chunk in (("stream", None), ("l2", 1)):
        out, launches = _forward(ours, x, schedule, chunk)
        v = 16 // x.element_size()
        assert [launches[k].meta["WIN"] for k in ("channel_pool_mlp", "spatial_pool", "gate_conv")] == [v] * 3
        p = shape[2] * shape[3]
        assert launches["spatial_pool"].meta["BLOCK_P"] == (row_window(p, v) or window_blocks(p, v))
        assert [launches[k].meta["WBLOCKS"] for k in ("spatial_pool", "gate_conv")] == [p + 2 * (v - 1) > 1024] * 2
        assert_close_to_reference(out, ref, x)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_window_path_non_finite_stays_in_its_channel(value, device):
    """A non-finite value in the last pixel of one channel and the first of another shares a 16-byte
    chunk with the neighbouring row: it must reach only its own channel's pooling and pixel."""
    ref = make_reference(16, reduction_ratio=4, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 16, 7, 7), torch.float32, "nchw", device)
    x[0, 5, 6, 6] = value
    x[1, 10, 0, 0] = value
    out, launches = _forward(ours, x, "l2", 1)
    assert launches["gate_conv"].meta["WIN"] == 4
    assert_close_to_reference(out, ref, x)


@pytest.mark.parametrize("layout", ["channels_last", "sliced_c", "offset"])
def test_window_path_only_for_contiguous_unaligned_nchw(layout, device):
    ref = make_reference(16, reduction_ratio=4, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 16, 7, 7), torch.float32, layout, device)
    out, launches = _forward(ours, x)
    assert all(launch.meta.get("WIN", 0) == 0 for launch in launches.values())
    assert_close_to_reference(out, ref, x)
    aligned = make_input((2, 16, 8, 8), torch.float32, "nchw", device)  # rows already 16-byte aligned
    assert window_elems(aligned, 16 * 64, 64, 1) == 0
    assert window_elems(make_input((2, 16, 7, 7), torch.float32, "nchw", device), 16 * 49, 49, 1) == 4
    assert window_elems(make_input((2, 15, 7, 7), torch.float32, "nchw", device), 15 * 49, 49, 1) == 0  # odd sample
    assert row_window(49, 8) == 64 and row_window(1010, 8) == 1024 and row_window(1011, 8) == 0
    assert window_blocks(1010, 8) == 0 and window_blocks(1011, 8) == 256 and window_blocks(1019, 4) == 256
    assert window_blocks(1089, 0) == 0


def test_window_path_tiny_rows_and_block_tail(device):
    """Rows shorter than a chunk (2x2 fp16): stages 1 and 2 take windows, stage 3 (whose chunks would
    span more than two channels) the row path. The fused block tail (7², and 33² in pixel blocks): every
    stage takes windows, stage 3 with the norm, the residual (laid out as y) and ReLU; a residual in
    another layout keeps stage 3 on the row path."""
    ref = make_reference(32, reduction_ratio=4, device=device, dtype=torch.float16)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 32, 2, 2), torch.float16, "nchw", device)
    out, launches = _forward(ours, x)
    assert launches["channel_pool_mlp"].meta["WIN"] == 8 and launches["spatial_pool"].meta["WIN"] == 8
    assert launches["gate_conv"].meta["WIN"] == 0
    assert_close_to_reference(out, ref, x)

    cb = randomize(reference.CBAM(24, 4), seed=4).eval().to(device)
    norm = randomize(nn.BatchNorm2d(24), seed=5).eval().to(device)
    spec = reference.ResidualTail(norm, cb)
    g, sg = cb.channel_gate.mlp, cb.spatial_gate
    args = (g[0].weight, g[0].bias, g[2].weight, g[2].bias, sg.conv.weight, sg.conv.bias)
    kw = dict(bn_weight=sg.bn.weight, bn_bias=sg.bn.bias, bn_running_mean=sg.bn.running_mean,
              bn_running_var=sg.bn.running_var, bn_eps=sg.bn.eps, norm_weight=norm.weight, norm_bias=norm.bias,
              norm_running_mean=norm.running_mean, norm_running_var=norm.running_var, norm_eps=norm.eps)
    for side, r_layout in ((7, "nchw"), (33, "nchw"), (7, "channels_last")):
        y = make_input((2, 24, side, side), torch.float32, "nchw", device)
        r = make_input((2, 24, side, side), torch.float32, r_layout, device)
        with torch.no_grad(), cbam_triton.record_launches() as rec:
            got = CF.cbam_tail(y, *args, **kw, residual=r)
            want = spec(y, r)
        meta = {launch.name: launch.meta for launch in rec}
        assert meta["channel_pool_mlp"]["WIN"] == 4 and meta["spatial_pool"]["WIN"] == 4
        assert meta["spatial_pool"]["WBLOCKS"] == meta["gate_conv"]["WBLOCKS"] == (side == 33)
        assert meta["gate_conv"]["WIN"] == (4 if r_layout == "nchw" else 0)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_tail_with_only_an_activation_takes_windows(activation, device):
    """The block tail without norm or residual still applies its activation in stage 3's store, on
    the window path."""
    cb = randomize(reference.CBAM(24, 4), seed=4).eval().to(device)
    g, sg = cb.channel_gate.mlp, cb.spatial_gate
    args = (g[0].weight, g[0].bias, g[2].weight, g[2].bias, sg.conv.weight, sg.conv.bias)
    kw = dict(bn_weight=sg.bn.weight, bn_bias=sg.bn.bias, bn_running_mean=sg.bn.running_mean,
              bn_running_var=sg.bn.running_var, bn_eps=sg.bn.eps)
    y = make_input((2, 24, 7, 7), torch.float32, "nchw", device)
    with torch.no_grad(), cbam_triton.record_launches() as rec:
        got = CF.cbam_tail(y, *args, **kw, activation=activation, backend="triton")
        want = getattr(torch.nn.functional, activation)(cb(y))
    gate = next(launch for launch in rec if launch.name == "gate_conv")
    assert gate.meta["WIN"] == 4 and gate.meta["TAIL_ACT"] == {"relu": 1, "silu": 2}[activation]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_stages_2_and_3_keep_a_non_finite_value_in_its_pixel(value, device):
    """Stage by stage (a fixed Mc and pooled map, so that nothing else spreads it): a non-finite value
    at a row boundary, in a 16-byte chunk shared with the neighbouring row, reaches only its own pixel
    of the map (stage 2) and only its own element of the output (stage 3)."""
    from cbam_triton.fused_parts import SpatialConv
    from cbam_triton.launchers.gate_conv import plan_gate_conv
    from cbam_triton.launchers.spatial_pool import plan_spatial_pool

    x = make_input((2, 64, 7, 7), torch.float32, "nchw", device)  # two 32-channel tiles: two splits
    x[0, 5, 6, 6] = value   # the last element of channel 5: shares its chunk with channel 6
    x[1, 10, 0, 0] = value  # the first of channel 10: shares its chunk with channel 9
    mc = torch.rand(2, 64, device=device) + 0.5
    launch, pooled, _ = plan_spatial_pool(x, mc, split=2, combine=True, hints=True)
    assert launch.meta["WIN"] == 4 and launch.meta["COMBINE"]
    launch()
    gated = x * mc[:, :, None, None]
    want = torch.stack([gated.amax(dim=1), gated.mean(dim=1)], dim=1)
    torch.testing.assert_close(pooled, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    own = torch.zeros_like(want, dtype=torch.bool)
    own[0, :, 6, 6] = own[1, :, 0, 0] = True
    bad = ~torch.isfinite(pooled)
    assert bad[own].any() and not bad[~own].any()  # (-inf: only the means; NaN, +inf: means and maxima)

    finite = torch.rand(2, 2, 7, 7, device=device)
    conv = SpatialConv(torch.randn(1, 2, 7, 7, device=device) * 0.2, None)
    launch, out = plan_gate_conv(x, mc, finite, conv, split=2)
    assert launch.meta["WIN"] == 4
    launch()
    ms = torch.sigmoid(torch.nn.functional.conv2d(finite, conv.weight, padding=3))
    torch.testing.assert_close(out, gated * ms, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert (~torch.isfinite(out)).sum() == 2


@pytest.mark.parametrize("value", [float("nan"), float("-inf")], ids=["nan", "-inf"])
def test_window_blocks_of_long_rows_stage_by_stage(value, device):
    """Rows longer than one window (fp32 23x47: 1081 pixels, every row offset) in pixel blocks: stage 2's
    blocks own 250 pixels, stage 3's 253, so a row's last chunk (shared with the next channel) and the
    chunks at block boundaries are read, gated and stored by one program each; with channel splits, a
    fixed Mc and pooled map (stage by stage), and an output filled with NaN beforehand (every element is
    written). A non-finite value in the last pixel of a row, at a stage-2 block boundary (pixel 500) and
    at a stage-3 one (506) reaches only its own pixel of the map and its own output element."""
    from cbam_triton.fused_parts import SpatialConv
    from cbam_triton.launchers.gate_conv import plan_gate_conv
    from cbam_triton.launchers.spatial_pool import plan_spatial_pool

    x = make_input((2, 16, 23, 47), torch.float32, "nchw", device)
    spots = [(0, 5, 1080), (1, 10, 500), (1, 3, 506), (0, 12, 505), (1, 15, 0)]
    for n, c, p in spots:
        x[n, c].view(-1)[p] = value
    mc = torch.rand(2, 16, device=device) + 0.5
    launch, pooled, _ = plan_spatial_pool(x, mc, split=2, combine=True, hints=True)
    assert (launch.meta["WIN"], launch.meta["WBLOCKS"], launch.meta["BLOCK_P"], launch.grid) == (4, True, 256, (10, 2))
    launch()
    gated = x * mc[:, :, None, None]
    want = torch.stack([gated.amax(dim=1), gated.mean(dim=1)], dim=1)
    torch.testing.assert_close(pooled, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    own = torch.zeros(2, 1081, dtype=torch.bool, device=device)
    for n, _, p in spots:
        own[n, p] = True
    bad = ~torch.isfinite(pooled.flatten(2))
    assert bad.any(dim=1)[own].all() and not bad.any(dim=1)[~own].any()

    finite = torch.rand(2, 2, 23, 47, device=device)
    conv = SpatialConv(torch.randn(1, 2, 7, 7, device=device) * 0.2, None)
    out = torch.full_like(x, float("nan"))
    launch, out = plan_gate_conv(x, mc, finite, conv, split=2, out=out)
    assert (launch.meta["WIN"], launch.meta["WBLOCKS"], launch.meta["BLOCK_P"], launch.grid) == (4, True, 256, (10, 2))
    launch()
    ms = torch.sigmoid(torch.nn.functional.conv2d(finite, conv.weight, padding=3))
    torch.testing.assert_close(out, gated * ms, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert (~torch.isfinite(out)).sum() == len(spots)


@pytest.mark.parametrize("shape", [(2, 40, 7, 7), (1, 16, 23, 47)], ids=["7x7", "23x47-blocks"])
def test_block_tail_stage3_on_windows(shape, device):
    """The fused block tail's stage 3 on the window path (one window a row at 7², pixel blocks at 23x47):
    ``relu((y * scale + shift) * Mc * Ms + r)`` with each lane's channel vectors (the next channel's on
    a row's wrapped lanes, picked from one [8, UNROLL, BLOCK_C] load a turn), the residual read through
    y's chunks, an output filled with NaN beforehand; a NaN in y at a row's end, a NaN scale and an inf
    residual reach only their own elements."""
    from cbam_triton.fused_parts import SpatialConv
    from cbam_triton.launchers.gate_conv import plan_gate_conv

    n, c = shape[:2]
    y = make_input(shape, torch.float32, "nchw", device)
    r = make_input(shape, torch.float32, "nchw", device)
    y[0, 5].view(-1)[-1] = float("nan")  # shares its chunk with channel 6
    r[n - 1, 9].view(-1)[0] = float("inf")
    mc = torch.rand(n, c, device=device) + 0.5
    aff = torch.randn(2, c, device=device)
    aff[0, 12] = float("nan")
    pooled = torch.rand(n, 2, *shape[2:], device=device)
    conv = SpatialConv(torch.randn(1, 2, 7, 7, device=device) * 0.2, None)
    out = torch.full_like(y, float("nan"))
    launch, out = plan_gate_conv(y, mc, pooled, conv, split=2, out=out, tail_affine=aff, residual=r, act="relu")
    assert launch.meta["WIN"] == 4 and launch.meta["WBLOCKS"] == (shape[2] * shape[3] > 1018)
    assert launch.longest.other_loads <= 32
    launch()
    ms = torch.sigmoid(torch.nn.functional.conv2d(pooled, conv.weight, padding=3))
    want = torch.relu((y * aff[0, None, :, None, None] + aff[1, None, :, None, None]) * mc[:, :, None, None] * ms + r)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    bad = ~torch.isfinite(out)
    assert bad[:, 12].all() and bad[0, 5].view(-1)[-1] and bad[n - 1, 9].view(-1)[0]
    assert bad.sum() == bad[:, 12].numel() + 2


def test_block_tail_window_path_keeps_two_tiles_in_flight(device):
    """Planned only: stage 3 on the window path walks 32 tiles of 8 fp16 channels (14²) per program and
    keeps four in flight, or two with the block tail's residual (whose tiles are streamed beside y's)."""
    from cbam_triton.fused_parts import SpatialConv
    from cbam_triton.launchers.gate_conv import plan_gate_conv

    x = torch.empty(1, 256, 14, 14, dtype=torch.float16, device=device)
    mc, pooled = torch.empty(1, 256, device=device), torch.empty(1, 2, 14, 14, device=device)
    conv = SpatialConv(torch.empty(1, 2, 7, 7, device=device), None)
    plain, _ = plan_gate_conv(x, mc, pooled, conv, split=1)
    tail, _ = plan_gate_conv(x, mc, pooled, conv, split=1, tail_affine=torch.empty(2, 256, device=device),
                             residual=torch.empty_like(x), act="relu")
    assert (plain.meta["WIN"], plain.meta["UNROLL"], tail.meta["WIN"], tail.meta["UNROLL"]) == (8, 4, 8, 2)
    assert tail.num_warps == 4 and tail.x_in_flight == plain.x_in_flight  # two tiles of y and two of r


# (dtype, shape, BLOCK_P, splits) with shrunken window blocks (BLOCK_P 16 or 32: many blocks a row):
# fp16 2x6 (stage 3 owns 9 pixels a block, 12 % 9 = 3 < WIN - 1: the second-to-last block's lanes
# wrap into the next channel, the last block owns no chunk of some rows), 3x11 and fp32, fp64 rows
SHRUNK_CASES = [(torch.float16, (2, 34, 2, 6), 16, 2), (torch.float16, (1, 40, 3, 11), 32, 3),
                (torch.float32, (2, 18, 3, 10), 16, 3), (torch.float64, (3, 9, 2, 9), 16, 2)]


@pytest.mark.parametrize("dtype,shape,block_p,splits", SHRUNK_CASES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v).removeprefix("torch."))
def test_window_blocks_every_unroll(dtype, shape, block_p, splits, device, monkeypatch):
    """The pixel-block window path with blocks shrunk so that small maps span many of them: stages 2
    and 3 with 1, 2 and 4 tiles a turn, channel splits, C not a multiple of WIN, the plain gate and the
    block tail (affine, residual, SiLU), outputs filled with NaN beforehand."""
    from cbam_triton.fused_parts import SpatialConv
    from cbam_triton.launchers import _common
    from cbam_triton.launchers.gate_conv import plan_gate_conv
    from cbam_triton.launchers.spatial_pool import plan_spatial_pool

    win = 16 // torch.empty((), dtype=dtype).element_size()
    monkeypatch.setattr(_common, "MAX_WINDOW", 8)
    monkeypatch.setattr(_common, "WINDOW_BLOCK_P", block_p)
    monkeypatch.setattr(_common, "TILE_ELEMS", block_p * win)
    n, c, h, w = shape
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = make_input(shape, dtype, "nchw", device)
    mc = torch.rand(n, c, device=device, dtype=acc) + 0.5
    gated = x.to(acc) * mc[:, :, None, None]
    pool_want = torch.stack([gated.amax(dim=1), gated.mean(dim=1)], dim=1)
    pooled = torch.rand(n, 2, h, w, device=device, dtype=acc)
    conv = SpatialConv(torch.randn(1, 2, 7, 7, device=device, dtype=acc) * 0.3, None)
    ms = torch.sigmoid(torch.nn.functional.conv2d(pooled, conv.weight, padding=3))
    r = make_input(shape, dtype, "nchw", device)
    aff = torch.randn(2, c, device=device, dtype=acc)
    y = x.to(acc) * aff[0, None, :, None, None] + aff[1, None, :, None, None]
    wants = {False: gated * ms, True: torch.nn.functional.silu(y * mc[:, :, None, None] * ms + r.to(acc))}
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else dict(rtol=1e-6, atol=1e-6)
    for unroll in (1, 2, 4):
        launch, got, _ = plan_spatial_pool(x, mc, split=splits, combine=True, hints=True)
        assert launch.meta["WBLOCKS"] and launch.meta["BLOCK_C"] == win and launch.grid[1] == splits
        launch.meta["UNROLL"] = unroll
        launch()
        torch.testing.assert_close(got, pool_want, rtol=1e-5, atol=1e-5)
        for tail, want in wants.items():
            kw = dict(tail_affine=aff, residual=r, act="silu") if tail else {}
            launch, out = plan_gate_conv(x, mc, pooled, conv, split=splits, out=torch.full_like(x, float("nan")), **kw)
            assert launch.meta["WBLOCKS"] and launch.grid[1] == splits
            launch.meta["UNROLL"] = unroll
            launch()
            torch.testing.assert_close(out.to(acc), want.to(dtype).to(acc), **tol)


def test_stage3_window_walk_loads_mc_once_a_turn(device):
    """Stage 3 on the window path loads the Mc of a turn's four tiles (and of each row's next channel,
    for its wrapped lanes) as two [4, BLOCK_C] tiles: one program walking 9 tiles of 32 fp32 channels
    (7²) in three turns, the last with one tile and three masked ones that read Mc past C; a NaN Mc in
    the last channel and a -inf in channel 32 (a tile's first row: its wrapped lanes are channel 31's)
    reach only their own channel's elements."""
    from cbam_triton.fused_parts import SpatialConv
    from cbam_triton.launchers.gate_conv import plan_gate_conv

    x = make_input((1, 288, 7, 7), torch.float32, "nchw", device)
    mc = torch.rand(1, 288, device=device) + 0.5
    mc[0, 287] = float("nan")
    mc[0, 32] = float("-inf")
    pooled = torch.rand(1, 2, 7, 7, device=device)
    conv = SpatialConv(torch.randn(1, 2, 7, 7, device=device) * 0.2, None)
    launch, out = plan_gate_conv(x, mc, pooled, conv, split=1)
    assert (launch.meta["WIN"], launch.meta["BLOCK_C"], launch.meta["UNROLL"], launch.grid[1]) == (4, 32, 4, 1)
    assert launch.longest.other_loads == 4 + 2 * 3  # the conv's taps as one tile, Mc: two loads a turn
    launch()
    ms = torch.sigmoid(torch.nn.functional.conv2d(pooled, conv.weight, padding=3))
    want = x * mc[:, :, None, None] * ms
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    bad = ~torch.isfinite(out)
    assert bad[0, 287].all() and bad[0, 32].any() and bad.sum() == bad[0, 287].sum() + bad[0, 32].sum()


# (shape, dtype): programs walking 5 and 3 tiles of 32 fp32 channels (7²) and 5 tiles of 8 fp16 channels (14²)
UNROLL4_CASES = [((2, 160, 7, 7), torch.float32), ((2, 96, 7, 7), torch.float32), ((2, 40, 14, 14), torch.float16)]


@pytest.mark.parametrize("shape,dtype", UNROLL4_CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else str(v).removeprefix("torch."))
def test_window_path_four_tiles_in_flight(shape, dtype, device, monkeypatch):
    """Stages 2 and 3 on the window path issue four tiles' loads at once where a program walks three or
    more (UNROLL=4); tile counts that are not a multiple of four leave masked tiles in the last turn."""
    monkeypatch.setenv("CBAM_TRITON_TARGET_PROGRAMS", str(shape[0]))  # one program per sample: no split
    monkeypatch.setenv("CBAM_TRITON_MC_LAUNCH", "always")  # Mc loaded by stage 2 (unrolled walks)
    ref = make_reference(shape[1], reduction_ratio=8, device=device, dtype=dtype)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input(shape, dtype, "nchw", device)
    out, launches = _forward(ours, x)
    for name in ("spatial_pool", "gate_conv"):
        assert launches[name].meta["UNROLL"] == 4 and launches[name].grid[1] == 1, (name, launches[name].meta)
    assert_close_to_reference(out, ref, x)


def test_stage1_window_path_four_tiles_in_flight(device, monkeypatch):
    """Stage 1 on the window path: fp32 rows of 13² (169 elements, windows of up to 175 lanes) walked
    in 32-lane tiles by one program per (sample, block): six tiles, four loads in flight in the first
    turn, two and two masked ones in the last (UNROLL=4)."""
    from cbam_triton.launchers import residency

    monkeypatch.setenv("CBAM_TRITON_MC_LAUNCH", "always")
    ref = make_reference(64, reduction_ratio=8, device=device, dtype=torch.float32)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 64, 13, 13), torch.float32, "nchw", device)
    with residency.assume(4, 90), residency.force("channel_pool_mlp", (64, 32, 169)):
        out, launches = _forward(ours, x)
    stage1 = launches["channel_pool_mlp"]
    assert (stage1.meta["WIN"], stage1.meta["BLOCK_P"], stage1.meta["UNROLL"], stage1.grid[1]) == (4, 32, 4, 1)
    assert_close_to_reference(out, ref, x)
