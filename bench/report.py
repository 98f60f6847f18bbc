"""Result documents: schema, validation, JSON / CSV / Markdown writers and the terminal table."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
from collections import Counter
from typing import Any

from bench.status import STATUSES, TIMINGS, is_flagged, is_passing, is_timed, row_state, validate_state

__all__ = ["STATUSES", "TIMINGS", "is_flagged", "is_passing", "is_timed", "make_document", "row_state", "validate",
           "validate_state"]

#: 2: rows carry ``status`` and ``timing`` (bench/status.py); 1: ``status`` alone (still read)
SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)
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
MODEL_COLUMNS = ("id", "provider", "status", "timing", "median_ms", "p20_ms", "p80_ms", "speedup_vs_eager",
                 "speedup_vs_compile", "compile_s", "traffic_bytes", "cbam_traffic_share", "cbam_vs_floor",
                 "cbam_latency_share", "cbam_blocks", "launches", "graphs", "graph_breaks", "peak_mem_bytes",
                 "max_abs_err_vs_eager", "note")
COLUMNS = ("id", "provider", "status", "timing", "median_ms", "p20_ms", "p80_ms", "speedup_vs_eager", "compile_s",
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
    if doc.get("schema_version") not in SCHEMA_VERSIONS:
        problems.append(f"schema_version must be one of {SCHEMA_VERSIONS}, got {doc.get('schema_version')!r}")
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
        problems += [f"results[{i}]{p}" for p in validate_state(row)]
        for key in OPTIONAL_NUMBERS:
            v = row.get(key)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                problems.append(f"results[{i}].{key} must be a number or null, got {v!r}")
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


def merge_documents(docs: list[tuple[str, dict]], env: dict[str, Any]) -> dict[str, Any]:
    """One result document from several ``(name, document)`` (e.g. the GPU acceptance run's steps): the first
    row of a (case, provider) wins, marked ``step: name``, and takes the fields it lacks from later ones (e.g.
    ``ncu_dram_x``); ``speedup_vs_eager`` is recomputed against the case's eager row, whichever document timed
    it; the targets are judged on the whole. The env: the first document's, ``git_sha`` / ``tree_sha256`` filled
    from ``env``; without documents ``env`` itself (strings where the plots need them)."""
    from bench.targets import evaluate

    rows: list[dict[str, Any]] = []
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for step, doc in docs:
        for r in doc.get("results", []):
            first = index.get((r["id"], r["provider"]))
            if first is None:
                first = index[(r["id"], r["provider"])] = dict(r, step=step)
                rows.append(first)
            first.update({k: v for k, v in r.items() if first.get(k) is None and v is not None})
    eager = {r["id"]: r["median_ms"] for r in rows if r["provider"] == "eager" and r.get("median_ms")}
    for r in rows:
        r.pop("speedup_vs_eager", None)
        if r.get("median_ms") and r["id"] in eager:
            r["speedup_vs_eager"] = eager[r["id"]] / r["median_ms"]
    if docs:
        base = dict(docs[0][1]["env"])
        base.update({k: env[k] for k in ("git_sha", "tree_sha256") if not base.get(k) and env.get(k)})
    else:
        base = {k: env.get(k) for k in REQUIRED_ENV}
        base.update({k: str(env.get(k) or "?") for k in ("device_name", "torch", "triton")},
                    date=env.get("date") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    doc = make_document(base, {"steps": {step: doc.get("config", {}) for step, doc in docs}}, rows)
    doc["targets"] = evaluate(doc)
    return doc


def verdict_line(doc: dict[str, Any], record: dict[str, Any]) -> str:
    """One sentence: sanitizer, tests, targets of a GPU acceptance run (for summary.md and the README)."""
    san, tests = record.get("phases", {}).get("sanitizer"), record.get("phases", {}).get("tests")
    parts = [f"sanitizer: {san['status']}" if san else "sanitizer: not run", "tests: not run"]
    if tests:
        t = tests["totals"]
        parts[1] = (f"tests: {t.get('passed', 0)} passed, {t.get('failed', 0) + t.get('error', 0)} failed, "
                    f"{t.get('skipped', 0)} skipped of {tests['collected'] or '?'} collected"
                    + (" (cut at the budget)" if tests["status"] == "timeout" else ""))
    counts = ", ".join(f"{n} {s}" for s, n in Counter(v["status"] for v in doc.get("targets") or []).items())
    return "; ".join(parts) + "; speed targets: " + (counts or "none judged") + "."
