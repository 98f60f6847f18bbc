"""The tolerance rule, stated once for every parity test (also quoted in the README).

* float32 / float64: ``|ours - ref64| <= 1e-5 + 1e-5 * |ref64|`` (float64: 1e-10 both), or, where
  the float32 reference itself is further off than that (wide MLPs: C = 2048), no further than
  twice the eager float32 reference's own largest error.
* float16 / bfloat16: per element, ``|ours - ref64| <= 2 * max|eager - ref64| + 1 ulp(ref64)``, where
  ``ref64`` is the reference module run in float64 on the same (low-precision) input and weights,
  ``eager`` is the reference module run in the low precision itself, and the ulp is the output
  dtype's spacing at ``|ref64|`` (the interpreter truncates fp32 -> bf16 stores instead of rounding).
* NaN and +-inf must appear in exactly the same places as in the reference.
* Interpreter only: its fp32 -> bf16 conversion mangles subnormal results (a GPU's cvt.rn.bf16.f32
  does not), so under TRITON_INTERPRET=1 bf16 outputs whose float64 reference is below bf16's
  smallest normal (1.18e-38) may be off by up to that value.
"""

from __future__ import annotations

import copy
import os

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


def _bound(r: torch.Tensor, dtype: torch.dtype, eager_err: torch.Tensor | None) -> torch.Tensor:
    """The rule's per-element bound on |ours - ref64| (r: the float64 reference values)."""
    if dtype in RTOL_ATOL:
        rtol, atol = RTOL_ATOL[dtype]
        bound = atol + rtol * r.abs()
        return bound.clamp_min(LOWP_FACTOR * eager_err) if dtype == torch.float32 else bound
    bound = LOWP_FACTOR * eager_err + LOWP_ULPS * ulp(r, dtype)
    if dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        tiny = torch.finfo(dtype).smallest_normal
        bound = torch.where(r.abs() < tiny, bound.clamp_min(tiny), bound)  # (never tighter than the rule)
    return bound


def assert_close_to_reference(ours: torch.Tensor, ref_module: torch.nn.Module, x: torch.Tensor,
                              eager: torch.Tensor | None = None, precision_limited: bool = False) -> None:
    """Check ``ours`` (computed from x) against ``ref_module`` under the rule above.

    ``precision_limited`` (fuzzing with values near the dtype's maximum): where the reference run in
    x's own precision overflows to inf/NaN although the float64 reference is finite, the input is
    beyond what that precision can compute, and those elements are not compared; everywhere else
    the rule applies unchanged.
    """
    dtype = x.dtype
    ref64_module = copy.deepcopy(ref_module).double()
    with torch.no_grad():
        ref64 = ref64_module(x.double())
        if eager is None and (precision_limited or dtype not in RTOL_ATOL or dtype == torch.float32):
            eager = ref_module(x)
    assert ours.shape == x.shape and ours.dtype == dtype
    ours64 = ours.detach().double()
    finite = torch.isfinite(ref64)
    if precision_limited:
        e64 = eager.detach().double()
        assert torch.equal(torch.isnan(ours64) & torch.isnan(ref64), torch.isnan(ref64)), \
            "NaN missing where the reference has NaN"
        finite = finite & torch.isfinite(e64)
        assert torch.isfinite(ours64[finite]).all(), "non-finite output where the reference is finite"
    else:
        assert_same_nonfinite(ours64, ref64)
    if not finite.any():
        return
    o, r = ours64[finite], ref64[finite]
    eager_err = (eager.detach().double()[finite] - r).abs().max() if eager is not None else None
    err = (o - r).abs()
    bound = _bound(r, dtype, eager_err)
    if dtype in RTOL_ATOL:
        worst = (err - bound).argmax()
        assert (err <= bound).all(), (f"{dtype}: max error {err.max().item():.3g} exceeds the bound "
                                      f"(at ref value {r[worst].item():.6g}: ours {o[worst].item():.6g})")
        return
    bad = err > bound
    assert not bad.any(), (f"{dtype}: {int(bad.sum())} elements too far from float64 reference: max error "
                           f"{err.max().item():.3g}, eager {dtype} error {eager_err.item():.3g}")


def assert_grad_close(ours: torch.Tensor, eager: torch.Tensor, ref64: torch.Tensor, name: str = "grad") -> None:
    """Gradients under the same rule as outputs: ``ours`` (in the input's dtype, or fp32 for
    parameters), ``eager`` (the reference's gradient in that precision) and ``ref64`` (the float64
    reference's gradient). float32/float64: ``atol + rtol * |ref64|``, for float32 relaxed to twice
    eager's own largest error; float16/bfloat16: ``2 * max|eager - ref64| + 1 ulp(ref64)``, with the
    ulp of the gradient's dtype. Non-finite values must sit in the reference's places."""
    assert ours.shape == ref64.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref64.shape)}"
    o, e, r = ours.detach().double(), eager.detach().double(), ref64.detach().double()
    assert_same_nonfinite(o, r)
    fin = torch.isfinite(r)
    if not fin.any():
        return
    o, e, r = o[fin], e[fin], r[fin]
    err, eager_err, dtype = (o - r).abs(), (e - r).abs().max(), ours.dtype
    bad = err > _bound(r, dtype, eager_err)
    assert not bad.any(), (f"{name} ({dtype}): {int(bad.sum())}/{bad.numel()} elements too far from the float64 "
                           f"reference: max error {err.max().item():.3g}, eager error {eager_err.item():.3g}")
