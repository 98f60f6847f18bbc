"""The input gradient of the whole CBAM block in one pass: ``dx`` from g, x and small maps."""

import triton
import triton.language as tl

from cbam_triton.kernels._common import tile_program, tile_ptrs


@triton.jit
def input_grad_kernel(
    g_ptr, x_ptr, dx_ptr,
    mc_ptr, ms_ptr, pmax_ptr, a_ptr, b_ptr, cmax_ptr, avg_g_ptr, max_g_ptr,
    C, P,
    stride_gn, stride_gc, stride_gp,
    stride_xn, stride_xc, stride_xp,
    stride_dn, stride_dc, stride_dp,
    HAS_G: tl.constexpr, HAS_MC: tl.constexpr, HAS_MS: tl.constexpr, HAS_SPOOL: tl.constexpr,
    HAS_AVG: tl.constexpr, HAS_MAX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC_FP64: tl.constexpr,
):
    # Reads one [BLOCK_C, BLOCK_P] tile of g and of x, and small maps (per channel: mc, cmax,
    # avg_g = d_avg / P, max_g = d_max / #ties; per pixel: ms, pmax, a = d_pmax / #ties,
    # b = d_pmean / C); writes the same tile of dx (x's dtype): 3*|x| bytes for the whole input
    # gradient, every path summed in registers instead of in full-size temporaries:
    #   dx = (g * ms + a * [x * mc == pmax] + b) * mc + avg_g + max_g * [x == cmax]
    # (gate, spatial max/mean pool, channel avg/max pool; max ties share the gradient evenly,
    # as torch.amax; a NaN max has no ties and yields NaN, as torch.amax's backward does).
    # 1-D grid over N * cdiv(C, BLOCK_C) * cdiv(P, BLOCK_P) tiles, p-blocks fastest.
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    n, offs_c, offs_p, mask_c, mask_p = tile_program(C, P, BLOCK_C, BLOCK_P)
    mask = mask_c[:, None] & mask_p[None, :]

    xv = tl.load(tile_ptrs(x_ptr, n, offs_c, offs_p, stride_xn, stride_xc, stride_xp), mask=mask, other=0.0).to(acc_t)
    d = tl.zeros([BLOCK_C, BLOCK_P], dtype=acc_t)
    if HAS_G:
        d = tl.load(tile_ptrs(g_ptr, n, offs_c, offs_p, stride_gn, stride_gc, stride_gp), mask=mask,
                    other=0.0).to(acc_t)
        if HAS_MS:
            s = tl.load(ms_ptr + n * P + offs_p, mask=mask_p, other=0.0).to(acc_t)
            d = d * s[None, :]
    if HAS_MC:
        m = tl.load(mc_ptr + n * C + offs_c, mask=mask_c, other=0.0).to(acc_t)
    if HAS_SPOOL:
        if HAS_MC:
            y = xv * m[:, None]
        else:
            y = xv
        pm = tl.load(pmax_ptr + n * P + offs_p, mask=mask_p, other=0.0).to(acc_t)
        a = tl.load(a_ptr + n * P + offs_p, mask=mask_p, other=0.0).to(acc_t)
        b = tl.load(b_ptr + n * P + offs_p, mask=mask_p, other=0.0).to(acc_t)
        d = d + (a[None, :] * (y == pm[None, :]).to(acc_t) + b[None, :])
    if HAS_MC:
        d = d * m[:, None]
    if HAS_AVG:
        d = d + tl.load(avg_g_ptr + n * C + offs_c, mask=mask_c, other=0.0).to(acc_t)[:, None]
    if HAS_MAX:
        cm = tl.load(cmax_ptr + n * C + offs_c, mask=mask_c, other=0.0).to(acc_t)
        mg = tl.load(max_g_ptr + n * C + offs_c, mask=mask_c, other=0.0).to(acc_t)
        d = d + mg[:, None] * (xv == cm[:, None]).to(acc_t)
    tl.store(tile_ptrs(dx_ptr, n, offs_c, offs_p, stride_dn, stride_dc, stride_dp), d.to(dx_ptr.dtype.element_ty),
             mask=mask)
