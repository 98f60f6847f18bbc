"""Stage 3: final gating ``out = x * Mc * Ms`` in one read and one write of the big tensor."""

import triton
import triton.language as tl

from cbam_triton.kernels._common import tile_program, tile_ptrs
from cbam_triton.kernels.mlp import MC_LOAD, MC_NONE, channel_map_tile


@triton.jit
def gate_kernel(
    x_ptr, mc_ptr, ms_ptr, out_ptr,
    mcw_ptr, mcb_ptr, vec_ptr,
    C, P, K,
    stride_xn, stride_xc, stride_xp,
    stride_on, stride_oc, stride_op, s_mcw_c, s_mcw_k,
    MC_MODE: tl.constexpr, POOLS: tl.constexpr, ACT: tl.constexpr, HAS_MCB: tl.constexpr, KB: tl.constexpr,
    HAS_MS: tl.constexpr, HINTS: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC_FP64: tl.constexpr,
):
    # Reads one [BLOCK_C, BLOCK_P] tile of x, the matching BLOCK_C values of mc[n, :] and BLOCK_P
    # values of ms[n, :] (small fp32/fp64 maps); writes the same tile of out (x's dtype, layout of
    # out's strides). 1-D grid over N * cdiv(C, BLOCK_C) * cdiv(P, BLOCK_P) tiles, p-blocks
    # fastest. Each element of x is read once and each element of out written once: 2*|x| bytes.
    # The product is formed in fp32 (fp64 for fp64 x) as (x * mc) * ms, the reference's order.
    # MC_MODE: no channel map, mc loaded, or (the fused forward's lone channel gate) the tile's
    # BLOCK_C values of Mc computed here from the MLP's last layer (kernels/mlp.py): a [BLOCK_C, K]
    # slice of the weights per program, never a whole sample's MLP in one program.
    # HINTS (last stage of the L2-resident schedule): x is read for the last time (evict_first) and
    # the output is streamed (st.global.cs), so neither evicts the next chunk's input from L2.
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    n, offs_c, offs_p, mask_c, mask_p = tile_program(C, P, BLOCK_C, BLOCK_P)
    mask = mask_c[:, None] & mask_p[None, :]

    x_ptrs = tile_ptrs(x_ptr, n, offs_c, offs_p, stride_xn, stride_xc, stride_xp)
    if HINTS:
        v = tl.load(x_ptrs, mask=mask, other=0.0, eviction_policy="evict_first").to(acc_t)
    else:
        v = tl.load(x_ptrs, mask=mask, other=0.0).to(acc_t)
    if MC_MODE != MC_NONE:
        if MC_MODE == MC_LOAD:
            g = tl.load(mc_ptr + n * C + offs_c, mask=mask_c, other=0.0).to(acc_t)
        else:
            g = channel_map_tile(n, offs_c, mask_c, C, K, vec_ptr, mcw_ptr, mcb_ptr, s_mcw_c, s_mcw_k, 0.0,
                                 MC_MODE, POOLS, ACT, HAS_MCB, KB, False, acc_t)
        v = v * g[:, None]
    if HAS_MS:
        s = tl.load(ms_ptr + n * P + offs_p, mask=mask_p, other=0.0).to(acc_t)
        v = v * s[None, :]
    out_ptrs = tile_ptrs(out_ptr, n, offs_c, offs_p, stride_on, stride_oc, stride_op)
    if HINTS:
        tl.store(out_ptrs, v.to(out_ptr.dtype.element_ty), mask=mask, cache_modifier=".cs")
    else:
        tl.store(out_ptrs, v.to(out_ptr.dtype.element_ty), mask=mask)
