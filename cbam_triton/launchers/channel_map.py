"""Launcher of the channel-map launch of the fused forward
(:func:`~cbam_triton.kernels.channel_map.channel_map_kernel`), and the model that decides whether the
MLP's last layer leaves the streaming kernels for it."""

from __future__ import annotations

import os

import torch

from cbam_triton.fused_parts import ACTIVATIONS, POOL_MODES
from cbam_triton.kernels.channel_map import channel_map_kernel
from cbam_triton.launchers._common import Launch, ProgramModel, acc_is_fp64, nbytes, next_pow2
from cbam_triton.launchers.pool_mlp import MC_FC2, MC_PART, ChannelState, pool_rows, weight_bound_bytes

#: elements of the [BLOCK_N, BLOCK_C, KB] product one program forms per k-chunk (64 fp32 registers a
#: thread at 4 warps; half for fp64)
PRODUCT_TILE = 8192
#: most samples one program covers (the weights are read once per this many samples)
MAX_BLOCK_N = 64
#: most tile loads of the k walk (the serial-tail bound of every fused program is 32 loads)
MAX_K_LOADS = 28
#: weight bytes beyond :func:`weight_bound` the channel-map launch must take off the stream to pay
#: for itself: about what the streaming launches move from L2 in the ~0.1 us one more short dependent
#: launch adds under a CUDA graph (a model, not yet measured on a GPU); small tensors stay at 3 launches
MAP_LAUNCH_MIN_BYTES = 256 << 10


def mlp_weight_bytes(state: ChannelState) -> int:
    """Bytes of the MLP's weights and biases (W1, b1, W2, b2)."""
    return nbytes(*(t for t in state.mlp[:4] if t is not None))


def weight_bound(x: torch.Tensor, state: ChannelState) -> int:
    """The modelled MLP weight traffic a chunk may cost: max(|x| / 4, 2 × the weights' size) (the
    streaming target: the weights read O(1) times per chunk, or a small fraction of the stream)."""
    return weight_bound_bytes(x, state.mlp)



def map_launch_pays(x: torch.Tensor, state: ChannelState, in_stream_bytes: int) -> bool:
    """Whether Mc gets its own launch: when the modelled weight traffic of the chunk with Mc computed
    by the streaming programs (``in_stream_bytes``: stage 1's and stage 2's ``weight_bytes``) exceeds
    :func:`weight_bound` by at least :data:`MAP_LAUNCH_MIN_BYTES`. The launch reads the last layer
    once per chunk and takes the weight tiles out of stage 2's registers; below that, one more
    launch costs more than the traffic it saves (small tensors stay at 3 launches).
    ``CBAM_TRITON_MC_LAUNCH=always|never`` forces either (tests, experiments)."""
    forced = os.environ.get("CBAM_TRITON_MC_LAUNCH")
    if forced in ("always", "never"):
        return forced == "always"
    return in_stream_bytes - weight_bound(x, state) >= MAP_LAUNCH_MIN_BYTES


def plan_channel_map(x: torch.Tensor, state: ChannelState, mc: torch.Tensor) -> Launch:
    """Plan ``mc`` (N, C) = Mc of every sample of x (the chunk) from stage 1's :class:`ChannelState`."""
    n, c = x.shape[:2]
    mlp = state.mlp
    two = state.z is not None
    fp64 = acc_is_fp64(x)
    product = PRODUCT_TILE // (2 if fp64 else 1)
    if two:
        w, vec, b = mlp.fc2_weight, state.z, mlp.fc2_bias
        k, s_wc, s_wk = w.shape[1], w.stride(0), w.stride(1)
    else:  # the (N, blocks, pools, C) partials of a one-layer MLP
        assert state.parts is not None
        w = vec = state.parts
        b = mlp.fc1_bias
        k, s_wc, s_wk = state.parts.shape[1], 0, 0
    pools = pool_rows(POOL_MODES[mlp.pools])
    per_chunk = 1 if two else pools  # loads per k-chunk besides the weight tile (z, or one per pool)
    block_n = min(next_pow2(n), MAX_BLOCK_N)
    kb = max(min(next_pow2(k), 16), next_pow2(-(-k * (1 + per_chunk) // MAX_K_LOADS)))
    kb = min(kb, max(1, product // block_n))
    block_c = max(1, min(next_pow2(c), product // (block_n * kb)))
    b_arg = b if b is not None else vec
    launch = Launch(
        kernel=channel_map_kernel,
        grid=(-(-c // block_c), -(-n // block_n)),
        args=(x, vec, w, b_arg, mc, n, c, k, s_wc, s_wk),
        meta=dict(MC_MODE=MC_FC2 if two else MC_PART, POOLS=POOL_MODES[mlp.pools], ACT=ACTIVATIONS[mlp.act],
                  HAS_B=b is not None, BLOCK_N=block_n, BLOCK_C=block_c, KB=kb, ACC_FP64=fp64),
        name="channel_map",
        bytes_read=nbytes(vec, b) + (nbytes(w) if two else 0),
        bytes_written=nbytes(mc),
    )
    n_tiles = -(-n // block_n)
    chunks = -(-k // kb)
    acc = mc.element_size()
    bias = 1 if b is not None else 0
    if two:  # per program: its [BLOCK_C, K] rows of W2 and its samples' z
        loads, nb = 2 * chunks + bias, block_c * k * w.element_size() + block_n * k * acc
        launch.weight_bytes = n_tiles * nbytes(w, b)
    else:
        loads, nb = pools * chunks + bias, pools * block_n * k * block_c * acc
        launch.weight_bytes = n_tiles * nbytes(b)
    launch.longest = ProgramModel(0, 0, loads, nb + bias * block_c * (b.element_size() if b is not None else 0))
    return launch
