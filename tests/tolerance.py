"""The tolerance rule, stated once for every parity test (also quoted in the README).

* float32 / float64: ``|ours - ref64| <= 1e-5 + 1e-5 * |ref64|`` (float64: 1e-10 both), or, where
  the float32 reference itself is further off than that (wide MLPs: C = 2048), no further than
  twice the eager float32 reference's own largest error.
* float16 / bfloat16: per element, ``|ours - ref64| <= 2 * max|eager - ref64| + 1 ulp(ref64)``, where
  ``ref64`` is the reference module run in float64 on the same (low-precision) input and weights,
  ``eager`` is the reference module run in the low precision itself, and the ulp is the output
  dtype's spacing at ``|ref64|`` (the interpreter truncates fp32 -> bf16 stores instead of rounding).
* NaN and +-inf must appear in exactly the same places as in the reference.
"""

from __future__ import annotations

import copy

import torch

RTOL_ATOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-10, 1e-10),
}
LOWP_FACTOR = 2.0
LOWP_ULPS = 1.0


def ulp(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` at |t| (t in float64): ``eps * 2**floor(log2|t|)``."""
    finfo = torch.finfo(dtype)
    mag = t.abs().clamp_min(finfo.smallest_normal)
    return finfo.eps * torch.pow(2.0, torch.floor(torch.log2(mag)))


def assert_same_nonfinite(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.equal(torch.isnan(ours), torch.isnan(ref)), "NaN positions differ from the reference"
    inf_o, inf_r = torch.isinf(ours), torch.isinf(ref)
    assert torch.equal(inf_o, inf_r), "inf positions differ from the reference"
    assert torch.equal(ours[inf_o], ref[inf_r].to(ours.dtype)), "inf signs differ from the reference"


def assert_close_to_reference(ours: torch.Tensor, ref_module: torch.nn.Module, x: torch.Tensor,
                              eager: torch.Tensor | None = None) -> None:
    """Check ``ours`` (computed from x) against ``ref_module`` under the rule above."""
    dtype = x.dtype
    ref64_module = copy.deepcopy(ref_module).double()
    with torch.no_grad():
        ref64 = ref64_module(x.double())
    assert ours.shape == x.shape and ours.dtype == dtype
    ours64 = ours.detach().double()
    assert_same_nonfinite(ours64, ref64)
    finite = torch.isfinite(ref64)
    if not finite.any():
        return
    o, r = ours64[finite], ref64[finite]
    if dtype in RTOL_ATOL:
        rtol, atol = RTOL_ATOL[dtype]
        err = (o - r).abs()
        bound = atol + rtol * r.abs()
        if dtype == torch.float32:
            if eager is None:
                with torch.no_grad():
                    eager = ref_module(x)
            bound = bound.clamp_min(LOWP_FACTOR * (eager.detach().double()[finite] - r).abs().max())
        worst = (err - bound).argmax()
        assert (err <= bound).all(), (f"{dtype}: max error {err.max().item():.3g} exceeds the bound "
                                      f"(at ref value {r[worst].item():.6g}: ours {o[worst].item():.6g})")
        return
    if eager is None:
        with torch.no_grad():
            eager = ref_module(x)
    eager_err = (eager.detach().double()[finite] - r).abs().max()
    bound = LOWP_FACTOR * eager_err + LOWP_ULPS * ulp(r, dtype)
    err = (o - r).abs()
    bad = err > bound
    assert not bad.any(), (f"{dtype}: {int(bad.sum())} elements too far from float64 reference: max error "
                           f"{err.max().item():.3g}, eager {dtype} error {eager_err.item():.3g}")
