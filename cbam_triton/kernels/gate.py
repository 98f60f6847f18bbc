"""Stage 3: final gating ``out = x * Mc * Ms`` in one read and one write of the big tensor."""

import triton
import triton.language as tl


@triton.jit
def gate_kernel(
    x_ptr, mc_ptr, ms_ptr, out_ptr,
    C, P,
    stride_xn, stride_xc, stride_xp,
    stride_on, stride_oc, stride_op,
    HAS_MC: tl.constexpr, HAS_MS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC_FP64: tl.constexpr,
):
    # Reads one [BLOCK_C, BLOCK_P] tile of x, the matching BLOCK_C values of mc[n, :] and BLOCK_P
    # values of ms[n, :] (small fp32/fp64 maps); writes the same tile of out (x's dtype, layout of
    # out's strides). 1-D grid over N * cdiv(C, BLOCK_C) * cdiv(P, BLOCK_P) tiles, p-blocks
    # fastest. Each element of x is read once and each element of out written once: 2*|x| bytes.
    # The product is formed in fp32 (fp64 for fp64 x) as (x * mc) * ms, the reference's order.
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    pid = tl.program_id(0)
    num_pblocks = tl.cdiv(P, BLOCK_P)
    num_cblocks = tl.cdiv(C, BLOCK_C)
    pb = pid % num_pblocks
    rest = pid // num_pblocks
    cb = rest % num_cblocks
    n = (rest // num_cblocks).to(tl.int64)

    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_c = offs_c < C
    mask_p = offs_p < P
    mask = mask_c[:, None] & mask_p[None, :]
    c64 = offs_c.to(tl.int64)[:, None]
    p64 = offs_p.to(tl.int64)[None, :]

    v = tl.load(x_ptr + n * stride_xn + c64 * stride_xc + p64 * stride_xp, mask=mask, other=0.0).to(acc_t)
    if HAS_MC:
        g = tl.load(mc_ptr + n * C + offs_c, mask=mask_c, other=0.0).to(acc_t)
        v = v * g[:, None]
    if HAS_MS:
        s = tl.load(ms_ptr + n * P + offs_p, mask=mask_p, other=0.0).to(acc_t)
        v = v * s[None, :]
    tl.store(out_ptr + n * stride_on + c64 * stride_oc + p64 * stride_op,
             v.to(out_ptr.dtype.element_ty), mask=mask)
