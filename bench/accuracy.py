"""Correctness of a provider's output: the check against eager (block and network runs) and the check
against a float64 reference under the project's tolerance rule (the compiler study).

The float64 rule is the one of the parity tests (``tests/tolerance.py``): float32 outputs may be
``1e-5 + 1e-5·|ref64|`` from the float64 reference, or, where eager float32 itself is further off,
no further than twice eager's own largest error; float16/bfloat16 outputs ``2·max|eager − ref64|``
plus one ulp of the output dtype. NaN and ±inf must sit where the reference has them.
"""

from __future__ import annotations

from typing import Any

import torch

#: Output check against eager, per dtype: |out - eager| <= atol + rtol * |eager|.
CHECK_TOL = {"fp32": (1e-4, 1e-4), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2)}
#: the float64 rule: (rtol, atol) for float32, the factor on eager's own error, the ulps for half types
REF_RTOL_ATOL = (1e-5, 1e-5)
EAGER_FACTOR = 2.0
LOWP_ULPS = 1.0


def check_output(out: Any, expected: Any, dtype: str, scaled: bool = False) -> tuple[bool, float]:
    """Whether ``out`` matches eager within the per-dtype tolerance, and the max abs error.

    ``out``/``expected`` are tensors or tuples of tensors (train mode: output and dx). ``scaled``:
    the absolute tolerance is relative to the largest |expected| (gradients are sums of many terms).
    """
    if isinstance(out, tuple):
        results = [check_output(o, e, dtype, scaled) for o, e in zip(out, expected)]
        return all(ok for ok, _ in results) and len(out) == len(expected), max(err for _, err in results)
    if out.shape != expected.shape or out.dtype != expected.dtype:
        return False, float("inf")
    o, e = out.detach().float(), expected.detach().float()
    err = (o - e).abs()
    max_err = float(err.max()) if err.numel() else 0.0
    rtol, atol = CHECK_TOL[dtype]
    finite = torch.isfinite(e)
    if scaled and finite.any():
        atol = atol * max(1.0, float(e[finite].abs().max()))
    nan_ok = torch.equal(torch.isnan(o), torch.isnan(e))
    ok = nan_ok and bool((err[finite] <= atol + rtol * e[finite].abs()).all())
    return ok, max_err


def _ulp(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    finfo = torch.finfo(dtype)
    mag = t.abs().clamp_min(finfo.smallest_normal)
    return finfo.eps * torch.pow(2.0, torch.floor(torch.log2(mag)))


def check_against_reference(out: torch.Tensor, ref64: torch.Tensor, eager: torch.Tensor) -> dict[str, Any]:
    """``out`` against the float64 reference ``ref64`` under the rule above (``eager``: the eager output
    in the input's precision, whose own error sets the float32 slack). Returns ``{"ok", "max_abs_err",
    "eager_max_abs_err", "error"}`` (``error``: why it failed, one line; empty when it passed)."""
    dtype = eager.dtype
    res: dict[str, Any] = {"ok": False, "max_abs_err": None, "eager_max_abs_err": None, "error": ""}
    out = out.detach().to("cpu") if out.device != ref64.device else out.detach()
    if tuple(out.shape) != tuple(ref64.shape):
        res["error"] = f"output shape {tuple(out.shape)} != {tuple(ref64.shape)}"
        return res
    if out.dtype != dtype:
        res["error"] = f"output dtype {out.dtype} != {dtype}"
        return res
    o, r, e = out.double(), ref64.double(), eager.detach().to(ref64.device).double()
    finite = torch.isfinite(r)
    if not (torch.equal(torch.isnan(o), torch.isnan(r)) and torch.equal(torch.isinf(o), torch.isinf(r))):
        res["error"] = "NaN/inf in other places than the float64 reference"
        return res
    o, r, e = o[finite], r[finite], e[finite]
    err = (o - r).abs()
    eager_err = float((e - r).abs().max()) if r.numel() else 0.0
    res["max_abs_err"] = float(err.max()) if err.numel() else 0.0
    res["eager_max_abs_err"] = eager_err
    if dtype in (torch.float32, torch.float64):
        rtol, atol = REF_RTOL_ATOL
        bound = (atol + rtol * r.abs()).clamp_min(EAGER_FACTOR * eager_err)
    else:
        bound = EAGER_FACTOR * eager_err + LOWP_ULPS * _ulp(r, dtype)
    bad = err > bound
    if bool(bad.any()):
        res["error"] = (f"max abs error {res['max_abs_err']:.3g} vs the float64 reference exceeds the bound "
                        f"({int(bad.sum())}/{bad.numel()} elements; eager's own error {eager_err:.3g})")
        return res
    res["ok"] = True
    return res
