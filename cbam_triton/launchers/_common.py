"""Shared launcher machinery: the (n, c, p) view of x, tile rules, launch plans, launch counting.

A launcher never launches directly: it builds a :class:`Launch` (kernel, grid, arguments,
meta-parameters) and calls it. The same plans feed the ahead-of-time compile gate
(:mod:`cbam_triton.tools.kernel_report`), so what is compiled there is exactly what runs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from cbam_triton._layout import as_ncp, compute_dtype, empty_output, ncp_strides  # noqa: F401 (re-exported)

#: Elements per tile of every kernel (fp32 accumulators: 2 * 2048 / 128 threads = 32 registers).
TILE_ELEMS = 2048
NUM_WARPS = 4
#: Allowed lengths of the unit-stride ("long") tile axis; the other axis is TILE_ELEMS // long.
#: Powers of four keep the set of compiled variants small (see the kernel report).
LONG_BLOCKS = (16, 64, 256, 1024)
#: A split (of H*W in stage 1, of C in stage 2) keeps at least this many tile iterations.
MIN_ITERS_PER_SPLIT = 2
#: Upper bound on splits, so the partial workspaces stay O(N*C + N*H*W).
MAX_SPLIT = 64
#: Program count the split heuristic aims for when no GPU tells us its SM count (interpreter).
CPU_TARGET_PROGRAMS = 8


@dataclass(frozen=True)
class ProgramModel:
    """Modelled work of one program: loads of x and other loads (count, bytes)."""

    x_loads: int
    x_bytes: int
    other_loads: int
    other_bytes: int


@dataclass
class Launch:
    """One kernel launch, fully described: runnable, countable and compilable ahead of time."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    meta: dict[str, Any]
    num_warps: int = NUM_WARPS
    name: str = field(default="")
    #: DRAM traffic model of this launch: bytes it reads and writes (each element once).
    bytes_read: int = 0
    bytes_written: int = 0
    #: of ``bytes_read``, what the schedule expects L2 to serve (x re-read in the L2-resident schedule)
    l2_bytes: int = 0
    #: model of the launch's longest program (fused forward): its loads of x and its other loads
    #: (weights, partials, maps), counts and bytes; see :func:`cbam_triton.tools.program_work.modelled`
    longest: ProgramModel | None = None
    #: streaming model (fused forward): unmasked x bytes one program has outstanding at once (its
    #: x bytes ÷ its loop iterations, each iteration's loads issued together) — see
    #: :mod:`cbam_triton.launchers.residency`
    x_in_flight: int = 0
    #: modelled bytes of MLP weights the launch reads (every program's slices, all samples)
    weight_bytes: int = 0
    #: tensors streamed besides x (the fused block tail's residual): their loads count as x's
    streamed: tuple[Any, ...] = ()
    #: the kernel variant its grid was sized for (:attr:`FusedPlan.variant`): the key of its compiled
    #: registers in :mod:`~cbam_triton.launchers.residency`
    variant: tuple | None = None

    @property
    def dram_bytes(self) -> int:
        """Modelled DRAM traffic: reads not served by L2, plus writes."""
        return self.bytes_read - self.l2_bytes + self.bytes_written

    def __call__(self) -> Any:
        """Launch (after the :func:`record_launches` hooks). Returns what ``kernel[grid](...)``
        returned: on a GPU Triton's compiled kernel, which :mod:`cbam_triton.launchers.bound` keeps
        to launch again without Triton's per-call argument binding."""
        for hook in LAUNCH_HOOKS:
            hook(self)
        if min(self.grid) == 0 or _PLAN_ONLY[0]:
            return None
        if type(self.kernel).__name__ == "InterpretedFunction":
            return interpret(self.kernel, self.grid, self.args, {**self.meta, "num_warps": self.num_warps})
        kernel, x = self.kernel, self.args[0]
        if launches_wrapped():  # cbam_triton.ops' triton_op bodies: recorded as Triton kernel calls when traced
            from torch._subclasses.fake_tensor import is_fake
            from torch.library import wrap_triton

            kernel = wrap_triton(kernel)
            if is_fake(x):  # traced: the graph launches it on x's device
                kernel[self.grid](*self.args, **self.meta, num_warps=self.num_warps)
                return None
        if x.is_cuda and x.device.index != torch.cuda.current_device():
            # Triton launches on the current device: run on x's (multi-GPU: x on cuda:1, current cuda:0)
            with torch.cuda.device(x.device):
                return kernel[self.grid](*self.args, **self.meta, num_warps=self.num_warps)
        return kernel[self.grid](*self.args, **self.meta, num_warps=self.num_warps)


#: one launch at a time in Triton's interpreter: its programs run on the host, and the arrival
#: counters they share with every other forward on the device are all back at 0 only once a launch ends
INTERPRETER_LOCK = threading.Lock()


def interpret(kernel: Any, grid: tuple[int, ...], args: Any, kwargs: dict[str, Any]) -> Any:
    """``kernel[grid](*args, **kwargs)`` in Triton's interpreter, serialised across threads.

    The interpreter moves the kernel's arguments with aten ops of its own; a GPU launch does not.
    Only while a TorchDispatchMode is active (allocation/traffic counters) are they hidden from it:
    the check costs ~0.1 us, hiding them ~10 us.
    """
    with INTERPRETER_LOCK:
        if torch._C._len_torch_dispatch_stack() or _PRE_DISPATCH_MODES():
            from torch.utils._python_dispatch import _disable_current_modes

            with _disable_current_modes():
                return kernel[grid](*args, **kwargs)
        return kernel[grid](*args, **kwargs)


_PRE_DISPATCH_MODES: Callable[[], int] = getattr(torch._ops, "_len_torch_dispatch_stack_pre_dispatch", lambda: 0)


LAUNCH_HOOKS: list[Callable[[Launch], None]] = []
_PLAN_ONLY = [0]  # nesting depth of plan_only()
_WRAPPED_STATE = threading.local()  # .depth: nesting depth of wrapped_launches() in this thread


@contextlib.contextmanager
def wrapped_launches() -> Iterator[None]:
    """Inside this context every :class:`Launch` of a compiled (not interpreted) kernel goes through
    ``torch.library.wrap_triton``, so that a trace records it as a Triton kernel call (what
    ``torch.library.triton_op`` bodies do: AOTInductor then compiles the kernel into its package),
    and arrival counters are fresh zeroed buffers (allocations the trace records) rather than the
    per-stream buffer. Kernels in Triton's interpreter launch as usual."""
    _WRAPPED_STATE.depth = launches_wrapped() + 1
    try:
        yield
    finally:
        _WRAPPED_STATE.depth -= 1


def launches_wrapped() -> int:
    """Whether (how deeply nested) :func:`wrapped_launches` is active in this thread."""
    return getattr(_WRAPPED_STATE, "depth", 0)


@contextlib.contextmanager
def plan_only() -> Iterator[None]:
    """Inside this context every :class:`Launch` is planned and recorded (:func:`record_launches`)
    but not launched: outputs are left unwritten. For traffic models at sizes Triton's interpreter
    cannot run in reasonable time (the benchmark's whole networks on a CPU); never for results."""
    _PLAN_ONLY[0] += 1
    try:
        yield
    finally:
        _PLAN_ONLY[0] -= 1


@contextlib.contextmanager
def record_launches() -> Iterator[list[Launch]]:
    """Context manager collecting every Triton :class:`Launch` cbam_triton makes inside it."""
    seen: list[Launch] = []
    LAUNCH_HOOKS.append(seen.append)
    try:
        yield seen
    finally:
        LAUNCH_HOOKS.remove(seen.append)


def output_for(x: torch.Tensor, out: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``out`` (checked: x's shape and dtype, H and W mergeable) or a new output like x, with its
    (n, c, p) strides."""
    if out is None:
        return empty_output(x)
    strides = ncp_strides(out)
    if out.shape != x.shape or out.dtype != x.dtype or strides is None:
        raise ValueError(f"out must have x's shape {tuple(x.shape)} and dtype {x.dtype} with mergeable H, W; "
                         f"got {tuple(out.shape)} {out.dtype} strides {out.stride()}")
    return out, strides


def nbytes(*tensors: torch.Tensor | None) -> int:
    """Logical bytes of the given tensors (elements x itemsize; None counts 0)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def next_pow2(v: int) -> int:
    return 1 if v <= 1 else 1 << (v - 1).bit_length()


def long_block(extent: int) -> int:
    """Smallest allowed long-axis block covering ``extent`` (capped at the largest)."""
    for b in LONG_BLOCKS:
        if b >= extent:
            return b
    return LONG_BLOCKS[-1]


def acc_is_fp64(x: torch.Tensor) -> bool:
    return x.dtype == torch.float64


def unit_axis(stride_c: int, stride_p: int, c: int, p: int) -> str:
    """Which axis is contiguous in memory: ``"p"`` (NCHW-like) or ``"c"`` (channels_last-like)."""
    if stride_p == 1 and p > 1:
        return "p"
    if stride_c == 1 and c > 1:
        return "c"
    return "p"


def tile_for(long_axis: str, c: int, p: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P): the unit-stride axis gets a long block, the other the rest of the tile."""
    if long_axis == "p":
        bp = long_block(p)
        return TILE_ELEMS // bp, bp
    bc = long_block(c)
    return bc, TILE_ELEMS // bc


def target_programs(device: torch.device) -> int:
    """Programs to aim for: 4 per SM on a GPU, a small number in the interpreter."""
    override = os.environ.get("CBAM_TRITON_TARGET_PROGRAMS")
    if override:
        return max(1, int(override))
    if device.type != "cuda":
        return CPU_TARGET_PROGRAMS
    from cbam_triton.launchers.residency import planning_target

    return 4 * planning_target(device)[0]  # type: ignore[index]  (x's GPU, or the one planned for)


def choose_split(base_programs: int, extent: int, block: int, target: int,
                 forced: int | None = None, max_split: int = MAX_SPLIT, min_split: int = 1) -> tuple[int, int]:
    """Split a reduction of length ``extent`` (tiles of ``block``) to reach ``target`` programs.

    Returns ``(num_splits, per_split)`` with ``per_split`` a multiple of ``block`` and every split
    non-empty. ``forced`` (tests, benchmarks) requests a split count, still clamped to valid values.
    ``min_split``: at least this many splits (where the extent allows), e.g. so that each split's
    share of the MLP weights stays small; it overrides ``max_split``.
    """
    iters = max(1, -(-extent // block))
    if forced is not None:
        want = max(1, forced)
    else:
        want = -(-target // max(1, base_programs)) if base_programs < target else 1
        want = min(want, max(1, iters // MIN_ITERS_PER_SPLIT), MAX_SPLIT, max(1, max_split))
        want = max(want, min_split)
    want = min(want, iters)
    per_split = -(-iters // want) * block
    return -(-extent // per_split), per_split


#: Fused forward: the long (unit-stride) tile axis may shrink to this many elements (128 bytes of
#: fp16) to create more programs along the free axis before a reduction is split.
MIN_FUSED_LONG = 64
#: Fused forward: lengths of the long tile axis the tile rule may pick (below MIN_FUSED_LONG only to
#: fit a small extent or to keep the MLP weights re-read per sample bounded).
FUSED_LONG_BLOCKS = (1024, 512, 256, 128, 64, 32, 16)
#: Fused forward: the split partials of a reduction (8 bytes per split and output element) may
#: add at most 1/WORKSPACE_FRACTION of the x bytes they reduce.
WORKSPACE_FRACTION = 8
#: Fused forward: a tile whose blocks cover the (c, p) extents at least this well, and whose last
#: block of the free axis is at least a quarter full, is "fitting"; e.g. 196 pixels in 64-pixel
#: blocks would leave the programs of the last block 4/64 of a tile (256-pixel blocks: one, 77 %).
MIN_TILE_FILL = 0.7
#: Fused forward: bytes of small data (weight slices, split partials) one program may read in one
#: phase; the launchers size splits and blocks so that no program's serial work exceeds it.
PROGRAM_SMALL_BYTES = 64 * 1024
#: Fused forward: the most tiles a program of stages 2 and 3 walks when it loads small data (Mc,
#: weight slices) per tile, so that its loads that are not x stay a few tens
MAX_WALK_TILES = 8
#: Elements of the small tiles (weights, partials) the fused kernels load at once (32 fp32 registers
#: per thread at 4 warps).
SMALL_TILE = 4096


def in_flight(program_x_bytes: int, tiles: int, unroll: int = 1) -> int:
    """Unmasked x bytes a streaming program has outstanding at once: its x bytes ÷ its loop
    iterations (each iteration issues ``unroll`` tile loads together)."""
    return program_x_bytes // max(1, -(-tiles // max(1, unroll)))


def rows_16b(x: torch.Tensor, sc: int, sp: int) -> bool:
    """Whether Triton sees x's rows along its unit-stride axis as 16-element aligned (128-bit loads): only
    then does a second tile in flight (``UNROLL=2``) cost a few registers; 16-bit loads of an
    unaligned NCHW map (7², 14², 28²) would take one register per element and cut the CTAs per SM."""
    n, c, h, w = x.shape
    other, extent = (sc, h * w) if sp == 1 and h * w > 1 else (sp, c)
    return other % 16 == 0 and extent % 16 == 0  # what Triton's divisibility specialisation sees


#: The window path of stages 2 and 3 covers a whole channel row in one window of at most this many
#: elements (one pixel block per sample)
MAX_WINDOW = 1024


def window_elems(x: torch.Tensor, sn: int, sc: int, sp: int) -> int:
    """WIN of the fused kernels: elements per 16 bytes where x is contiguous NCHW (samples a multiple of
    16 bytes) with channel rows that Triton does not see as 16-byte aligned (7², 14² in fp16/bf16, 7²
    and 14² in fp32, odd maps), else 0. The kernels then read each row through the 16-byte-aligned
    window around it (128-bit accesses) instead of element by element (docs/kernels.md, "Windows")."""
    n, c, h, w = x.shape
    p = h * w
    v = 16 // x.element_size()
    if sp != 1 or p <= 1 or v < 2 or sc != p or sn != c * p or sn % v or rows_16b(x, sc, sp):
        return 0
    return v


def row_window(p: int, win: int) -> int:
    """BLOCK_P of the window path of stages 2 and 3: the power of two that holds any channel row's
    aligned window (``p + 2 * (win - 1)`` elements at most); 0 where it would exceed MAX_WINDOW (the
    row is then read in pixel blocks: :func:`window_blocks`)."""
    block = next_pow2(p + 2 * (win - 1))
    return block if win and block <= MAX_WINDOW else 0


#: BLOCK_P of the window path's pixel blocks on rows longer than one window: ``[8, 256]`` tiles in every
#: dtype, the 14² window path's (sm_90: 512-pixel fp32 blocks compile stage 3 to 205 registers)
WINDOW_BLOCK_P = 256


def window_blocks(p: int, win: int) -> int:
    """BLOCK_P of the window path of stages 2 and 3 on rows longer than one window (``WBLOCKS``: 33²
    fp16 and larger odd maps): :data:`WINDOW_BLOCK_P`, each pixel block's aligned window of a row in
    one tile row; 0 where a row fits one window (:func:`row_window`) or there is no window."""
    return WINDOW_BLOCK_P if win and not row_window(p, win) else 0


def small_tile_rows(cols: int, rows: int) -> int:
    """Rows of a ``[rows, cols]`` small tile: a power of two, at most ``next_pow2(rows)``, with
    ``rows * cols <= SMALL_TILE`` (at least 1)."""
    return max(1, min(next_pow2(max(1, rows)), SMALL_TILE // max(1, next_pow2(cols))))


@dataclass(frozen=True)
class FusedPlan:
    """Tile and grid of a fused-forward kernel: tile ``[block_c, block_p]``, ``base`` programs
    (N times the blocks of the free axis) times ``num_splits`` of the reduced axis."""

    block_c: int
    block_p: int
    base: int
    num_splits: int
    per_split: int
    #: the kernel variant the grid was sized for (:func:`plan_fused`; None without an ``unroll`` rule)
    variant: tuple | None = None
    #: the x tiles a program keeps in flight per loop iteration (``UNROLL``; None without an ``unroll`` rule)
    unroll: int | None = None


def fused_tile_elems(itemsize: int, aligned: bool) -> int:
    """Elements of a fused kernel's x tile: TILE_ELEMS, doubled for 2-byte dtypes (8 KiB a tile, as
    fp32's: the bytes one load keeps in flight are what the tile is sized for) where the rows along
    the unit-stride axis are 16-element aligned (128-bit loads); an unaligned NCHW map's 16-bit loads
    take a register per element (sm_90: 226-235 registers at 2048x7² with 4096-element tiles)."""
    return TILE_ELEMS * (2 if itemsize == 2 and aligned else 1)


def _fill(extent: int, block: int) -> float:
    return extent / (-(-extent // block) * block)


def _last_fill(extent: int, block: int) -> float:
    """How full the last of the blocks covering ``extent`` is (1.0 when they divide it)."""
    rest = extent % block
    return 1.0 if rest == 0 or extent < block else rest / block


def plan_fused(n: int, c: int, p: int, stride_c: int, stride_p: int, itemsize: int, reduce: str,
               device: torch.device, split: int | None = None, *, weight_bytes: int = 0,
               block_c_range: tuple[int, int] = (1, 1 << 30), max_long_p: int | None = None,
               min_split: int = 1, max_walk_tiles: int | None = None, kernel: str = "",
               num_warps: int | Callable[[int, int], int] = NUM_WARPS, window: int = 0,
               unroll: Callable[[int, int, int], int] | None = None,
               walk_tiles: Callable[[int, int, int], int] | None = None, context: tuple = (),
               context_of: Callable[[int, int, int], tuple] | None = None,
               max_walk_turns: int | None = None, window_halo: int = 0) -> FusedPlan:
    """The tile rule of the fused forward's kernels (documented in docs/kernels.md).

    ``reduce`` is the axis a program walks: ``"p"`` (stage 1: pool over H*W, the free axis is C) or
    ``"c"`` (stages 2 and 3: walk the channels, the free axis is H*W).

    1. The unit-stride axis is the tile's long axis (coalesced, 128-bit accesses), of a length in
       :data:`FUSED_LONG_BLOCKS`. Hard limits first: ``block_c_range`` (stage 1 keeps its slice of W1
       and the sample's layer-1 partials small), ``max_long_p`` (stage 3's conv rows), and with
       ``weight_bytes`` (stage 2 computes Mc from the MLP's last layer per pixel block) the weights
       re-read per sample, ``(pixel blocks - 1) * weight_bytes``, stay within the sample's x bytes.
    2. Among those: at least :data:`MIN_FUSED_LONG` long (unless the extent is smaller) and
       fitting (:data:`MIN_TILE_FILL`, no program of the free axis's last block with less than a
       quarter of a tile) where possible; the longest that gives ``target`` programs
       along the free axis, else the one giving the most programs.
    3. Only if the free axis still gives fewer than ``target`` programs is the walked axis split
       (:func:`choose_split`), at most so far that the split partials stay within
       1/:data:`WORKSPACE_FRACTION` of x's bytes and one program's combine within
       :data:`PROGRAM_SMALL_BYTES`; ``min_split`` splits at least, and with ``max_walk_tiles``
       (kernels that load small data per tile they walk) enough that no program walks more tiles;
       with ``max_walk_turns`` (kernels that load small data per loop turn) no GPU candidate walks
       its tiles in more turns.

    On a GPU (or planning for one, :func:`cbam_triton.launchers.residency.assume`) 2. and 3. only
    bound the choice: every tile row that passes 2. and every split count within 3.'s bounds is a
    candidate, and the one the streaming model (:func:`stream_score`) judges best is planned — the
    targets first (a grid of more than one wave fills its last one, enough bytes in flight per SM),
    then the modelled time. A candidate's capacity is the GPU's for ``kernel`` (SMs × resident CTAs
    per SM from its registers, warps and shared memory: :mod:`~cbam_triton.launchers.residency`).

    The capacity is that of the kernel variant each candidate compiles to: ``unroll(block_c, block_p,
    per_split)`` is the launcher's rule for its ``UNROLL`` (the most x tiles in flight an iteration);
    on a GPU candidates with half as many, down to one, are weighed beside it (fewer registers can mean more
    resident programs: a grid in fewer or fuller waves), and the plan's :attr:`FusedPlan.unroll` is
    what the launcher passes. ``(block_c, block_p, unroll)`` is the
    variant (with the launcher's ``context``, the unit-stride axis, ``window``, whether the walk is
    split and the extents' and strides' divisibility by 16: :attr:`FusedPlan.variant`)
    whose compiled registers :func:`~cbam_triton.launchers.residency.resources` looks up (a
    kernel's registers change with its tile and its tiles in flight, so one figure per kernel would
    size some grids for the wrong residency); ``num_warps`` may likewise be the launcher's rule
    ``(block_c, block_p) -> warps``.

    ``window`` (the NCHW window path, :func:`window_elems`): the tile is sized as for aligned rows
    (128-bit loads); walking the channels (``"c"``), a program's pixel block is the whole row's window
    (:func:`row_window`), with at least ``window`` channels a tile; rows longer than one window are
    read in pixel blocks (:func:`window_blocks`) of ``BLOCK_P - window_halo`` pixels each (the lanes
    of a block's window that its pixels' alignment may take).
    """
    from cbam_triton.launchers import residency

    long_axis = unit_axis(stride_c, stride_p, c, p)
    extent = p if long_axis == "p" else c
    top = long_block(extent)
    walked_all = p if reduce == "p" else c

    # which of the extents and strides Triton specialises as multiples of 16 (its code, and registers,
    # can differ: e.g. 96 against 151 registers for stage 2 at C = 1008 and C = 1000, 7² fp32)
    divisible = sum(1 << i for i, v in enumerate((c, p, stride_c, stride_p, n * c * p)) if v % 16 == 0)

    def unroll_of(bc: int, bp: int, per_split: int) -> int | None:
        """The launcher's rule: the most x tiles a program of this candidate keeps in flight."""
        return unroll(bc, bp, per_split) if unroll is not None else None

    def variant_of(bc: int, bp: int, per_split: int, u: int | None = None) -> tuple | None:
        """What a candidate's compiled registers depend on besides its warps: the launcher's
        ``context`` (dtype, what the kernel fuses), the unit-stride axis and the window, the tile,
        UNROLL (``u``, default the rule's), whether the walk is split, which extents and strides
        are multiples of 16, and what else the launcher derives from the candidate (``context_of``)."""
        if unroll is None:
            return None
        u = unroll(bc, bp, per_split) if u is None else u
        extra = context_of(bc, bp, per_split) if context_of is not None else ()
        return (*context, long_axis, window, bc, bp, u, per_split < walked_all, divisible, *extra)

    def cap_of(bc: int, bp: int, per_split: int, u: int | None = None) -> int | None:
        """Resident programs of the candidate's kernel variant on the target GPU (None: no GPU)."""
        if not kernel:
            return None
        variant = variant_of(bc, bp, per_split, u)
        warps = num_warps(bc, bp) if callable(num_warps) else num_warps
        choice = (bc, bp, per_split, u or unroll_of(bc, bp, per_split))
        return residency.capacity(kernel, warps, device, variant, choice)

    fallback_target = target_programs(device)
    sample_bytes = c * p * itemsize
    rows = []
    other, along = (stride_c, p) if long_axis == "p" else (stride_p, c)
    # the window path: TILE_ELEMS whatever the dtype (its masks, per-row offsets and class tables cost
    # registers a doubled fp16 tile would not leave: sm_90, 4 warps, [16, 256] fp16 255 registers, [8, 256] 105)
    tile = TILE_ELEMS if window else fused_tile_elems(itemsize, other % 16 == 0 and along % 16 == 0)
    blocks_p = window_blocks(p, window) if reduce == "c" else 0
    win_p = (row_window(p, window) or blocks_p) if reduce == "c" else 0
    own_p = blocks_p - window_halo if blocks_p else 0  # pixels a block owns (WBLOCKS)
    for long in (win_p,) if win_p else FUSED_LONG_BLOCKS:
        if long > max(top, 16) and not win_p:
            continue
        block_c, block_p = (tile // long, long) if long_axis == "p" else (long, tile // long)
        if win_p:
            block_c = max(window, block_c)
        lo, hi = block_c_range
        if long_axis == "p" and block_c > hi:  # the short channel axis shrinks (a smaller tile) to fit
            block_c = max(window if win_p else 1, 1 << (hi.bit_length() - 1))
        free = -(-c // block_c) if reduce == "p" else -(-p // (own_p or block_p))
        hard = 0.0  # how far a hard limit is exceeded (0: within every limit)
        if block_c > hi:
            hard += block_c / hi
        if block_c < lo and block_c < c:
            hard += lo / block_c
        if max_long_p is not None and block_p > max_long_p and p > max_long_p:
            hard += block_p / max_long_p
        if weight_bytes and reduce == "c" and (free - 1) * weight_bytes > sample_bytes:
            hard += (free - 1) * weight_bytes / max(1, sample_bytes)
        last = _last_fill(c, block_c) if reduce == "p" else _last_fill(p, block_p)
        unfit = _fill(c, block_c) * _fill(p, block_p) < MIN_TILE_FILL or last < 0.25
        soft = (long < MIN_FUSED_LONG and long < top, unfit)
        rows.append((hard, soft, long, block_c, block_p, n * free))
    pinned = residency.forced(kernel) if kernel else None
    if pinned is not None:  # a candidate compiled to measure its variant (tools.streaming.plan_compiled)
        row = next((r for r in rows if (r[3], r[4]) == pinned[:2]), None)
        if row is not None:
            u = pinned[3] if len(pinned) > 3 and pinned[3] else unroll_of(row[3], row[4], pinned[2])
            return FusedPlan(row[3], row[4], row[5], -(-walked_all // pinned[2]), pinned[2],
                             variant_of(row[3], row[4], pinned[2], u), u)
    least = min(r[0] for r in rows)
    rows = [r for r in rows if r[0] == least]
    for relax in ((False, False), (False, True), (True, True)):
        ok = [r for r in rows if all(s <= a for s, a in zip(r[1], relax))]
        if ok:
            rows = ok
            break
    # each row's program target: the resident programs of its unsplit variant (GPU), else a fixed count
    rows = [(*r, cap_of(r[3], r[4], walked_all) or fallback_target) for r in rows]
    chosen = next((r for r in rows if r[5] >= r[6]), None) or max(rows, key=lambda r: r[5])
    on_gpu = bool(kernel) and split is None and cap_of(chosen[3], chosen[4], walked_all) is not None

    def split_range(row: tuple) -> tuple[int, int, int]:
        """(least, most, rule's target) splits of a tile row (3.)."""
        _, _, _, bc, bp, _, target = row
        walked, block, other = (p, bp, bc) if reduce == "p" else (c, bc, bp)
        cap = min(walked * itemsize // (8 * WORKSPACE_FRACTION), PROGRAM_SMALL_BYTES // (8 * other))
        least = max(min_split, -(-walked // (block * max_walk_tiles))) if max_walk_tiles else min_split
        return least, cap, target

    if not on_gpu:
        least_, cap_, target_ = split_range(chosen)
        block = chosen[4] if reduce == "p" else chosen[3]
        num_splits, per_split = choose_split(chosen[5], walked_all, block, target_, split, max_split=cap_,
                                             min_split=least_)
        return FusedPlan(chosen[3], chosen[4], chosen[5], num_splits, per_split,
                         variant_of(chosen[3], chosen[4], per_split), unroll_of(chosen[3], chosen[4], per_split))
    # a GPU: every tile row and split count within the bounds, judged by the streaming model
    sms = residency.planning_target(device)[0]  # type: ignore[index]
    x_bytes = n * c * p * itemsize

    def program(row: tuple, ps: int, u: int | None) -> tuple[int, int]:
        """(x bytes, loop iterations) of a program of ``row`` walking ``ps`` elements, ``u`` tiles an
        iteration."""
        bc, bp = row[3], row[4]
        other = min(bc, c) if reduce == "p" else min(own_p or bp, p)
        block = bp if reduce == "p" else bc
        tiles = walk_tiles(bc, bp, ps) if walk_tiles is not None else -(-min(ps, walked_all) // block)
        turns = -(-tiles // (u or 1))
        return min(ps, walked_all) * other * itemsize, max(1, turns)

    best: tuple | None = None
    for row in rows:
        least_, cap_, target_ = split_range(row)
        block = row[4] if reduce == "p" else row[3]
        options = {choose_split(row[5], walked_all, block, target_, None, max_split=cap_, min_split=least_)}
        for want in range(max(1, least_), min(max(cap_, least_), MAX_SPLIT) + 1):
            options.add(choose_split(row[5], walked_all, block, 0, forced=want))
        for ns, ps in options:
            if ns < least_ and ns < -(-walked_all // block):
                continue
            # the split partials (a sum and a max per output element, fp32, written and read back once)
            partials = 16 * n * ns * (c if reduce == "p" else p) if ns > 1 else 0
            # the rule's tiles in flight, or fewer (halving down to one: fewer registers, more resident
            # programs, which can fill the machine in fewer or fuller waves)
            rule = unroll_of(row[3], row[4], ps)
            for u in [rule] + ([rule >> k for k in range(1, rule.bit_length())] if rule is not None else []):
                walk = program(row, ps, u)
                cap = cap_of(row[3], row[4], ps, u) or row[6]
                # (a walk of more turns than the kernel's loads allow ranks after every other)
                score = (max_walk_turns is not None and walk[1] > max_walk_turns,
                         *stream_score(row[5] * ns, cap, *walk, sms, x_bytes, partials))
                if best is None or score < best[0]:
                    best = (score, row, ns, ps, u)
    assert best is not None
    _, row, num_splits, per_split, u = best
    return FusedPlan(row[3], row[4], row[5], num_splits, per_split, variant_of(row[3], row[4], per_split, u), u)


#: Bytes of x in flight per SM that hide DRAM latency (Little's law on an H200: ~4.3 TB/s × ~0.8 µs
#: loaded latency ÷ 132 SMs ≈ 26 KiB, rounded up); the streaming model's unit of work
IN_FLIGHT_PER_SM = 32 * 1024


def stream_score(programs: int, capacity: int, program_bytes: int, turns: int, sms: int,
                 x_bytes: int, extra_bytes: int = 0) -> tuple[float, float, int]:
    """How a GPU grid streams (lower is better): ``(shortfall from the targets, modelled time,
    programs)``.

    Time is counted in DRAM round trips: a wave of ``P`` programs moving ``program_bytes`` each in
    ``turns`` loop iterations takes ``max(P × program_bytes ÷ (SMs × IN_FLIGHT_PER_SM), turns)`` of
    them (bandwidth-bound when enough bytes are in flight, else one round trip per iteration), plus
    one for the wave's start (the program's small loads before its first tile); ``extra_bytes`` (the
    split partials) add their transfer time at full bandwidth. The targets: a grid
    of more than one wave fills its last one (efficiency >= MIN_WAVE_EFFICIENCY) and the resident
    programs keep ``min(IN_FLIGHT_PER_SM, x_bytes ÷ SMs)`` bytes in flight per SM; the shortfall is
    the sum of the relative amounts by which they are missed (0 when both hold), so that a grid
    missing both by a little ranks before one missing one by far."""
    from cbam_triton.launchers.residency import MIN_WAVE_EFFICIENCY

    capacity = max(1, capacity)
    waves = -(-programs // capacity)
    time = 0.0
    for w in range(waves):
        resident = min(capacity, programs - w * capacity)
        time += 1 + max(resident * program_bytes / (sms * IN_FLIGHT_PER_SM), turns)
    time += extra_bytes / (sms * IN_FLIGHT_PER_SM)
    per_sm = min(programs, capacity) * (program_bytes / turns) / sms
    eff = programs / (waves * capacity)
    need = min(IN_FLIGHT_PER_SM, x_bytes / sms)
    short = (max(0.0, MIN_WAVE_EFFICIENCY - eff) / MIN_WAVE_EFFICIENCY if waves > 1 else 0.0) + \
        (max(0.0, need - per_sm - 0.5) / need if need > 0 else 0.0)
    return round(short, 6), round(time, 6), programs


def combine_max_counts(maxs: torch.Tensor, cnts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine per-split (max, tie count) partials along dim 1 in a fixed order: the max of the
    maxima, and the sum of the counts of the splits that reached it (NaN max: count 0)."""
    peak = maxs.amax(dim=1)
    hit = maxs == peak.unsqueeze(1)
    return peak, torch.where(hit, cnts, torch.zeros_like(cnts)).sum(dim=1, dtype=torch.int32)


@dataclass(frozen=True)
class Walk:
    """Grid of the backward reductions: each program owns one block of the unit-stride ("long")
    axis and walks the other axis over its split range (see the backward kernels)."""

    walk_c: bool        #: True: long axis p (NCHW), programs walk c; False: long axis c, walk p
    block_c: int
    block_p: int
    samples: int        #: N
    num_blocks: int     #: long-axis blocks per sample
    num_splits: int
    per_split: int      #: walked elements per split (a multiple of the walked block)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.samples * self.num_blocks, self.num_splits)


def plan_walk(n: int, c: int, p: int, stride_c: int, stride_p: int, device: torch.device,
              split: int | None = None) -> Walk:
    """The :class:`Walk` for an (n, c, p) tensor with the given strides (split as in stage 1/2)."""
    walk_c = unit_axis(stride_c, stride_p, c, p) == "p"
    block_c, block_p = tile_for("p" if walk_c else "c", c, p)
    blocks = -(-p // block_p) if walk_c else -(-c // block_c)
    extent, block = (c, block_c) if walk_c else (p, block_p)
    num_splits, per_split = choose_split(n * blocks, extent, block, target_programs(device), split)
    return Walk(walk_c, block_c, block_p, n, blocks, num_splits, per_split)


def sum_partials(ws: torch.Tensor) -> torch.Tensor:
    """Sum an (N, K, L) workspace of partials over K in a fixed order (deterministic)."""
    return ws[:, 0] if ws.shape[1] == 1 else ws.sum(dim=1)


_COUNTERS: dict[tuple[str, int | None, int], torch.Tensor] = {}


def counter_buffer(device: torch.device, size: int) -> torch.Tensor:
    """A zeroed int32 buffer of at least ``size`` arrival counters (``last_arrival`` in the kernels).

    The kernels put every counter they use back to 0, so one buffer per (device, stream) is zeroed
    once and reused by every later forward on that stream (launches on one stream run in order;
    another stream gets its own buffer). While a CUDA graph is being captured a fresh zeroed buffer
    is allocated instead (its zeroing is then part of the graph), as while launches are traced as
    Triton kernel calls (:func:`wrapped_launches`).
    """
    if launches_wrapped() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return torch.zeros(max(size, 1), dtype=torch.int32, device=device)
    key = _counter_key(device)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < size:
        if buf is not None:  # recorded launches (cbam_triton.fastpath) may still use it
            _RETIRED.setdefault(key, []).append(buf)
        buf = torch.zeros(max(size, 1024), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


_RETIRED: dict[tuple[str, int | None, int], list[torch.Tensor]] = {}


def _counter_key(device: torch.device) -> tuple[str, int | None, int]:
    stream = torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0
    index = device.index if device.type != "cuda" or device.index is not None else torch.cuda.current_device()
    return (device.type, index if device.type == "cuda" else device.index, stream)


def reset_counters(device: torch.device) -> None:
    """Zero the arrival counters of ``device``'s current stream, in place (stream-ordered).

    Every fused kernel's last program puts its counters back to 0, so they are zero at every launch
    unless a launch stopped part-way. On a GPU a kernel that faults leaves the CUDA context unusable
    (every later call raises), so that cannot go unnoticed; what can is a launch sequence interrupted
    on the host (an exception or KeyboardInterrupt raised through a launch, e.g. in Triton's
    interpreter, where programs run on the host). The launchers call this whenever a fused forward
    raises, so the next forward never sees a counter left part-way (which would make the wrong
    program combine the partials). Callers that abort kernels by other means can call it themselves.
    """
    if launches_wrapped() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return
    key = _counter_key(device)
    for buf in [_COUNTERS.get(key), *_RETIRED.get(key, ())]:
        if buf is not None:
            buf.zero_()
