"""Workloads: named shapes from real networks, and the selection of benchmark cases."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

#: name -> (C, H, W, reduction_ratio)
SHAPES: dict[str, tuple[int, int, int, int]] = {
    "resnet50-s1": (256, 56, 56, 16),
    "resnet50-s2": (512, 28, 28, 16),
    "resnet50-s3": (1024, 14, 14, 16),
    "resnet50-s4": (2048, 7, 7, 16),
    "yolo-p3": (128, 80, 80, 16),
    "yolo-p4": (256, 40, 40, 16),
    "yolo-p5": (512, 20, 20, 16),
    "seed": (64, 128, 128, 2),
    # small shapes for CPU runs (--quick)
    "tiny": (64, 32, 32, 2),
    "tiny-wide": (256, 14, 14, 16),
}
SUITES: dict[str, list[str]] = {
    "resnet50": ["resnet50-s1", "resnet50-s2", "resnet50-s3", "resnet50-s4"],
    "yolo": ["yolo-p3", "yolo-p4", "yolo-p5"],
    "seed": ["seed"],
    "full": ["resnet50-s1", "resnet50-s2", "resnet50-s3", "resnet50-s4", "yolo-p3", "yolo-p4", "yolo-p5", "seed"],
    "quick": ["tiny", "tiny-wide"],
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = ("nchw", "channels_last")
#: forward: inference (no_grad, eval); train: forward + backward (train mode, x and weights need grad)
MODES = ("forward", "train")


@dataclass(frozen=True)
class Case:
    """One benchmark workload: a named shape at a batch size, dtype and memory layout."""

    shape_name: str
    batch: int
    channels: int
    height: int
    width: int
    reduction_ratio: int
    dtype: str
    layout: str
    mode: str = "forward"

    @property
    def id(self) -> str:
        base = f"{self.shape_name}-b{self.batch}-{self.dtype}-{self.layout}"
        return base if self.mode == "forward" else f"{base}-{self.mode}"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def x_bytes(self) -> int:
        return self.batch * self.channels * self.height * self.width * self.torch_dtype.itemsize

    def as_dict(self) -> dict[str, object]:
        return dict(asdict(self), id=self.id)


def check_choices(*groups: tuple[str, list[str] | tuple[str, ...], Any]) -> None:
    """Raise ValueError naming the first choice not known: ``(what, given, known)`` per group."""
    for what, given, known in groups:
        for v in given:
            if v not in known:
                raise ValueError(f"unknown {what} {v!r}; known: {', '.join(known)}")


def check_common(batches: list[int] | None, dtypes: list[str], layouts: list[str]) -> None:
    """The choices every workload shares: dtypes, layouts and batch sizes (>= 1)."""
    check_choices(("dtype", dtypes, DTYPES), ("layout", layouts, LAYOUTS))
    for b in batches or ():
        if b < 1:
            raise ValueError(f"batch sizes must be >= 1, got {b}")


def make_cases(shape_names: list[str], batches: list[int], dtypes: list[str], layouts: list[str],
               modes: tuple[str, ...] | list[str] = ("forward",)) -> list[Case]:
    """The cross product, in a stable order; raises ValueError naming an unknown choice."""
    check_choices(("mode", modes, MODES), ("shape", shape_names, SHAPES))
    check_common(batches, dtypes, layouts)
    cases = []
    for mode in modes:
        for name in shape_names:
            c, h, w, r = SHAPES[name]
            for b in batches:
                for d in dtypes:
                    for lay in layouts:
                        cases.append(Case(name, b, c, h, w, r, d, lay, mode))
    return cases
