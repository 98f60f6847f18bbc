"""No serial tails in the fused forward: every program's loads that are not x, observed one by one in
Triton's interpreter (``cbam_triton.tools.program_work``), stay small, with the tile rule planning for
an H100/H200 (528 programs) as on the GPU; and the launchers' model of the longest program
(``Launch.longest``, printed by ``python -m cbam_triton.explain``) bounds what was observed."""

from __future__ import annotations

import pytest
import torch
from helpers import make_reference
from tolerance import assert_close_to_reference

import cbam_triton
import reference
from cbam_triton.tools.program_work import program_work

#: the limits: per program, loads that are not x (besides its loads of x) and their bytes
MAX_OTHER_LOADS = 32
MAX_OTHER_BYTES = 128 * 1024



def _check(module, x, monkeypatch, names):
    monkeypatch.setenv("CBAM_TRITON_TARGET_PROGRAMS", "528")
    with torch.no_grad(), program_work() as work, cbam_triton.record_launches() as launches:
        out = module(x)
    assert [lw.name for lw in work.launches] == names
    for lw, launch in zip(work.launches, launches):
        pid, worst = lw.worst()
        assert lw.max_other_loads() <= MAX_OTHER_LOADS, (lw.name, lw.grid, pid, worst)
        assert lw.max_other_bytes() <= MAX_OTHER_BYTES, (lw.name, lw.grid, pid, worst)
        model = launch.longest
        assert model is not None, lw.name
        assert lw.max_other_loads() <= model.other_loads, (lw.name, model, worst)
        assert lw.max_other_bytes() <= model.other_bytes, (lw.name, model, worst)
        assert max(w.x_loads for w in lw.programs.values()) <= model.x_loads, (lw.name, model)
    return out, launches


FUSED = ["channel_pool_mlp", "spatial_pool", "gate_conv"]
WITH_MAP = ["channel_pool_mlp", "channel_map", "spatial_pool", "gate_conv"]


# the three measured shapes (772, 226 and 429 loads that were not x in one program before)
@pytest.mark.parametrize("shape,layout,names", [((2, 2048, 7, 7), "nchw", FUSED), ((1, 1024, 14, 14), "nchw", FUSED),
                                                ((1, 256, 56, 56), "channels_last", WITH_MAP)],
                         ids=["2048x7x7", "1024x14x14", "256x56x56-cl"])
def test_no_program_has_a_serial_tail(shape, layout, names, monkeypatch):
    """(256x56x56 channels_last: stage 2's short pixel blocks would read W2 196 times; the channel-map
    launch reads it once, and its programs stay within the bounds too.)"""
    torch.manual_seed(0)
    ref = make_reference(shape[1], reduction_ratio=16)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton").eval()
    x = torch.randn(shape)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    out, _ = _check(ours, x, monkeypatch, names)
    assert_close_to_reference(out, ref, x)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_lone_channel_gate(layout, monkeypatch):
    """The lone channel gate computes Mc per tile in the gating kernel (a slice of W2 per program;
    channels_last: its long channel tiles are cut to the slice, not 1024 channels x hidden)."""
    torch.manual_seed(0)
    ref = make_reference(1024, reduction_ratio=16)
    gate = cbam_triton.CBAM.from_reference(ref, backend="triton").eval().channel_gate
    x = torch.randn(2, 1024, 7, 7)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    out, _ = _check(gate, x, monkeypatch, ["channel_pool_mlp", "gate"])
    with torch.no_grad():
        torch.testing.assert_close(out, ref.channel_gate(x), rtol=1e-5, atol=1e-5)


def test_wide_mlp_sums_its_partials_in_two_levels(monkeypatch):
    """r = 4 at C = 2048 (W1 and W2 4 MiB each): one level would sum 256 KiB of layer-1 partials in
    the last block of a sample; two levels of about sqrt(blocks) rows keep every program small."""
    torch.manual_seed(0)
    ref = make_reference(2048, reduction_ratio=4)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton").eval()
    x = torch.randn(2, 2048, 7, 7)
    out, launches = _check(ours, x, monkeypatch, FUSED)
    assert launches[0].meta["TREE"], launches[0].meta
    assert_close_to_reference(out, ref, x)


@pytest.mark.parametrize("pools,dtype,hidden", [(("avg",), torch.float32, 1024), (("max",), torch.float64, 512),
                                                (("avg", "max"), torch.float64, 256)])
def test_two_level_combine_every_pool_mode(pools, dtype, hidden, monkeypatch):
    """The two-level combine keeps each pool's partials apart (avg-only and max-only MLPs write one
    row per block, avg+max two) and accumulates fp64 inputs in fp64."""
    torch.manual_seed(0)
    ref = make_reference(512, hidden_channels=hidden, pool_types=pools, dtype=dtype)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton").eval()
    x = torch.randn(1, 512, 4, 4, dtype=dtype)
    out, launches = _check(ours, x, monkeypatch, FUSED)
    assert launches[0].meta["TREE"], launches[0].meta
    assert_close_to_reference(out, ref, x)


def test_one_layer_mlp_reads_its_weights_once_per_sample(monkeypatch):
    """ultralytics' CBAM (one C -> C layer: 1 MiB of weights at C = 512, a third of x at 40x40):
    stage 1 writes the layer-1 partials, stage 2 sums a [blocks, tile] slice of them per channel
    tile, so no program reads more than a small slice and W1 is read once per sample."""
    conv = pytest.importorskip("ultralytics.nn.modules.conv")
    torch.manual_seed(0)
    src = conv.CBAM(512, 7).eval()
    ours = cbam_triton.convert(src, inplace=False, backend="triton")
    x = torch.randn(1, 512, 40, 40)
    out, launches = _check(ours, x, monkeypatch, FUSED)
    assert launches[0].bytes_read == x.numel() * 4 + 512 * 512 * 4  # x and W1, once
    with torch.no_grad():
        torch.testing.assert_close(out, src(x), rtol=1e-5, atol=1e-5)


class _Tail(torch.nn.Module):
    """A residual block's fused tail around a converted CBAM (the functional op)."""

    def __init__(self, cbam: torch.nn.Module, norm: torch.nn.BatchNorm2d, residual: torch.Tensor):
        super().__init__()
        self.cbam, self.norm, self.residual = cbam, norm, residual

    def forward(self, y):
        g, s, n = self.cbam.channel_gate.mlp, self.cbam.spatial_gate, self.norm
        return cbam_triton.functional.cbam_tail(
            y, g[0].weight, g[0].bias, g[2].weight, g[2].bias, s.conv.weight, s.conv.bias, bn_weight=s.bn.weight,
            bn_bias=s.bn.bias, bn_running_mean=s.bn.running_mean, bn_running_var=s.bn.running_var, bn_eps=s.bn.eps,
            norm_weight=n.weight, norm_bias=n.bias, norm_running_mean=n.running_mean, norm_running_var=n.running_var,
            norm_eps=n.eps, residual=self.residual, backend="triton")


@pytest.mark.parametrize("residual_layout", ["channels_last", "nchw"])
def test_block_tail_keeps_the_bounds(residual_layout, monkeypatch):
    """The fused block tail adds the norm's vectors (stage 1: 4 per program; stage 2: 2 per channel
    tile; stage 3: one more per tile, or per turn on the window path) and streams the residual (counted
    with x): still within the bounds. A channels_last residual (other strides than x) keeps stage 3 on
    the row path; an NCHW one takes the window path with y."""
    torch.manual_seed(0)
    ref = make_reference(2048, reduction_ratio=16)
    norm = torch.nn.BatchNorm2d(2048).eval()
    with torch.no_grad():
        norm.weight.uniform_(-1.5, 1.5)
        norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 2048, 7, 7)
    residual = torch.randn(1, 2048, 7, 7)
    if residual_layout == "channels_last":
        residual = residual.to(memory_format=torch.channels_last)
    tail = _Tail(cbam_triton.CBAM.from_reference(ref, backend="triton").eval(), norm, residual)
    out, launches = _check(tail, x, monkeypatch, FUSED)
    assert launches[0].meta["AFFINE"] and launches[1].meta["AFFINE"] and launches[2].meta["RESIDUAL"]
    assert launches[2].meta["WIN"] == (4 if residual_layout == "nchw" else 0)
    with torch.no_grad():
        torch.testing.assert_close(out, reference.ResidualTail(norm, ref)(x, residual), rtol=1e-5, atol=1e-5)
