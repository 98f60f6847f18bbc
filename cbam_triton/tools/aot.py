"""Ahead-of-time compilation of launcher plans for a GPU target, without a GPU.

A :class:`~cbam_triton.launchers.Launch` built from meta tensors carries the exact kernel,
arguments and meta-parameters a real launch would use. :func:`specialize` turns it into what
Triton's JIT would compile (integer arguments equal to 1 become constants; integers divisible by
16 and 16-byte aligned pointers get ``tt.divisibility=16``), and :func:`compile_launch` builds
PTX and a cubin for ``GPUTarget("cuda", arch, 32)``. Needs triton imported *without*
``TRITON_INTERPRET=1`` (run it in a separate process from interpreter tests).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

_PTR_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64",
              torch.int32: "*i32"}


@dataclass
class Specialization:
    signature: dict[str, str]
    constexprs: dict[tuple[int, ...], Any]
    attrs: dict[tuple[int, ...], list[list[Any]]]


def specialize(launch: Any, float_type: str = "fp32") -> Specialization:
    """Signature, constants and divisibility attributes as Triton's JIT would derive them
    (``float_type="fp64"``: Python float arguments typed as AOTInductor passes them to a
    ``wrap_triton`` kernel)."""
    kernel = launch.kernel
    names = list(kernel.arg_names)
    const_names = [p.name for p in kernel.params if p.is_constexpr]
    runtime_names = [n for n in names if n not in const_names]
    if len(runtime_names) != len(launch.args):
        raise ValueError(f"{launch.name}: {len(launch.args)} arguments for {len(runtime_names)} parameters")
    values = dict(zip(runtime_names, launch.args))
    values.update(launch.meta)
    signature: dict[str, str] = {}
    constexprs: dict[tuple[int, ...], Any] = {}
    attrs: dict[tuple[int, ...], list[list[Any]]] = {}
    for i, name in enumerate(names):
        v = values[name]
        if name in const_names:
            signature[name] = "constexpr"
            constexprs[(i,)] = v
        elif isinstance(v, torch.Tensor):
            signature[name] = _PTR_TYPES[v.dtype]
            if v.data_ptr() % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            signature[name] = "i1"
        elif isinstance(v, int):
            if v == 1:
                signature[name] = "constexpr"
                constexprs[(i,)] = 1
                continue
            signature[name] = "i32" if -2**31 <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            signature[name] = float_type
        else:
            raise TypeError(f"{launch.name}: cannot specialise argument {name}={v!r}")
    return Specialization(signature, constexprs, attrs)


def compile_launch(launch: Any, arch: int, float_type: str = "fp32") -> Any:
    """Compile ``launch`` for ``sm_<arch>``; returns Triton's CompiledKernel (``.asm`` has ptx, cubin).
    ``float_type``: see :func:`specialize`."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = specialize(launch, float_type)
    src = ASTSource(fn=launch.kernel, signature=spec.signature, constexprs=spec.constexprs, attrs=spec.attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps})


def cuobjdump_path() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def cubin_report(cubin: bytes) -> dict[str, Any]:
    """Registers, stack, spills (LOCAL), shared memory and SASS facts of a cubin, via cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        usage = subprocess.run([cuobjdump_path(), "--dump-resource-usage", path],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([cuobjdump_path(), "--dump-sass", path],
                              capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    fields = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
    instrs = [ln for ln in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/\s+\S", ln)]
    loads = [ln for ln in instrs if re.search(r"\bLDG\.", ln)]
    stores = [ln for ln in instrs if re.search(r"\bSTG\.", ln)]
    return {
        "registers": fields.get("REG", -1),
        "stack_bytes": fields.get("STACK", -1),
        "spill_bytes": fields.get("LOCAL", -1),
        "shared_bytes": fields.get("SHARED", -1),
        "sass_instructions": len(instrs),
        "global_loads": len(loads),
        "global_loads_128": sum(".128" in ln for ln in loads),
        "global_stores": len(stores),
        "global_stores_128": sum(".128" in ln for ln in stores),
    }
