"""Result documents: schema, validation, JSON / CSV / Markdown writers and the terminal table."""

from __future__ import annotations

import csv
import json
import math
from typing import Any

SCHEMA_VERSION = 1
STATUSES = ("ok", "verified", "modelled", "mismatch", "error", "skipped")
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
    # network rows (kind "model", bench/models.py)
    "cbam_blocks", "cbam_x_bytes", "cbam_floor_bytes", "cbam_attributed_bytes", "cbam_kernel_bytes",
    "cbam_traffic_bytes", "cbam_traffic_share", "cbam_dram_model_bytes", "cbam_vs_floor", "cbam_latency_share",
    "base_traffic_bytes", "base_median_ms", "graph_breaks", "speedup_vs_compile",
)
#: the columns of network rows (kind "model"): their own table
MODEL_COLUMNS = ("id", "provider", "status", "median_ms", "p20_ms", "p80_ms", "speedup_vs_eager", "speedup_vs_compile",
                 "compile_s", "traffic_bytes", "cbam_traffic_share", "cbam_vs_floor", "cbam_latency_share",
                 "cbam_blocks", "launches", "graphs", "graph_breaks", "peak_mem_bytes", "max_abs_err_vs_eager", "note")
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
        if row.get("status") in ("mismatch", "error", "skipped", "verified", "modelled") \
                and row.get("median_ms") is not None:
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
    if key in ("peak_mem_bytes", "alloc_bytes", "traffic_bytes"):
        return f"{v / 2**20:.2f} MiB"
    if key in ("cbam_traffic_share", "cbam_latency_share") and isinstance(v, (int, float)):
        return f"{100 * v:.1f} %"
    if isinstance(v, float):
        if key in ("speedup_vs_eager", "traffic_x", "frac_copy_bw", "saved_x", "dram_model_x", "ncu_dram_x",
                   "speedup_vs_compile", "cbam_vs_floor"):
            return f"{v:.2f}"
        if key == "max_abs_err_vs_eager":
            return f"{v:.1e}"
        return f"{v:.4g}"
    return str(v)


_SHORT = {"median_ms": "ms", "p20_ms": "p20", "p80_ms": "p80", "speedup_vs_eager": "x eager", "compile_s": "compile s",
          "traffic_x": "traffic |x|", "peak_mem_bytes": "peak mem", "alloc_count": "allocs", "alloc_bytes": "alloc",
          "floor_gbps": "GB/s (floor)", "frac_copy_bw": "of copy bw", "max_abs_err_vs_eager": "err vs eager",
          "generated_kernels": "gen kernels", "recompiles": "recompiles", "saved_x": "saved |x|",
          "dram_model_x": "DRAM model |x|", "ncu_dram_x": "DRAM ncu |x|", "speedup_vs_compile": "x compile",
          "traffic_bytes": "traffic", "cbam_traffic_share": "CBAM traffic", "cbam_vs_floor": "CBAM / floor",
          "cbam_latency_share": "CBAM latency", "cbam_blocks": "CBAMs", "graph_breaks": "graph breaks"}


def split_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(block rows, network rows)."""
    return [r for r in rows if r.get("kind") != "model"], [r for r in rows if r.get("kind") == "model"]


MODEL_NOTE = ("Networks (bench/models.py): traffic is the whole forward's modelled bytes; \"CBAM traffic\" / "
              "\"CBAM latency\" the share the CBAM blocks add — T(network) − T(same network with every CBAM → "
              "nn.Identity), baseline run by the same family (eager for eager/triton, inductor for "
              "compile/triton+compile); \"CBAM / floor\" the blocks' bytes over Σ 2·|x_i| (triton: DRAM model).")


def table_rows(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> tuple[list[str], list[list[str]]]:
    used = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]
    return [_SHORT.get(c, c) for c in used], [[_fmt(c, r.get(c)) for c in used] for r in rows]


def write_markdown(doc: dict[str, Any], path: str) -> None:
    block_rows, model_rows = split_rows(doc["results"])
    head, body = table_rows(block_rows)
    env = doc["env"]
    lines = [
        f"# cbam-triton benchmark — {env['device_name']} ({env['date']})",
        "",
        f"torch {env['torch']}, triton {env['triton']}, python {env['python']}, git {env['git_sha']}, "
        f"driver {env.get('driver')}",
        "",
        "| " + " | ".join(h.replace("|", "\\|") for h in head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
    if not block_rows:
        lines = lines[:4]
    if model_rows:
        mhead, mbody = table_rows(model_rows, MODEL_COLUMNS)
        lines += ["", "## Networks", "", MODEL_NOTE, "",
                  "| " + " | ".join(h.replace("|", "\\|") for h in mhead) + " |", "|" + "---|" * len(mhead)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in mbody]
    if doc.get("model_goals"):
        from bench.targets import format_verdicts

        lines += ["", "## Network goals of the first GPU run (recorded; bench/models.py)", "",
                  format_verdicts(doc["model_goals"], markdown=True)]
    if doc.get("targets"):
        from bench.targets import format_verdicts

        lines += ["", "## Speed targets (fp16 forward, ResNet-50 shapes; bench/targets.py)", "",
                  format_verdicts(doc["targets"], markdown=True)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _terminal_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> list[str]:
    head, body = table_rows(rows, tuple(c for c in columns if c != "note"))
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body]


def format_terminal(rows: list[dict[str, Any]]) -> str:
    block_rows, model_rows = split_rows(rows)
    out = _terminal_table(block_rows, COLUMNS) if block_rows else []
    if model_rows:
        out += ([""] if out else []) + ["networks:"] + _terminal_table(model_rows, MODEL_COLUMNS) + [MODEL_NOTE]
    notes = [f"  {r['id']} {r['provider']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(out + (["notes:"] + notes if notes else []))
