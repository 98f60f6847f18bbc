"""Result documents: schema, validation, JSON / CSV / Markdown writers and the terminal table."""

from __future__ import annotations

import csv
import json
import math
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("ok", "verified", "mismatch", "error", "skipped")
REQUIRED_ENV = ("date", "python", "torch", "triton", "device_type", "device_name", "git_sha")
REQUIRED_ROW = {
    "id": str, "shape_name": str, "batch": int, "channels": int, "height": int, "width": int,
    "dtype": str, "layout": str, "mode": str, "provider": str, "status": str, "x_bytes": int, "note": str,
}
OPTIONAL_NUMBERS = (
    "median_ms", "p20_ms", "p80_ms", "compile_s", "max_abs_err_vs_eager", "traffic_bytes", "traffic_x",
    "launches", "generated_kernels", "recompiles", "graphs", "peak_mem_bytes", "alloc_count", "alloc_bytes",
    "floor_gbps", "model_gbps", "copy_gbps", "frac_copy_bw", "speedup_vs_eager", "bytes_accessed", "reps",
    "saved_bytes", "saved_x", "dram_model_bytes", "dram_model_x", "ncu_dram_bytes", "ncu_dram_x",
)
COLUMNS = ("id", "provider", "status", "median_ms", "p20_ms", "p80_ms", "speedup_vs_eager", "compile_s",
           "schedule", "traffic_x", "dram_model_x", "ncu_dram_x", "launches",
           "peak_mem_bytes", "saved_x", "alloc_count", "alloc_bytes", "floor_gbps",
           "frac_copy_bw", "max_abs_err_vs_eager", "generated_kernels", "recompiles", "note")


def make_document(env: dict[str, Any], config: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "env": env, "config": config, "results": rows}


def validate(doc: Any) -> list[str]:
    """Problems with a result document (empty list: valid)."""
    problems = []
    if not isinstance(doc, dict):
        return ["document is not a JSON object"]
    if doc.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version must be {SCHEMA_VERSION}, got {doc.get('schema_version')!r}")
    env = doc.get("env")
    if not isinstance(env, dict):
        problems.append("env missing")
    else:
        problems += [f"env.{k} missing" for k in REQUIRED_ENV if k not in env]
    rows = doc.get("results")
    if not isinstance(rows, list) or not rows:
        return problems + ["results must be a non-empty list"]
    for i, row in enumerate(rows):
        for key, typ in REQUIRED_ROW.items():
            if not isinstance(row.get(key), typ):
                problems.append(f"results[{i}].{key} must be {typ.__name__}, got {row.get(key)!r}")
        if row.get("status") not in STATUSES:
            problems.append(f"results[{i}].status {row.get('status')!r} not in {STATUSES}")
        for key in OPTIONAL_NUMBERS:
            v = row.get(key)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                problems.append(f"results[{i}].{key} must be a number or null, got {v!r}")
        if row.get("status") == "ok" and not isinstance(row.get("median_ms"), (int, float)):
            problems.append(f"results[{i}] has status ok but no median_ms")
        if row.get("status") in ("mismatch", "error", "skipped", "verified") and row.get("median_ms") is not None:
            problems.append(f"results[{i}] has status {row['status']} but a timing")
    return problems


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def write_json(doc: dict[str, Any], path: str) -> None:
    rows = [{k: _clean(v) for k, v in r.items()} for r in doc["results"]]
    with open(path, "w") as f:
        json.dump(dict(doc, results=rows), f, indent=1, sort_keys=False)
        f.write("\n")


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: _clean(r.get(k)) for k in keys})


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return ""
    if key in ("peak_mem_bytes", "alloc_bytes"):
        return f"{v / 2**20:.2f} MiB"
    if isinstance(v, float):
        if key in ("speedup_vs_eager", "traffic_x", "frac_copy_bw", "saved_x", "dram_model_x", "ncu_dram_x"):
            return f"{v:.2f}"
        if key == "max_abs_err_vs_eager":
            return f"{v:.1e}"
        return f"{v:.4g}"
    return str(v)


_SHORT = {"median_ms": "ms", "p20_ms": "p20", "p80_ms": "p80", "speedup_vs_eager": "x eager", "compile_s": "compile s",
          "traffic_x": "traffic |x|", "peak_mem_bytes": "peak mem", "alloc_count": "allocs", "alloc_bytes": "alloc",
          "floor_gbps": "GB/s (floor)", "frac_copy_bw": "of copy bw", "max_abs_err_vs_eager": "err vs eager",
          "generated_kernels": "gen kernels", "recompiles": "recompiles", "saved_x": "saved |x|",
          "dram_model_x": "DRAM model |x|", "ncu_dram_x": "DRAM ncu |x|"}


def table_rows(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> tuple[list[str], list[list[str]]]:
    used = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]
    return [_SHORT.get(c, c) for c in used], [[_fmt(c, r.get(c)) for c in used] for r in rows]


def write_markdown(doc: dict[str, Any], path: str) -> None:
    head, body = table_rows(doc["results"])
    env = doc["env"]
    lines = [
        f"# cbam-triton benchmark — {env['device_name']} ({env['date']})",
        "",
        f"torch {env['torch']}, triton {env['triton']}, python {env['python']}, git {env['git_sha']}, "
        f"driver {env.get('driver')}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
    if doc.get("targets"):
        from bench.targets import format_verdicts

        lines += ["", "## Speed targets (fp16 forward, ResNet-50 shapes; bench/targets.py)", "",
                  format_verdicts(doc["targets"], markdown=True)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def format_terminal(rows: list[dict[str, Any]]) -> str:
    cols = tuple(c for c in COLUMNS if c != "note")
    head, body = table_rows(rows, cols)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in body]
    notes = [f"  {r['id']} {r['provider']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(out + (["notes:"] + notes if notes else []))
