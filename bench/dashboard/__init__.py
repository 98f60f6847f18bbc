"""The benchmark dashboard: one self-contained, offline HTML page over one or many result files.

    python -m bench dashboard                                   # every committed run under bench/results/
    python -m bench dashboard run1/results.json run2/ -o dashboard.html

The page (a few hundred kB; no network at view time) shows, first, the speed targets per device (met /
missed / not measured, with the worst case of a miss) and per-provider tiles (pass rate, geomean speedup
over eager and over torch.compile, fast_p, cold compile time, memory ratio), the whole-network rows;
then charts (speedup heatmap provider x case, latency against tensor size with p20-p80 bands, fraction
of copy bandwidth, DRAM traffic beside the floor), the history of a metric over every run with changes
beyond 5 % flagged, a base -> new comparison of any two runs, and a drill-down per case. Filters are
``<select>`` elements whose state lives in the URL's hash, so a link reproduces a view. Charts are drawn
by uPlot (MIT, vendored in bench/dashboard/static/, license in uPlot.LICENSE).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from bench.dashboard.history import history_points
from bench.dashboard.load import Inputs, Run, load_inputs
from bench.dashboard.rows import normalize_rows
from bench.dashboard.summary import headline, run_summaries
from bench.report import validate

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_ENV_KEYS = ("device_name", "device_type", "date", "torch", "triton", "python", "git_sha", "driver", "cuda",
             "platform", "cpu", "cpu_count", "triton_interpreter")
#: the result schema's statuses this dashboard understands besides its own (bench.dashboard.rows)
_NEW_STATUSES = ("pass", "fail_accuracy", "fail_to_run")


def _static(name: str) -> str:
    with open(os.path.join(STATIC, name), encoding="utf-8") as f:
        return f.read()


def _check(doc: Any, i: int, source: str) -> None:
    problems = validate(doc)
    if isinstance(doc, dict) and isinstance(doc.get("results"), list):  # rows with the newer statuses
        problems = [p for p in problems if not any(f"status {s!r}" in p for s in _NEW_STATUSES)
                    and "but no median_ms" not in p]
    if problems:
        where = f" ({source})" if source else ""
        raise ValueError(f"result file #{i + 1}{where} is not a valid result document: {problems[:3]}")


def page_data(inputs: Inputs) -> dict[str, Any]:
    """The JSON the page embeds: runs (environment, config, summaries), normalized rows (columnar: ``columns``
    and one list of values per row), history points, headline."""
    runs, rows = [], []
    for i, run in enumerate(inputs.runs):
        _check(run.doc, i, run.source)
        env = run.doc["env"]
        mine = normalize_rows(run.doc["results"], i, str(env.get("device_name")))
        rows += mine
        runs.append({"index": i, "source": run.source, "env": {k: env.get(k) for k in _ENV_KEYS},
                     "label": f"#{i + 1} {env.get('date', '')[:10]} {env.get('device_name')} "
                              f"{str(env.get('git_sha') or '')[:8]}" + (f" ({os.path.basename(run.source)})"
                                                                       if run.source else ""),
                     "floor_x": run.doc.get("config", {}).get("floor_x") or {"forward": 2, "train": 5},
                     "timer": run.doc.get("config", {}).get("timer"),
                     "summary": run_summaries(mine, run.study), "has_study": run.study is not None})
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return _compact({"runs": runs, "rows": {"columns": columns, "values": [[r.get(c) for c in columns] for r in rows]},
                     "providers": providers, "history": history_points(inputs.history),
                     "headline": headline([run.doc for run in inputs.runs])})


def _compact(v: Any) -> Any:
    """Floats to 6 significant digits (the page's size), non-finite ones to None (never shown as numbers)."""
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _compact(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_compact(x) for x in v]
    return v


def render(data: dict[str, Any]) -> str:
    """The HTML page for page_data()'s JSON (everything inline)."""
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    page = _static("dashboard.html")
    uplot = _static("uPlot.iife.min.js")
    if uplot.startswith("/*!"):  # its banner (name, version, home page) is in the page's head with the license
        uplot = uplot.split("\n", 1)[1]
    for key, text in (("__UPLOT_LICENSE__", _static("uPlot.LICENSE").replace("--", "-")),
                      ("__UPLOT_CSS__", _static("uPlot.min.css")), ("__CSS__", _static("dashboard.css")),
                      ("__UPLOT_JS__", uplot), ("__APP_JS__", _static("dashboard.js"))):
        page = page.replace(key, text.replace("</script", "<\\/script"))
    return page.replace("__DATA__", blob)


def build_dashboard(docs: list[dict[str, Any]], history: list[dict[str, Any]] | None = None,
                    studies: list[dict[str, Any] | None] | None = None) -> str:
    """The dashboard HTML for result documents (each validated first), optional history records and
    study summaries (one per document, or None)."""
    studies = studies or [None] * len(docs)
    inputs = Inputs([Run(doc, "", study) for doc, study in zip(docs, studies)], list(history or []))
    return render(page_data(inputs))


def write_dashboard(docs: list[dict[str, Any]], path: str) -> None:
    """Write the dashboard of result documents to ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(build_dashboard(docs))


def write_dashboard_from_paths(paths: list[str] | None, output: str) -> Inputs:
    """Write the dashboard of result files / folders (default: bench/results/) to ``output``."""
    inputs = load_inputs(paths)
    if not inputs.runs:
        raise ValueError(f"no results.json found in {paths or 'bench/results'}")
    html = render(page_data(inputs))
    with open(output, "w", encoding="utf-8") as f:
        f.write(html)
    return inputs


__all__ = ["build_dashboard", "load_inputs", "page_data", "render", "write_dashboard", "write_dashboard_from_paths"]
