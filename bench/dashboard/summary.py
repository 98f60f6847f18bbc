"""Per-provider summaries of a run (the dashboard's tiles) and the targets headline per device.

A study folder's ``study.json`` carries the summaries (``pass_rate``, ``geomean_speedup``, ``fast_p``,
``compile_s_cold``, ``compile_s_warm``, ``memory_ratio`` per provider); a run without one gets them
derived from its rows here, with the same meaning:

* ``pass_rate``: rows that pass (output matches eager) over rows that ran or failed (skips excluded);
* ``geomean_speedup``: geometric mean of ``speedup_vs_eager`` over the timed rows;
  ``geomean_vs_compile``: the same against ``torch.compile`` (``speedup_vs_compile``);
* ``fast_p``: for p in 0, 1, 1.5, 2, the share of rows that pass and are timed faster than p x eager,
  over the rows whose outcome is known (timed passes and failures; verified-only rows say nothing
  about speed) — ``None`` (not measured) when the provider has no timed row;
* ``compile_s_cold``: median first-call compile time (the benchmark disables inductor's caches);
  ``compile_s_warm``: a study's warm-cache compile time (runs do not measure it);
* ``memory_ratio``: geometric mean of eager's memory over the provider's, same case (peak memory where
  measured, else the bytes allocated by one call); above 1: the provider needs less.

``None`` always means not measured — a tile shows it as such, never as zero.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from bench import targets

FAST_P = (0, 1, 1.5, 2)
KINDS = ("block", "network", "all")
SUMMARY_KEYS = ("pass_rate", "geomean_speedup", "geomean_vs_compile", "fast_p", "compile_s_cold", "compile_s_warm",
                "memory_ratio")


def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def provider_summary(rows: list[dict[str, Any]], provider: str) -> dict[str, Any]:
    """The summary of one provider over normalized rows (bench.dashboard.rows) of one run."""
    mine = [r for r in rows if r["provider"] == provider and r["status"] != "skipped"]
    passed = [r for r in mine if r["status"] == "pass"]
    timed = [r for r in passed if r["timing"] == "timed"]
    known = timed + [r for r in mine if r["status"] != "pass"]
    speedups = [r["speedup_vs_eager"] for r in timed if r.get("speedup_vs_eager")]
    fast_p = ({str(p): sum(1 for r in timed if (r.get("speedup_vs_eager") or 0) > p) / len(known) for p in FAST_P}
              if timed else None)
    compile_s = [r["compile_s"] for r in mine if r.get("compile_s")]
    warm = [r["compile_s_warm"] for r in mine if r.get("compile_s_warm")]
    eager = {r["id"]: r for r in rows if r["provider"] == "eager" and r["status"] == "pass"}
    ratios, basis = [], None
    for r in passed:
        e = eager.get(r["id"])
        if e is None:
            continue
        for key in ("peak_mem_bytes", "alloc_bytes"):
            if e.get(key) and r.get(key):
                ratios.append(e[key] / r[key])
                basis = basis or key
                break
    return {
        "cases": len(mine), "passed": len(passed), "timed": len(timed),
        "pass_rate": len(passed) / len(mine) if mine else None,
        "geomean_speedup": _geomean(speedups),
        "geomean_vs_compile": _geomean([r["speedup_vs_compile"] for r in timed if r.get("speedup_vs_compile")]),
        "fast_p": fast_p,
        "compile_s_cold": statistics.median(compile_s) if compile_s else None,
        "compile_s_warm": statistics.median(warm) if warm else None,
        "memory_ratio": _geomean(ratios),
        "memory_basis": basis,
        "source": "derived from the rows",
    }


def _study_providers(study: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The per-provider summaries of a study.json ({provider: {...}} at the top or under "providers")."""
    if not isinstance(study, dict):
        return {}
    body = study.get("providers", study)
    return {p: s for p, s in body.items() if isinstance(s, dict) and any(k in s for k in SUMMARY_KEYS)}


def run_summaries(rows: list[dict[str, Any]], study: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{kind: {provider: summary}} for kind in block, network, all; a study's numbers replace the derived
    ones of the same provider (in "all", or in the kind the study names with ``"kind"``)."""
    out: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        mine = rows if kind == "all" else [r for r in rows if r["kind"] == kind]
        out[kind] = {p: provider_summary(mine, p) for p in dict.fromkeys(r["provider"] for r in mine)}
    study_kind = (study or {}).get("kind", "all") if isinstance(study, dict) else "all"
    for provider, s in _study_providers(study).items():
        merged = dict(out.get(study_kind, {}).get(provider, {}))
        for key in ("cases", "passed", "timed"):  # the derived counts describe the rows, not the study
            merged[key] = s.get(key)
        for key in SUMMARY_KEYS:
            if key in s:
                value = s[key]
                if key == "geomean_speedup" and isinstance(value, dict):  # {"eager": x, "compile": y}
                    merged["geomean_speedup"] = value.get("eager")
                    merged["geomean_vs_compile"] = value.get("compile", merged.get("geomean_vs_compile"))
                    continue
                if key == "fast_p" and isinstance(value, dict):
                    value = {str(float(p)).removesuffix(".0"): v for p, v in value.items()}
                merged[key] = value
        merged["source"] = "study.json"
        out.setdefault(study_kind, {})[provider] = merged
    return out


def _worst_case(verdict: dict[str, Any]) -> dict[str, Any] | None:
    cases = verdict.get("cases") or []
    if not cases or verdict.get("worst") is None:
        return None
    return min(cases, key=lambda c: abs(c["value"] - verdict["worst"]))


def headline(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per device (newest run of each that has block rows, and of each that has network rows): the speed
    targets and network goals, each met / missed / not measured, with the worst case of a miss."""
    latest: dict[str, dict[str, Any]] = {}
    for i, doc in enumerate(docs):
        device = str(doc["env"].get("device_name"))
        entry = latest.setdefault(device, {"device": device, "device_type": doc["env"].get("device_type"),
                                           "targets": None, "targets_run": None, "goals": None, "goals_run": None})
        blocks = [r for r in doc["results"] if r.get("kind") != "model"]
        if blocks:
            entry["targets"] = doc.get("targets") or targets.evaluate(dict(doc, results=blocks))
            entry["targets_run"] = i
        if doc.get("model_goals"):
            entry["goals"] = doc["model_goals"]
            entry["goals_run"] = i
    for entry in latest.values():
        for key in ("targets", "goals"):
            entry[key] = [dict(v, worst_case=_worst_case(v)) for v in entry[key] or []]
    return list(latest.values())
