"""Real DRAM traffic with Nsight Compute (GPU only): ``dram__bytes_read.sum`` and
``dram__bytes_write.sum`` summed over every kernel of one forward call.

    python -m bench --ncu ...        # adds ncu_dram_bytes / ncu_dram_x to each forward row

Each (case, provider) runs in a child process under ``ncu`` (``--cache-control none``: L2 is NOT
flushed between kernels, so the L2-resident schedule's re-reads show as the hits they are;
``--profile-from-start off``: only the call between ``cudaProfilerStart``/``Stop`` counts, after a
warm-up call (compilation, autotuning) and an L2 flush by a 256 MiB write). The modelled bytes
(``dram_model_bytes``) sit beside the measured ones in the results.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from typing import Any

METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum")
#: ncu's units (SI multiples) -> bytes
_UNITS = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12,
          "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}
FLUSH_BYTES = 256 << 20


def ncu_path() -> str | None:
    """The ``ncu`` executable (PATH, then the usual CUDA install folders), or None."""
    for cand in (shutil.which("ncu"), "/usr/local/cuda/bin/ncu", "/opt/nvidia/nsight-compute/ncu"):
        if cand and os.path.exists(cand):
            return cand
    return None


def parse_csv(text: str) -> dict[str, int]:
    """Sum ncu ``--csv`` metric rows: ``{"read": bytes, "write": bytes, "kernels": n}``.

    Lines before the CSV header (``==PROF==`` messages, the program's own output) are skipped;
    values may carry thousands separators; units are converted to bytes.
    """
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        raise ValueError("no ncu CSV header (\"ID\", ...) in the output")
    totals = {"read": 0.0, "write": 0.0}
    kernels = set()
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        name = row.get("Metric Name", "")
        if name not in METRICS:
            continue
        unit = row.get("Metric Unit", "byte").strip().lower()
        if unit not in _UNITS:
            raise ValueError(f"unknown ncu unit {row.get('Metric Unit')!r}")
        value = float(row["Metric Value"].replace(",", "")) * _UNITS[unit]
        totals["read" if name == METRICS[0] else "write"] += value
        kernels.add(row.get("ID"))
    return {"read": int(round(totals["read"])), "write": int(round(totals["write"])), "kernels": len(kernels)}


def measure(case: Any, provider: str, timeout_s: int = 900) -> dict[str, int]:
    """DRAM bytes of one forward call of ``provider`` on ``case``, measured by ncu in a child process."""
    exe = ncu_path()
    if exe is None:
        raise RuntimeError("ncu (Nsight Compute) not found on PATH or in /usr/local/cuda/bin")
    spec = json.dumps({"case": case.as_dict(), "provider": provider})
    cmd = [exe, "--metrics", ",".join(METRICS), "--csv", "--cache-control", "none", "--profile-from-start", "off",
           "--target-processes", "all", sys.executable, "-m", "bench.ncu", "--target", spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"ncu failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-800:]}")
    return parse_csv(proc.stdout)


def _target(spec_json: str) -> int:
    """Child process: build the provider, warm up, flush L2, profile exactly one call."""
    import torch

    from bench import runner
    from bench.suite import Case

    spec = json.loads(spec_json)
    fields = {k: v for k, v in spec["case"].items() if k != "id"}
    case = Case(**fields)
    device = torch.device("cuda")
    ref = runner.make_reference(case, device)
    x = runner.make_input(case, device)
    fn = runner.build_provider(spec["provider"], ref, x).fn
    fn()
    scratch = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)
    scratch.fill_(1)  # evicts x (and everything else) from L2 before the profiled call
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    fn()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--target"]:
        sys.exit(_target(sys.argv[2]))
    print(__doc__)
