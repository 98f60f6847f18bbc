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
    return out


FUSED = ["channel_pool_mlp", "spatial_pool", "gate_conv"]


# the three shapes (772, 226 and 429 loads that were not x in one program before)
@pytest.mark.parametrize("shape,layout", [((2, 2048, 7, 7), "nchw"), ((1, 1024, 14, 14), "nchw"),
                                          ((1, 256, 56, 56), "channels_last")],
                         ids=["2048x7x7", "1024x14x14", "256x56x56-cl"])
def test_no_program_has_a_serial_tail(shape, layout, monkeypatch):
    torch.manual_seed(0)
    ref = make_reference(shape[1], reduction_ratio=16)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton").eval()
    x = torch.randn(shape)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    out = _check(ours, x, monkeypatch, FUSED)
    assert_close_to_reference(out, ref, x)


def test_lone_channel_gate(monkeypatch):
    """The lone channel gate computes Mc per tile in the gating kernel (a slice of W2 per program)."""
    torch.manual_seed(0)
    ref = make_reference(1024, reduction_ratio=16)
    gate = cbam_triton.CBAM.from_reference(ref, backend="triton").eval().channel_gate
    x = torch.randn(2, 1024, 7, 7)
    out = _check(gate, x, monkeypatch, ["channel_pool_mlp", "gate"])
    with torch.no_grad():
        torch.testing.assert_close(out, ref.channel_gate(x), rtol=1e-5, atol=1e-5)
