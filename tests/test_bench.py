"""The benchmark harness on CPU: quick CLI run, schema, mismatch flagging, eager traffic model."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from bench import measure, report, runner, targets
from bench.dashboard import build_dashboard
from bench.suite import Case, make_cases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # (one layout: the outputs are the same files either way, and channels_last rows are tested below)
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--layouts", "nchw", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    return proc, out


def test_quick_cli_writes_every_output(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("results.json", "results.csv", "results.md", "latency.png", "speedup.png", "bandwidth.png",
                 "dashboard.html"):
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "results.json").read_text())
    assert report.validate(doc) == []
    assert doc["env"]["git_sha"] and doc["env"]["torch"] == torch.__version__
    for png in ("latency.png", "speedup.png", "bandwidth.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(doc["results"])
    md = (out / "results.md").read_text()
    assert md.startswith("# cbam-triton benchmark") and md.count("\n|") >= len(doc["results"])
    html = (out / "dashboard.html").read_text()
    assert "<script" in html and "http" not in html.split("<script", 1)[1]  # self-contained
    by_provider = {(r["id"], r["provider"]): r for r in doc["results"]}
    for (_case_id, provider), r in by_provider.items():
        if provider in ("eager", "compile", "compile-max-autotune"):
            assert (r["status"], r["timing"]) == ("pass", "timed") and r["median_ms"] > 0, r
        if provider.startswith("triton") and r["mode"] == "forward":  # verified in the interpreter, not timed
            assert (r["status"], r["timing"]) == ("pass", "verified") and r.get("median_ms") is None, r
            # the traffic model per schedule: the L2 schedule reads x once from DRAM, stream three times
            expect = {"triton-l2": 2, "triton": 4}[provider]  # on a CPU "auto" resolves to "stream"
            assert expect <= r["dram_model_x"] <= expect + 0.6, r
            assert r["schedule"] == {"triton-l2": "l2", "triton": "stream"}[provider]
    train = [r for r in doc["results"] if r["mode"] == "train"]
    assert {r["provider"] for r in train if r["status"] != "skipped"} == {"eager", "compile", "compile-max-autotune",
                                                                          "triton"}
    assert all(r["id"].endswith("-train") for r in train)
    assert "GPU timings need a CUDA device" in proc.stdout
    # the speed targets are GPU timings: on a CPU run every one is "not measured", and says why
    assert [v["status"] for v in doc["targets"]] == ["not measured"] * len(targets.TARGETS)
    assert all("cpu run" in v["why"] for v in doc["targets"])
    assert "## Speed targets" in md and "speed targets" in proc.stdout


def test_train_mode_checks_output_and_input_gradient():
    """Forward + backward: eager timed, Triton verified; traffic and saved bytes below eager's; a
    provider with a wrong gradient is flagged and not timed."""
    case = Case("tiny", 2, 64, 9, 10, 4, "fp32", "channels_last", "train")

    def wrong_grad(ref, x, g):
        step = runner.build_train_provider("eager", ref, x, g).fn
        return runner.Built(lambda: (lambda out, dx: (out, dx * 1.05))(*step()))

    rows = runner.run_case(case, ("eager", "triton"), torch.device("cpu"), extra_providers={"wrong": wrong_grad})
    by = {r["provider"]: r for r in rows}
    assert (by["eager"]["status"], by["eager"]["timing"]) == ("pass", "timed") and by["eager"]["median_ms"] > 0
    assert (by["triton"]["status"], by["triton"]["timing"]) == ("pass", "verified"), by["triton"]
    assert by["wrong"]["status"] == "fail_accuracy" and by["wrong"].get("median_ms") is None
    assert by["wrong"]["timing"] == "not_measured"
    assert by["triton"]["saved_x"] < 1.5 < 2 <= by["eager"]["saved_x"]  # x + small maps vs x, x * Mc, ...
    assert by["triton"]["traffic_x"] < by["eager"]["traffic_x"] / 2


def test_forward_only_providers_are_skipped_in_train_mode():
    case = Case("tiny", 1, 8, 5, 6, 2, "fp32", "nchw", "train")
    rows = runner.run_case(case, ("eager", "triton-cudagraph"), torch.device("cpu"))
    skipped = next(r for r in rows if r["provider"] == "triton-cudagraph")
    assert skipped["status"] == "skipped" and "forward-only" in skipped["note"]


def test_schema_rejects_broken_documents():
    case = make_cases(["tiny"], [1], ["fp32"], ["nchw"])[0]
    row = dict(case.as_dict(), provider="eager", status="ok", x_bytes=case.x_bytes(), note="", median_ms=1.0)
    env = {k: "x" for k in report.REQUIRED_ENV}
    good = report.make_document(env, {}, [row])
    assert report.validate(good) == []
    assert report.validate(dict(good, schema_version=0))
    assert report.validate(dict(good, results=[]))
    assert report.validate(dict(good, results=[dict(row, median_ms=None)]))  # ok without a timing
    assert report.validate(dict(good, results=[dict(row, status="mismatch")]))  # mismatch with a timing
    assert report.validate(dict(good, results=[dict(row, batch="1")]))
    # schema 2: status and timing
    new = dict(row, status="pass", timing="timed")
    assert report.validate(dict(good, schema_version=2, results=[new])) == []
    assert report.validate(dict(good, results=[dict(new, timing="verified")]))  # verified with a timing
    assert report.validate(dict(good, results=[dict(new, status="fail_accuracy")]))  # a failure timed
    assert report.validate(dict(good, results=[dict(new, timing="fast")]))
    assert report.validate(dict(good, results=[dict(new, status="fail_to_run", timing="not_measured",
                                                     median_ms=None)])) == []
    bad_env = copy.deepcopy(good)
    del bad_env["env"]["git_sha"]
    assert report.validate(bad_env)


def test_wrong_provider_is_flagged_and_not_timed():
    case = Case("tiny", 1, 8, 5, 6, 2, "fp32", "nchw")

    def wrong(ref, x):
        return runner.Built(lambda: ref(x) * 1.01)

    rows = runner.run_case(case, ("eager",), torch.device("cpu"), extra_providers={"wrong": wrong})
    bad = next(r for r in rows if r["provider"] == "wrong")
    assert bad["status"] == "fail_accuracy" and bad.get("median_ms") is None and "not timed" in bad["note"]
    assert next(r for r in rows if r["provider"] == "eager")["timing"] == "timed"


def test_eager_traffic_model_matches_hand_count():
    """Eager CBAM on (1, 4, 3, 5): every big-tensor op counted by hand."""
    case = Case("tiny", 1, 4, 3, 5, 2, "fp32", "nchw")
    ref = runner.make_reference(case, torch.device("cpu"))
    x = runner.make_input(case, torch.device("cpu"))
    stats = measure.count_traffic(lambda: ref(x))
    n, c, h, w, hid = 1, 4, 3, 5, 2
    f = 4  # bytes per fp32
    X, NC, NHW = n * c * h * w * f, n * c * f, n * h * w * f
    mlp = (NC + hid * c * f + hid * f + n * hid * f) + 2 * n * hid * f + (n * hid * f + c * hid * f + NC + NC)
    expected = (
        (X + NC) + (X + NC)          # mean, amax over H*W
        + 2 * mlp + 3 * NC           # shared MLP twice (addmm, relu, addmm), add
        + 2 * NC                     # sigmoid
        + (X + NC + X)               # x * Mc
        + (X + NHW) + (X + NHW)      # amax, mean over C
        + (2 * NHW + 2 * NHW)        # cat
        + (2 * NHW + 2 * 49 * f + NHW)  # conv (2 -> 1, 7x7, no bias)
        + (NHW + 4 * f + NHW)        # batch norm in eval (+ weight, bias, running stats) ...
        + (2 * NHW)                  # sigmoid
        + (X + NHW + X)              # x1 * Ms
    )
    # the hand count above and the model agree to the byte, except BN's internal outputs (saved mean/invstd)
    assert abs(stats.bytes_total - expected) <= 64, (stats.bytes_total, expected, stats.ops)
    assert stats.triton_launches == 0
    full_size_ops = [op for op in stats.ops if op.split(".")[1] in ("mean", "amax", "mul")]
    assert len(full_size_ops) == 6  # 6 reads of x-sized tensors; 2 of them (the muls) also write one


def test_dashboard_compares_several_files_and_rejects_invalid():
    case = make_cases(["tiny"], [1], ["fp32"], ["nchw"])[0]
    row = dict(case.as_dict(), provider="eager", status="ok", x_bytes=case.x_bytes(), note="", median_ms=1.5)
    docs = [report.make_document({**{k: "x" for k in report.REQUIRED_ENV}, "device_name": name, "date": date},
                                 {}, [row]) for name, date in (("H100", "2026-11-01"), ("A100", "2026-11-20"))]
    page = build_dashboard(docs)
    assert "H100" in page and "A100" in page and "2026-11-20" in page
    with pytest.raises(ValueError, match="not a valid result document"):
        build_dashboard([{"schema_version": 1}])


def test_unknown_case_choices_raise():
    with pytest.raises(ValueError, match="unknown shape"):
        make_cases(["resnet51"], [1], ["fp32"], ["nchw"])
    with pytest.raises(ValueError, match="unknown dtype"):
        make_cases(["tiny"], [1], ["fp8"], ["nchw"])
    with pytest.raises(ValueError, match="unknown mode"):
        make_cases(["tiny"], [1], ["fp32"], ["nchw"], ["backward"])


_NCU_HEAD = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
             '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')


def _ncu_row(kid: str, kernel: str, metric: str, unit: str, value: str) -> str:
    return (f'"{kid}","1234","python3","127.0.0.1","{kernel}","1","7","(128, 1, 1)","(784, 1, 1)","0","9.0",'
            f'"Command line profiler metrics","{metric}","{unit}","{value}"')


NCU_CSV = "\n".join([
    "==PROF== Connected to process 1234 (/usr/bin/python3)",
    '==PROF== Profiling "channel_pool_mlp_kernel" - 0: 0%....50%....100% - 1 pass',
    "program output line",
    _NCU_HEAD,
    _ncu_row("0", "channel_pool_mlp_kernel", "dram__bytes_read.sum", "Mbyte", "51.38"),
    _ncu_row("0", "channel_pool_mlp_kernel", "dram__bytes_write.sum", "Kbyte", "262.14"),
    _ncu_row("1", "gate_conv_kernel", "dram__bytes_read.sum", "byte", "1,024"),
    _ncu_row("1", "gate_conv_kernel", "dram__bytes_write.sum", "Gbyte", "0.05138"),
]) + "\n"


def test_ncu_csv_is_summed_in_bytes():
    from bench import ncu

    got = ncu.parse_csv(NCU_CSV)
    assert got == {"read": 51_380_000 + 1024, "write": 262_140 + 51_380_000, "kernels": 2}
    with pytest.raises(ValueError, match="header"):
        ncu.parse_csv("==PROF== nothing profiled\n")
    with pytest.raises(ValueError, match="unit"):
        ncu.parse_csv(NCU_CSV.replace('"Kbyte"', '"parsec"'))


def _target_rows(triton_ms: float, graph_ms: float, ncu_x: float | None) -> list[dict]:
    """fp16 forward rows of the four ResNet-50 shapes at batch 32 and 1 (eager 1 ms everywhere)."""
    rows = []
    for shape in targets.RESNET50:
        for batch in (32, 1):
            case_id = f"{shape}-b{batch}-fp16-channels_last"
            base = {"id": case_id, "shape_name": shape, "batch": batch, "dtype": "fp16", "mode": "forward",
                    "status": "ok"}
            times = {"eager": 1.0, "compile-max-autotune": 0.45, "triton": triton_ms, "triton-cudagraph": graph_ms,
                     "triton-l2": triton_ms}
            for provider, ms in times.items():
                row = dict(base, provider=provider, median_ms=ms, speedup_vs_eager=1.0 / ms)
                if provider == "triton":
                    row["frac_copy_bw"] = 0.2 / ms
                if provider == "triton-l2" and ncu_x is not None:
                    row["ncu_dram_x"] = ncu_x
                rows.append(row)
    return rows


def test_targets_met_missed_and_not_measured(tmp_path):
    doc = {"env": {"device_type": "cuda"}, "results": _target_rows(0.25, 0.3, 2.1)}
    verdicts = {v["target"]: v for v in targets.evaluate(doc)}
    assert [v["status"] for v in verdicts.values()] == ["met"] * 5
    assert all(len(v["cases"]) == 4 for v in verdicts.values())
    assert verdicts["forward >= 1.5x torch.compile(max-autotune-no-cudagraphs)"]["worst"] == pytest.approx(1.8)
    # 0.35 ms: 2.86x eager and 1.29x compile (missed), 0.57 of copy bandwidth (missed); graphs 0.34 ms missed
    doc["results"] = _target_rows(0.35, 0.34, 2.6)
    status = {v["target"]: v["status"] for v in targets.evaluate(doc)}
    assert set(status.values()) == {"missed"}
    # rows of another dtype or batch are not judged; no ncu column -> that target is not measured
    doc["results"] = [dict(r, dtype="fp32") for r in _target_rows(0.25, 0.3, None)]
    assert {v["status"] for v in targets.evaluate(doc)} == {"not measured"}
    doc["results"] = _target_rows(0.25, 0.3, None)
    last = targets.evaluate(doc)[-1]
    assert last["status"] == "not measured" and "--ncu" in last["why"]
    # the CLI: exit 1 when a target is missed, 2 on an unreadable file
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"env": {"device_type": "cuda"}, "results": _target_rows(0.35, 0.34, 2.6)}))
    proc = subprocess.run([sys.executable, "-m", "bench", "targets", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "missed" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "bench", "targets", str(tmp_path / "absent.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cannot read" in proc.stderr


def test_host_time_cli_measures_every_configuration_and_restores_state():
    from triton.runtime.interpreter import InterpretedFunction

    from bench import host
    from cbam_triton import fastpath, ops
    from cbam_triton.launchers import forward as fwd

    def settings():
        return (InterpretedFunction.run, fastpath.ENABLED, fwd.PlanCache.SIZE, ops.direct_call_ok,
                torch.is_grad_enabled())

    before = settings()
    unit, got = host.measure_all(((1, 8, 4, 4),), calls=3, rounds=1)
    row = got[(1, 8, 4, 4)]
    assert unit > 0 and list(row) == list(host.CONFIGS) and all(v > 0 for v in row.values())
    assert settings() == before
    proc = subprocess.run([sys.executable, "-m", "bench.host", "--shape", "1", "0", "4", "4"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--shape" in proc.stderr
