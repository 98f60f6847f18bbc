"""The speed targets of the fused forward, checked against a result document.

    python -m bench targets bench/results/<run>/results.json [more.json ...]

Each target names the rows it judges (ResNet-50 stage shapes, fp16, forward, a batch size), the
number it reads from them and the goal. A target is ``met`` when every judged case reaches the goal,
``missed`` when one does not, and ``not measured`` when the document has no such rows (e.g. a CPU run,
where the Triton provider is verified in the interpreter but never timed, or a run without the
compared provider). ``python -m bench`` appends the verdicts to results.md and results.json
(``"targets"``) and prints them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.status import is_timed

#: the ResNet-50 stage shapes the targets are stated for
RESNET50 = ("resnet50-s1", "resnet50-s2", "resnet50-s3", "resnet50-s4")


def _speedup(other: str) -> Callable[[dict[str, Any], dict[tuple[str, str], dict[str, Any]]], float | None]:
    """median(other provider) / median(row), same case."""

    def metric(row: dict[str, Any], by_case: dict[tuple[str, str], dict[str, Any]]) -> float | None:
        base = by_case.get((row["id"], other))
        if base is None or not base.get("median_ms") or not row.get("median_ms"):
            return None
        return base["median_ms"] / row["median_ms"]

    return metric


def _field(key: str) -> Callable[[dict[str, Any], dict[tuple[str, str], dict[str, Any]]], float | None]:
    return lambda row, _by_case: row.get(key)


@dataclass(frozen=True)
class Target:
    """One goal: rows of ``provider`` at ``batch`` (fp16 forward, ResNet-50 shapes) must reach
    ``goal`` in ``metric`` (``at_least``: value >= goal, else value <= goal)."""

    name: str
    provider: str
    batch: int
    metric: Callable[[dict[str, Any], dict[tuple[str, str], dict[str, Any]]], float | None]
    goal: float
    unit: str
    at_least: bool = True
    needs: str = ""

    def judged_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r.get("provider") == self.provider and r.get("batch") == self.batch
                and r.get("dtype") == "fp16" and r.get("mode") == "forward" and r.get("shape_name") in RESNET50]


TARGETS = (
    Target("forward >= 3x eager", "triton", 32, _field("speedup_vs_eager"), 3.0, "x eager"),
    Target("forward >= 1.5x torch.compile(max-autotune-no-cudagraphs)", "triton", 32,
           _speedup("compile-max-autotune"), 1.5, "x compile", needs="compile-max-autotune"),
    Target(">= 80% of copy bandwidth counting 2|x|", "triton", 32, _field("frac_copy_bw"), 0.8, "of copy bw"),
    Target("batch 1 with CUDA graphs >= 3x eager", "triton-cudagraph", 1, _field("speedup_vs_eager"), 3.0,
           "x eager"),
    Target("DRAM traffic ~ 2|x| (ncu, L2 schedule, <= 2.25|x|)", "triton-l2", 32, _field("ncu_dram_x"), 2.25,
           "|x| DRAM", at_least=False, needs="--ncu"),
)


def evaluate(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per target: ``{"target", "status", "goal", "unit", "cases": [{"id", "value", "met"}],
    "worst", "why"}`` (``status``: met / missed / not measured)."""
    rows = doc.get("results", [])
    by_case = {(r["id"], r["provider"]): r for r in rows if is_timed(r)}
    device = doc.get("env", {}).get("device_type")
    verdicts = []
    for t in TARGETS:
        cases = []
        for r in t.judged_rows(rows):
            value = t.metric(r, by_case) if is_timed(r) else None
            if value is None:
                continue
            met = value >= t.goal if t.at_least else value <= t.goal
            cases.append({"id": r["id"], "value": round(float(value), 4), "met": bool(met)})
        verdict: dict[str, Any] = {"target": t.name, "goal": t.goal, "unit": t.unit, "cases": cases}
        if cases:
            values = [c["value"] for c in cases]
            verdict["worst"] = min(values) if t.at_least else max(values)
            verdict["status"] = "met" if all(c["met"] for c in cases) else "missed"
            verdict["why"] = ""
        else:
            verdict["worst"] = None
            verdict["status"] = "not measured"
            missing = ""
            if t.needs == "--ncu" and not any(r.get("ncu_dram_x") is not None for r in rows):
                missing = "; no DRAM measurement in this run (needs --ncu)"
            elif t.needs and not any(r.get("provider") == t.needs and r.get("median_ms") for r in rows):
                missing = f"; no timed '{t.needs}' rows to compare with"
            verdict["why"] = (f"no timed fp16 forward '{t.provider}' rows at batch {t.batch} on ResNet-50 shapes"
                              + (f" on this {device} run (targets are GPU timings)" if device != "cuda" else "")
                              + missing)
        verdicts.append(verdict)
    return verdicts


def format_verdicts(verdicts: list[dict[str, Any]], markdown: bool = False) -> str:
    """A table of the verdicts (plain text, or Markdown)."""
    head = ("target", "status", "worst case", "cases met")
    body = []
    for v in verdicts:
        worst = "" if v["worst"] is None else f"{v['worst']:.2f} {v['unit']} (goal {v['goal']:g})"
        met = f"{sum(c['met'] for c in v['cases'])}/{len(v['cases'])}" if v["cases"] else v["why"]
        body.append((v["target"], v["status"], worst, met))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                                  for row in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in body])


def main(paths: list[str]) -> int:
    """Print the verdicts of each result file; exit 1 if a target is missed, 2 on an unreadable file."""
    import json
    import sys

    worst = 0
    for path in paths:
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"bench targets: cannot read {path}: {exc}", file=sys.stderr)
            return 2
        env = doc.get("env", {})
        print(f"{path}: {env.get('device_name')} (torch {env.get('torch')}, triton {env.get('triton')}, "
              f"{env.get('date')})")
        verdicts = evaluate(doc)
        print(format_verdicts(verdicts))
        if any(v["status"] == "missed" for v in verdicts):
            worst = 1
    return worst
