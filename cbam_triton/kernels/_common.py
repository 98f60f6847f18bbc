"""Small ``@triton.jit`` helpers shared by the kernels."""

import triton
import triton.language as tl


@triton.jit
def max_propagate_nan(x, axis: tl.constexpr):
    """``tl.max`` along ``axis`` that propagates NaN like ``torch.amax``.

    ``tl.max`` alone drops NaN (PTX ``max.f32``). A ``tl.reduce`` with a NaN-propagating combine
    function would do, but is very slow in the interpreter; this uses two native reductions.
    """
    m = tl.max(x, axis=axis)
    has_nan = tl.max((x != x).to(tl.int32), axis=axis)
    return tl.where(has_nan > 0, float("nan"), m)


@triton.jit
def track_max_count(acc_max, acc_cnt, v, mask):
    """One step of a running per-lane (max, count of elements equal to it), masked lanes ignored.

    ``v`` must already be ``-inf`` where ``mask`` is false. A NaN freezes the lane's count (its
    max becomes NaN, which nothing equals): the final count is then 0, as ``torch.amax``'s backward
    sees it (no element equals a NaN maximum).
    """
    gt = v > acc_max
    eq = (v == acc_max) & mask
    acc_cnt = tl.where(gt, 1, tl.where(eq, acc_cnt + 1, acc_cnt))
    acc_max = tl.maximum(acc_max, v, propagate_nan=tl.PropagateNan.ALL)
    return acc_max, acc_cnt


@triton.jit
def accumulate_tile(v, mask, acc_sum, acc_max, acc_cnt, COUNT: tl.constexpr):
    """One loaded tile into the elementwise (sum, max, and with COUNT count at max) accumulators;
    ``v`` must already be 0 where ``mask`` is false (its max ignores those lanes)."""
    acc_sum += v
    vm = tl.where(mask, v, float("-inf"))
    if COUNT:
        acc_max, acc_cnt = track_max_count(acc_max, acc_cnt, vm, mask)
    else:
        acc_max = tl.maximum(acc_max, vm, propagate_nan=tl.PropagateNan.ALL)
    return acc_sum, acc_max, acc_cnt


@triton.jit
def count_at_max(acc_max, acc_cnt, total_max, axis: tl.constexpr):
    """Elements equal to the reduced maximum: the lane counts of the lanes that reached it."""
    if axis == 0:
        hit = acc_max == total_max[None, :]
    else:
        hit = acc_max == total_max[:, None]
    return tl.sum(tl.where(hit, acc_cnt, 0), axis=axis)


@triton.jit
def tile_ptrs(base, n, offs_c, offs_p, stride_n, stride_c, stride_p):
    """Pointers of the ``[len(offs_c), len(offs_p)]`` tile of sample n of a strided (n, c, p) tensor
    (int64 offsets: no overflow past 2**31 elements)."""
    return base + n * stride_n + offs_c.to(tl.int64)[:, None] * stride_c + offs_p.to(tl.int64)[None, :] * stride_p


@triton.jit
def tile_program(C, P, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's tile of a 1-D grid over N * cdiv(C, BLOCK_C) * cdiv(P, BLOCK_P) tiles
    (p-blocks fastest): ``(n as int64, offs_c, offs_p, mask_c, mask_p)``."""
    pid = tl.program_id(0)
    num_pblocks = tl.cdiv(P, BLOCK_P)
    num_cblocks = tl.cdiv(C, BLOCK_C)
    pb = pid % num_pblocks
    rest = pid // num_pblocks
    cb = rest % num_cblocks
    n = (rest // num_cblocks).to(tl.int64)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    return n, offs_c, offs_p, offs_c < C, offs_p < P


@triton.jit
def walk_program(long_extent, walk_extent, walk_per_split, BLOCK_LONG: tl.constexpr):
    """This program of a walk grid ``(N * cdiv(long_extent, BLOCK_LONG), SPLIT)`` (the backward
    reductions): ``(n as int64, blk, num_blocks, offs, mask, start, end)`` — its long-axis block
    ``blk`` of ``num_blocks``, that block's offsets and mask, and the ``[start, end)`` range of the
    walked axis that its split covers."""
    pid = tl.program_id(0)
    num_blocks = tl.cdiv(long_extent, BLOCK_LONG)
    n = (pid // num_blocks).to(tl.int64)
    blk = pid % num_blocks
    offs = blk * BLOCK_LONG + tl.arange(0, BLOCK_LONG)
    start = tl.program_id(1) * walk_per_split
    end = tl.minimum(start + walk_per_split, walk_extent)
    return n, blk, num_blocks, offs, offs < long_extent, start, end


@triton.jit
def sigmoid(v):
    """``1 / (1 + exp(-v))`` in v's precision (0 at -inf, 1 at +inf, NaN stays NaN)."""
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def relu(v):
    """``max(v, 0)`` that keeps NaN, like ``torch.relu`` (``tl.maximum`` would drop it)."""
    return tl.where(v < 0, 0.0, v)


@triton.jit
def affine_coefficients(offs_c, mask_c, mean_ptr, var_ptr, w_ptr, b_ptr, eps,
                        HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACC_FP64: tl.constexpr):
    """``(scale, shift)`` per channel of an eval-mode BatchNorm, ``y * scale + shift`` =
    ``(y - mean) / sqrt(var + eps) * weight + bias`` (what ``nn.BatchNorm2d`` in eval computes:
    ``scale = weight / sqrt(var + eps)``, ``shift = bias - mean * scale``, IEEE-rounded sqrt)."""
    acc_t: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    # eps rounded to fp32 as a Triton launch passes a Python float (AOTInductor passes it as fp64)
    var_eps = tl.load(var_ptr + offs_c, mask=mask_c, other=1.0).to(acc_t) + tl.cast(tl.cast(eps, tl.float32), acc_t)
    if ACC_FP64:
        scale = 1.0 / tl.sqrt(var_eps)
    else:
        scale = 1.0 / tl.sqrt_rn(var_eps)
    if HAS_W:
        scale = scale * tl.load(w_ptr + offs_c, mask=mask_c, other=0.0).to(acc_t)
    shift = -tl.load(mean_ptr + offs_c, mask=mask_c, other=0.0).to(acc_t) * scale
    if HAS_B:
        shift = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(acc_t) + shift
    return scale, shift


@triton.jit
def tile_row(tile, rows, k):
    """Row ``k`` of a small ``[R, B]`` tile (``rows = tl.arange(0, R)``) as a ``[B]`` vector: one
    tile load for several per-channel vectors, picked apart in registers."""
    return tl.sum(tl.where(rows[:, None] == k, tile, 0.0), axis=0)


@triton.jit
def last_arrival(counter_ptr, expected):
    """Whether this program is the last of ``expected`` programs to reach ``counter_ptr``.

    Call after the program's partial results are stored: the barrier makes every thread's stores
    happen before the (acquire-release) atomic increment, so the last program sees every partial.
    Integer atomics only: the combine that follows runs in a fixed order, so results are
    deterministic. ``counter_ptr`` must hold 0 before the launch; the last program stores 0 back
    when done (:func:`reset_counter`), so the launchers keep one zeroed buffer instead of zeroing
    one per launch.
    """
    tl.debug_barrier()
    arrived = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    return arrived == expected - 1


@triton.jit
def reset_counter(counter_ptr):
    """Put a :func:`last_arrival` counter back to 0 (by its last program: nobody else touches it)."""
    tl.store(counter_ptr, 0)


@triton.jit
def load_x_kept(ptrs, mask, HINTS: tl.constexpr):
    """A tile of x in its own dtype; HINTS (the L2 schedule's first stages): ``evict_last``, so that the
    next stage reads it again from L2."""
    if HINTS:
        v = tl.load(ptrs, mask=mask, other=0.0, eviction_policy="evict_last")
    else:
        v = tl.load(ptrs, mask=mask, other=0.0)
    return v
