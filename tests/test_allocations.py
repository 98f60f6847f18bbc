"""One forward: exactly three Triton launches, and the output is the only full-size allocation."""

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
    assert [launch.name for launch in launches] == ["channel_pool", "spatial_pool", "gate"]
    if split == "forced":
        assert launches[0].grid[1] > 1  # H*W split
        if layout == "nchw":  # C is split only when it spans several tiles (not so for channels_last)
            assert launches[1].grid[1] > 1
    full = [(op, sizes) for op, sizes in mode.ops if any(s >= big for s in sizes)]
    assert len(full) == 1, f"expected only the output to be full-size, got {full}"
    small_limit = 64 * (shape[0] * shape[1] + shape[0] * shape[2] * shape[3])
    assert all(s <= small_limit for _, sizes in mode.ops for s in sizes if s < big)
    # every launch streams x itself (no hidden copy), and only the gate writes a full-size tensor
    for launch in launches:
        assert launch.args[0].data_ptr() == x.data_ptr()
    assert launches[-1].args[3].data_ptr() == y.data_ptr()


def test_non_mergeable_view_is_copied_once(device):
    ours = cbam_triton.CBAM.from_reference(make_reference(8, device=device, reduction_ratio=2))
    x = make_input((2, 8, 6, 7), torch.float32, "sliced_w", device)
    with torch.no_grad(), _AllocationCounter() as mode:
        ours(x)
    full = [op for op, sizes in mode.ops if any(s >= x.numel() for s in sizes)]
    assert len(full) == 4  # a documented copy per big-tensor stage (3) + the output
