"""The compiler study (bench/study.py) on the CPU: statuses of wrong, raising and recompiling providers,
the summaries, the provider registry, the --quick CLI with ONNX Runtime and OpenVINO timed on a tiny
shape, and the agreement of docs/compiler-study.md with the committed study."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bench import providers as registry
from bench import study, study_doc, study_report
from bench.providers import Built, Provider
from bench.suite import Case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE = Case("tiny", 1, 8, 5, 6, 2, "fp32", "nchw")


def _eager_fn(ref, x):
    def fn():
        with torch.no_grad():
            return ref(x)
    return fn


def _wrong(ref, x):  # a test double: eager's output, perturbed by 1e-3 (far beyond the float32 rule)
    fn = _eager_fn(ref, x)
    return Built(lambda: fn() + 1e-3, compile_s=0.0)


def _raising(ref, x):
    raise RuntimeError("no kernel for this shape\nsecond line never shown")


def _recompiling(ref, x):
    """Correct output, but every call makes dynamo compile a frame again (reset, then a compiled call)."""
    fn = _eager_fn(ref, x)
    double = torch.compile(lambda t: t * 2.0, backend="eager")

    def run():
        torch._dynamo.reset()
        double(x)
        return fn()
    return Built(run)


EXTRA = {name: Provider(name, "test", "test double", block, counts="none")
         for name, block in (("wrong", _wrong), ("raising", _raising), ("recompiling", _recompiling))}
FAST = dict(warmup=1, min_reps=3, max_reps=3, budget_s=0.0)


def test_wrong_raising_and_recompiling_providers_fail_and_leave_the_summary():
    cfg = study.StudyConfig(shapes=["tiny"], providers=["eager", "wrong", "raising", "recompiling"], **FAST)
    rows = study.run_study_case(CASE, cfg.providers, cfg, extra=EXTRA)
    by = {r["provider"]: r for r in rows}
    assert (by["eager"]["status"], by["eager"]["timing"]) == ("pass", "timed")
    assert by["eager"]["reps"] == 3 and len(by["eager"]["samples_ms"]) == 3
    assert by["eager"]["p20_ms"] <= by["eager"]["median_ms"] <= by["eager"]["p80_ms"]
    wrong = by["wrong"]
    assert (wrong["status"], wrong["timing"]) == ("fail_accuracy", "not_measured")
    assert wrong["max_abs_err"] == pytest.approx(1e-3, rel=1e-2) and "float64 reference" in wrong["note"]
    assert wrong.get("median_ms") is None and wrong.get("speedup_vs_eager") is None
    raising = by["raising"]
    assert raising["status"] == "fail_to_run" and raising["note"] == "RuntimeError: no kernel for this shape"
    rec = by["recompiling"]
    assert (rec["status"], rec["timing"]) == ("fail_to_run", "not_measured"), rec
    assert "recompiled while being timed" in rec["note"] and rec.get("median_ms") is None
    summary = study.summarize(rows)["cpu"]
    assert summary["wrong"]["pass_rate"] == 0 and summary["wrong"]["geomean_speedup"] is None
    assert summary["wrong"]["fast_p"] == {"0": 0.0, "1": None, "1.5": None, "2": None}
    assert summary["raising"]["fail_to_run"] == 1 and summary["raising"]["geomean_speedup"] is None
    assert summary["eager"]["geomean_speedup"] == pytest.approx(1.0)


def test_summary_is_a_geomean_of_passing_timed_rows_only():
    def row(case, prov, speedup, status="pass", timing="timed", **kw):
        return dict(id=case, provider=prov, device="cpu", status=status, timing=timing, speedup_vs_eager=speedup, **kw)

    rows = [row("a", "x", 4.0, compile_s_cold=10.0, compile_s_warm=1.0), row("b", "x", 1.0, compile_s_cold=20.0),
            row("c", "x", None, status="fail_accuracy", timing="not_measured", compile_s_cold=99.0),
            row("d", "x", None, status="skipped", timing="not_measured"),
            row("a", "ours", None, timing="verified"), row("b", "ours", None, timing="verified")]
    s = study.summarize(rows)["cpu"]
    x = s["x"]
    assert x["geomean_speedup"] == pytest.approx(2.0)  # sqrt(4 * 1), not the arithmetic 2.5
    assert (x["passed"], x["cases"], x["skipped"]) == (2, 3, 1) and x["pass_rate"] == pytest.approx(2 / 3)
    assert x["fast_p"] == pytest.approx({"0": 2 / 3, "1": 1 / 3, "1.5": 1 / 3, "2": 1 / 3})
    assert x["compile_s_cold"] == pytest.approx(15.0) and x["compile_s_warm"] == pytest.approx(1.0)
    assert x["memory_ratio"] is None  # no peaks on a CPU
    ours = s["ours"]  # verified in the interpreter: correct, never timed
    assert ours["pass_rate"] == 1 and ours["geomean_speedup"] is None and ours["fast_p"]["1"] is None


def test_registry_keeps_the_benchmark_defaults_and_says_why_a_provider_cannot_run():
    assert registry.names("block", "cpu", default="block") == ("eager", "compile", "compile-max-autotune", "triton",
                                                               "triton-l2")
    assert registry.names("network", "cpu", default="network") == ("eager", "compile", "triton", "triton+compile",
                                                                   "triton-tail", "triton-tail+compile")
    assert set(registry.names("block", "cuda", default="block")) == {
        "eager", "compile", "compile-max-autotune", "triton", "triton-l2", "triton-stream", "triton-cudagraph",
        "compile-cudagraphs"}
    assert registry.train_names() == ("eager", "compile", "compile-max-autotune", "triton")
    assert registry.get("torch-tensorrt").unavailable("cpu") == "needs a CUDA device"
    assert registry.get("openvino").unavailable("cuda") == "runs on cpu only"
    assert "forward-only" in registry.get("onnxruntime").unavailable("cpu", mode="train")
    assert "blocks only" in registry.get("triton-l2").unavailable("cpu", kind="network")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # the CPU build: say so on a GPU
        assert "onnxruntime-gpu" in registry.get("onnxruntime").unavailable("cuda")
    assert registry.get("onnxruntime").unavailable("cpu") is None
    with pytest.raises(ValueError, match="unknown provider"):
        registry.get("tvm")


def test_quick_cli_times_onnxruntime_and_openvino(tmp_path):
    """The CI leg of the study: a tiny shape, few repetitions, no inductor compile (the block tests compile)."""
    out, history = tmp_path / "study", tmp_path / "history.jsonl"
    history.write_text('{"earlier": "record"}\n')
    cmd = [sys.executable, "-m", "bench", "study", "--quick", "--threads", "1", "--reps", "5", "--out", str(out),
           "--history", str(history), "--providers", "eager", "onnxruntime", "openvino", "openvino-default", "triton",
           "torch-tensorrt"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "study.json").read_text())
    assert study_report.validate_study(doc) == []
    by = {r["provider"]: r for r in doc["rows"]}
    for p in ("eager", "onnxruntime", "openvino"):
        assert (by[p]["status"], by[p]["timing"]) == ("pass", "timed"), by[p]
        assert by[p]["reps"] == 5 and by[p]["speedup_vs_eager"] > 0
    for p in ("onnxruntime", "openvino"):
        assert by[p]["compile_s_cold"] > 0 and by[p]["compile_s_warm"] > 0 and by[p]["generated"]["graph_nodes"] > 0
    assert (by["triton"]["status"], by["triton"]["timing"]) == ("pass", "verified")
    assert by["triton"]["generated"]["launches"] == 3
    assert by["openvino-default"]["status"] in ("pass", "fail_accuracy")  # the plugin's own precision choice
    assert (by["torch-tensorrt"]["status"], by["torch-tensorrt"]["note"]) == ("skipped", "needs a CUDA device")
    summary = doc["summary"]["cpu"]
    for key in study_report.SUMMARY_KEYS:
        assert key in summary["onnxruntime"]
    assert summary["onnxruntime"]["pass_rate"] == 1 and summary["onnxruntime"]["geomean_speedup"] > 0
    assert doc["env"]["versions"]["onnxruntime"] and doc["env"]["versions"]["openvino"] and doc["env"]["git_sha"]
    md = (out / "study.md").read_text()
    assert md.index("## Summary") < md.index("## tiny-b1-fp32-nchw") and "fast_1.5" in md
    for png in ("study_speedup.png", "study_latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = history.read_text().splitlines()
    assert lines[0] == '{"earlier": "record"}' and len(lines) == 1 + 5  # appended; the skipped row is not
    rec = json.loads(lines[1])
    assert rec["git_sha"] == doc["env"]["git_sha"] and rec["machine"]["device_type"] == "cpu"
    assert rec["row"]["status"] and rec["row"]["timing"] and "samples_ms" not in rec["row"]


def test_study_schema_rejects_broken_documents():
    row = dict(id="c", provider="p", status="pass", timing="timed", device="cpu", note="", x_bytes=4,
               shape_name="tiny", batch=1, dtype="fp32", median_ms=1.0, samples_ms=[1.0])
    doc = {"schema": "cbam-triton-study", "schema_version": study.STUDY_SCHEMA_VERSION,
           "env": {k: "x" for k in study_report.ENV_KEYS}, "methodology": {"m": "d"}, "rows": [row],
           "summary": study.summarize([dict(row, speedup_vs_eager=1.0)])}
    assert study_report.validate_study(doc) == []
    assert study_report.validate_study(dict(doc, rows=[dict(row, samples_ms=[])]))
    assert study_report.validate_study(dict(doc, rows=[dict(row, status="fail_accuracy")]))
    assert study_report.validate_study(dict(doc, rows=[dict(row, timing="verified")]))
    assert study_report.validate_study(dict(doc, summary={"cpu": {"p": {"pass_rate": 1}}}))


def test_compiler_study_doc_agrees_with_the_committed_study():
    """docs/compiler-study.md's numbers block is generated from the committed study.json: regenerate, compare."""
    path = os.path.join(ROOT, "docs", "compiler-study.md")
    with open(path) as f:
        text = f.read()
    folder = study_doc.doc_source(text)
    with open(os.path.join(ROOT, folder, "study.json")) as f:
        doc = json.load(f)
    assert study_report.validate_study(doc) == []
    assert study_doc.generated_block(text) == study_doc.render_doc_block(doc, folder, ROOT)
