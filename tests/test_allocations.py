"""One inference forward: exactly three Triton launches (the fused kernels), and the output is the
only full-size allocation."""

from __future__ import annotations

import pytest
import torch
from helpers import make_input, make_reference
from torch.utils._python_dispatch import TorchDispatchMode

import cbam_triton
from cbam_triton.ops import IMPLEMENTATIONS


class _AllocationCounter(TorchDispatchMode):
    """Records every aten op and the sizes of the tensors it returns."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list[int]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        impl = IMPLEMENTATIONS.get(func)
        if impl is not None:  # look inside cbam_triton's custom ops
            with self:
                return impl(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        flat = out if isinstance(out, (tuple, list)) else (out,)
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor) and a.numel()}
        if all(isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in inputs for t in flat):
            return out  # a view (or an op returning its input) allocates nothing
        self.ops.append((str(func), [t.numel() for t in flat if isinstance(t, torch.Tensor)]))
        return out


@pytest.mark.parametrize("split", ["natural", "forced"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_one_full_size_allocation_and_three_launches(layout, split, device, monkeypatch):
    if split == "forced":  # few programs wanted -> no split; many wanted -> both reductions split
        monkeypatch.setenv("CBAM_TRITON_TARGET_PROGRAMS", "4096")
    shape = (2, 64, 64, 64)
    ours = cbam_triton.CBAM.from_reference(make_reference(64, device=device, reduction_ratio=4))
    x = make_input(shape, torch.float16, layout, device)
    big = x.numel()
    with torch.no_grad(), cbam_triton.record_launches() as launches, _AllocationCounter() as mode:
        y = ours(x)
    # (Mc gets its own small launch where stage 2's pixel blocks would read W2 too often)
    assert [launch.name for launch in launches if launch.name != "channel_map"] == \
        ["channel_pool_mlp", "spatial_pool", "gate_conv"]
    assert [launch.name for launch in launches].index("channel_pool_mlp") == 0
    if split == "forced":  # many programs wanted: the H*W reduction of stage 1 is split
        assert launches[0].grid[1] > 1
    full = [(op, sizes) for op, sizes in mode.ops if any(s >= big for s in sizes)]
    assert len(full) == 1, f"expected only the output to be full-size, got {full}"
    small_limit = 64 * (shape[0] * shape[1] + shape[0] * shape[2] * shape[3])
    assert all(s <= small_limit for _, sizes in mode.ops for s in sizes if s < big)
    # every launch streams x itself (no hidden copy), and only the gate writes a full-size tensor
    for launch in launches:
        assert launch.args[0].data_ptr() == x.data_ptr()
    assert launches[-1].args[3].data_ptr() == y.data_ptr()


def test_non_mergeable_view_is_copied_once(device):
    """A view whose H and W don't merge is copied to NCHW once, not once per stage."""
    ours = cbam_triton.CBAM.from_reference(make_reference(8, device=device, reduction_ratio=2))
    x = make_input((2, 8, 6, 7), torch.float32, "sliced_w", device)
    with torch.no_grad():
        ours(x)  # the launchers' arrival-counter buffer is zeroed once per process, not per forward
    with torch.no_grad(), _AllocationCounter() as mode:
        ours(x)
    full = [op for op, sizes in mode.ops if any(s >= x.numel() for s in sizes)]
    assert len(full) == 2  # one documented copy (shared by the three stages) + the output
