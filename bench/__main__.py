"""Quick eager-vs-cbam_triton check: ``python -m bench``.

On a CUDA device it times eager reference CBAM and cbam_triton on a few shapes. On a CPU-only
machine it verifies cbam_triton's Triton kernels through the interpreter on a small case and says
plainly that GPU timings need a CUDA device.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import cbam_triton
    import reference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = [(2, 64, 128, 128), (32, 256, 56, 56), (32, 2048, 7, 7)] if device == "cuda" else [(2, 64, 32, 32)]
    for shape in shapes:
        ref = reference.CBAM(shape[1], 2 if shape[1] == 64 else 16).to(device).eval()
        ours = cbam_triton.CBAM.from_reference(ref)
        x = torch.randn(shape, device=device)
        with torch.no_grad():
            err = (ours(x) - ref(x)).abs().max().item()
            line = f"{'x'.join(map(str, shape))}: max |triton - eager| = {err:.2e}"
            if device == "cuda":
                import triton.testing

                t_e = triton.testing.do_bench(lambda ref=ref, x=x: ref(x))
                t_t = triton.testing.do_bench(lambda ours=ours, x=x: ours(x))
                line += f"  eager {t_e * 1e3:.1f} us  triton {t_t * 1e3:.1f} us  speedup {t_e / t_t:.2f}x"
            else:
                t0 = time.perf_counter()
                ref(x)
                line += f"  eager (CPU) {1e3 * (time.perf_counter() - t0):.2f} ms; triton verified in the interpreter"
        print(line)
    if device == "cpu":
        print("No CUDA device: GPU timings need a CUDA device (none are faked here).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
