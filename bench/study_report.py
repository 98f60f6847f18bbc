"""The compiler study's outputs: ``study.json`` (validated), ``study.md``, the history file, and the
numbers block of ``docs/compiler-study.md`` (generated from ``study.json``, so the two agree).

``study.json``::

    {"schema": "cbam-triton-study", "schema_version": 1,
     "env": {machine card: date, git_sha, torch, triton, cpu_model, cpu_count, torch_threads, ...,
             "versions": {distribution: version or null}},
     "methodology": {name: definition}, "config": {...}, "elapsed_s": float,
     "rows": [{id, shape_name, batch, channels, height, width, dtype, layout, kind: "block", provider,
               family, device, x_bytes, status, timing, note, max_abs_err, eager_max_abs_err,
               median_ms, p20_ms, p80_ms, reps, samples_ms, speedup_vs_eager, compile_s_cold,
               compile_s_warm, peak_mem_bytes, memory_ratio, traffic_bytes, traffic_x, launches,
               generated: {...}, code_file}],
     "summary": {device: {provider: {pass_rate, passed, cases, geomean_speedup, fast_p: {"0", "1",
                 "1.5", "2"}, compile_s_cold, compile_s_warm, memory_ratio, traffic_x, launches,
                 timed, verified, fail_accuracy, fail_to_run, skipped, skip_reason}}}}

``history.jsonl``: one JSON object per line and per measured row, appended, never rewritten:
``{"source": "study", "date", "git_sha", "machine": {device_type, device_name, cpu_model,
cpu_count, torch, triton}, "row": {the row without samples_ms and generated}}``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from bench.status import validate_state
from bench.study import FAST_P, STUDY_SCHEMA_VERSION

SUMMARY_KEYS = ("pass_rate", "geomean_speedup", "fast_p", "compile_s_cold", "compile_s_warm", "memory_ratio")
ROW_KEYS = {"id": str, "provider": str, "status": str, "timing": str, "device": str, "note": str, "x_bytes": int,
            "shape_name": str, "batch": int, "dtype": str}
NUMBER_KEYS = ("median_ms", "p20_ms", "p80_ms", "speedup_vs_eager", "compile_s_cold", "compile_s_warm",
               "max_abs_err", "eager_max_abs_err", "peak_mem_bytes", "memory_ratio", "traffic_x", "launches")
ENV_KEYS = ("date", "git_sha", "torch", "triton", "device_type", "device_name", "python", "versions")
HISTORY = os.path.join("bench", "results", "history.jsonl")


def _num_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def validate_study(doc: Any) -> list[str]:
    """Problems with a study document (empty: valid)."""
    if not isinstance(doc, dict):
        return ["document is not a JSON object"]
    problems = []
    if doc.get("schema") != "cbam-triton-study" or doc.get("schema_version") != STUDY_SCHEMA_VERSION:
        problems.append(f"schema must be cbam-triton-study version {STUDY_SCHEMA_VERSION}")
    env = doc.get("env")
    if not isinstance(env, dict):
        problems.append("env missing")
    else:
        problems += [f"env.{k} missing" for k in ENV_KEYS if k not in env]
    if not isinstance(doc.get("methodology"), dict) or not doc["methodology"]:
        problems.append("methodology missing")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows:
        return problems + ["rows must be a non-empty list"]
    for i, r in enumerate(rows):
        for k, typ in ROW_KEYS.items():
            if not isinstance(r.get(k), typ):
                problems.append(f"rows[{i}].{k} must be {typ.__name__}, got {r.get(k)!r}")
        problems += [f"rows[{i}]{p}" for p in validate_state(r)]
        for k in NUMBER_KEYS:
            if not _num_or_none(r.get(k)):
                problems.append(f"rows[{i}].{k} must be a number or null")
        if r.get("timing") == "timed" and not (isinstance(r.get("samples_ms"), list) and r["samples_ms"]):
            problems.append(f"rows[{i}] is timed but has no samples_ms")
        if r.get("status") != "pass" and r.get("speedup_vs_eager") is not None:
            problems.append(f"rows[{i}] failed but has a speedup")
    summary = doc.get("summary")
    if not isinstance(summary, dict) or not summary:
        return problems + ["summary missing"]
    for dev, provs in summary.items():
        for prov, s in provs.items():
            for k in SUMMARY_KEYS:
                if k not in s:
                    problems.append(f"summary.{dev}.{prov}.{k} missing")
            fast = s.get("fast_p")
            if not isinstance(fast, dict) or sorted(fast) != sorted(f"{p:g}" for p in FAST_P):
                problems.append(f"summary.{dev}.{prov}.fast_p must have the keys {[f'{p:g}' for p in FAST_P]}")
            for k in ("pass_rate", "geomean_speedup", "compile_s_cold", "compile_s_warm", "memory_ratio"):
                if not _num_or_none(s.get(k)):
                    problems.append(f"summary.{dev}.{prov}.{k} must be a number or null")
    return problems


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(doc: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(_clean(doc), f, indent=1)
        f.write("\n")


def append_history(doc: dict[str, Any], path: str = HISTORY) -> int:
    """Append one record per row that ran (not skipped) to ``path``; returns how many."""
    env = doc["env"]
    machine = {k: env.get(k) for k in ("device_type", "device_name", "cpu_model", "cpu_count", "torch", "triton",
                                       "platform")}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    n = 0
    with open(path, "a") as f:
        for r in doc["rows"]:
            if r["status"] == "skipped":
                continue
            row = {k: v for k, v in r.items() if k not in ("samples_ms", "generated", "code_file")}
            rec = {"source": "study", "date": env["date"], "git_sha": env["git_sha"], "machine": machine, "row": row}
            f.write(json.dumps(_clean(rec), sort_keys=True) + "\n")
            n += 1
    return n


# --------------------------------------------------------------------------------------- formatting
def fmt(v: Any, kind: str = "g") -> str:
    """One number as the study's tables print it ("—" for none)."""
    if v is None:
        return "—"
    if kind == "x":
        return f"{v:.2f}×"
    if kind == "ms":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if kind == "s":
        return f"{v:.2f}"
    if kind == "pct":
        return f"{100 * v:.0f} %"
    if kind == "e":
        return f"{v:.1e}"
    return f"{v:.3g}"


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body])


def summary_table(doc: dict[str, Any]) -> list[str]:
    """The summary table: one line per device and provider."""
    head = ["device", "provider", "pass rate", "geomean × eager", "fast_0", "fast_1", "fast_1.5", "fast_2",
            "compile s (cold)", "compile s (warm)", "memory ratio", "timed / verified / failed / skipped"]
    body = []
    for dev, provs in doc["summary"].items():
        for prov, s in provs.items():
            rate = f"{s['passed']}/{s['cases']}" if s["cases"] else "—"
            fast = [fmt(s["fast_p"][f"{p:g}"], "pct") for p in FAST_P]
            body.append([dev, f"`{prov}`", rate, fmt(s["geomean_speedup"], "x"), *fast,
                         fmt(s["compile_s_cold"], "s"), fmt(s["compile_s_warm"], "s"), fmt(s["memory_ratio"], "x"),
                         f"{s['timed']} / {s['verified']} / {s['fail_accuracy'] + s['fail_to_run']} / {s['skipped']}"])
    return _table(head, body)


def case_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per case: each provider's state, latency, speedup, error and compile times."""
    head = ["provider", "status", "timing", "median ms", "p20–p80 ms", "× eager", "max err vs fp64", "compile s cold",
            "compile s warm", "traffic |x|", "launches"]
    body = []
    for r in rows:
        band = f"{fmt(r.get('p20_ms'), 'ms')}–{fmt(r.get('p80_ms'), 'ms')}" if r.get("p20_ms") is not None else "—"
        body.append([f"`{r['provider']}`", r["status"], r["timing"], fmt(r.get("median_ms"), "ms"), band,
                     fmt(r.get("speedup_vs_eager"), "x"), fmt(r.get("max_abs_err"), "e"),
                     fmt(r.get("compile_s_cold"), "s"), fmt(r.get("compile_s_warm"), "s"),
                     fmt(r.get("traffic_x"), "g"), fmt(r.get("launches"), "g")])
    return _table(head, body)


def generated_lines(rows: list[dict[str, Any]]) -> list[str]:
    """"What the compiler generated", one line per provider of a case."""
    out = []
    for r in rows:
        g = r.get("generated")
        if not g:
            continue
        if "kernels" in g and "fused_ops" in (g["kernels"][0] if g["kernels"] else {"fused_ops": ""}):
            kern = "; ".join(f"`{k['name']}` ({k['fused_ops'].replace('_', ' ')}; {k['calls']} call"
                             f"{'s' if k['calls'] != 1 else ''})" for k in g["kernels"])
            ext = ", ".join(f"{k} ×{v}" for k, v in g.get("extern_calls", {}).items()) or "none"
            out.append(f"* `{r['provider']}`: {g['generated_kernels']} generated kernels, {g['kernel_calls']} "
                       f"calls, extern calls {ext}; inductor counts {g['bytes_accessed'] / r['x_bytes']:.2f}·|x| "
                       f"({g['bytes_accessed']} bytes). Kernels: {kern}")
        elif "graph_nodes" in g:
            extra = "".join(f", {k.replace('_', ' ')} {v}" for k, v in g.items() if k != "graph_nodes")
            out.append(f"* `{r['provider']}`: optimized graph of {fmt(g['graph_nodes'])} nodes{extra}")
        elif "launches" in g:
            out.append(f"* `{r['provider']}`: {g['launches']} launches, {g['model_x']:.2f}·|x| "
                       f"({g['model_bytes']} bytes) — {g['note']}")
    return out


def render_markdown(doc: dict[str, Any]) -> str:
    """study.md: the summary table first, then each case, then the machine and the methodology."""
    env = doc["env"]
    v = env.get("versions", {})
    rows = doc["rows"]
    lines = [f"# CBAM compiler study — {env['device_name']} ({env['date'][:10]})", "",
             f"git {env['git_sha']}; torch {env['torch']}, triton {env['triton']}, onnxruntime {v.get('onnxruntime')}, "
             f"openvino {v.get('openvino')}; CPU {env.get('cpu_model')} ({env.get('cpu_count')} cores, torch threads "
             f"{env.get('torch_threads')}); {doc['config']['dtype']}, batch {doc['config']['batch']}, "
             f"{doc['config']['layout']}; {doc['elapsed_s']} s.", "", "## Summary", ""]
    lines += summary_table(doc)
    lines += ["", "pass rate: cases whose output is within the tolerance of the float64 reference, of the cases run "
              "(not skipped); geomean over passing timed cases; fast_p: share of the cases run that pass and are "
              "faster than p × eager (fast_0: correct); memory ratio: eager peak ÷ provider peak (GPU only)."]
    for cid in dict.fromkeys(r["id"] for r in rows):
        rs = [r for r in rows if r["id"] == cid]
        lines += ["", f"## {cid} ({rs[0]['channels']}×{rs[0]['height']}×{rs[0]['width']})", ""]
        lines += case_table(rs)
        notes = [f"* `{r['provider']}`: {r['note']}" for r in rs if r.get("note")]
        gen = generated_lines(rs)
        if gen:
            lines += ["", "What each provider generated:", ""] + gen
        if notes:
            lines += ["", "Notes:", ""] + notes
    lines += ["", "## Methodology", ""] + [f"* {k}: {m}" for k, m in doc["methodology"].items()]
    return "\n".join(lines) + "\n"


def write_study(doc: dict[str, Any], out_dir: str, plots: bool = True) -> list[str]:
    """Validate, then write study.json, study.md and (``plots``) the PNGs; returns the paths written."""
    problems = validate_study(_clean(doc))
    if problems:
        raise ValueError(f"invalid study document: {problems[:5]}")
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "study.json"), os.path.join(out_dir, "study.md")]
    write_json(doc, paths[0])
    with open(paths[1], "w") as f:
        f.write(render_markdown(doc))
    if plots:
        from bench.plots import write_study_plots

        paths += write_study_plots(doc, out_dir)
    return paths
