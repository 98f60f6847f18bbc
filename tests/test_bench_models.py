"""Network rows of the benchmark (bench/models.py) on the CPU: a tiny detection-style network end to
end — eager timed, triton and triton+compile verified in the interpreter, traffic shares consistent —
and the CLI's --models output (results.json/md, dashboard)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import models, report
from bench.__main__ import main as bench_main
from bench.dashboard import build_dashboard

TINY = "tiny-neck-cbam"


@pytest.fixture
def tiny_model(monkeypatch):
    """A 3-level neck with narrow widths (the rows' machinery, not the real sizes); CPU timings short."""
    spec = models.ModelSpec(TINY, lambda: models.NeckNet((8, 16, 32), 6), 64, (1,), 64, (1,), "test network")
    monkeypatch.setitem(models.MODELS, TINY, spec)
    monkeypatch.setattr(models, "CPU_BUDGET_S", 0.05)
    return models.make_model_cases([TINY], [2], ["fp32"], ["channels_last"])[0]


@pytest.fixture
def mini_model(monkeypatch):
    """conv -> CBAM -> conv: the least a compiler has to compile around a CBAM."""
    def build():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), models.CBAM(8), torch.nn.Conv2d(8, 4, 1))

    monkeypatch.setitem(models.MODELS, "mini-cbam", models.ModelSpec("mini-cbam", build, 32, (1,), 32, (1,), "test"))
    monkeypatch.setattr(models, "CPU_BUDGET_S", 0.05)
    return models.make_model_cases(["mini-cbam"], [2], ["fp32"], ["nchw"])[0]


def test_network_rows_check_time_and_split_the_traffic(tiny_model):
    def wrong(model, x):  # a provider whose network output is off by 1 %
        return models.Built(lambda: tuple(1.01 * t for t in model(x)), module=model)

    rows = models.run_model_case(tiny_model, ("eager", "triton"), torch.device("cpu"), extra_providers={"wrong": wrong})
    by = {r["provider"]: r for r in rows}
    assert (by["eager"]["status"], by["eager"]["timing"]) == ("pass", "timed") and by["eager"]["median_ms"] > 0
    assert (by["triton"]["status"], by["triton"]["timing"]) == ("pass", "verified"), by["triton"]
    assert by["triton"].get("median_ms") is None
    assert by["wrong"]["status"] == "fail_accuracy" and by["wrong"].get("median_ms") is None
    assert report.validate(report.make_document({k: "x" for k in report.REQUIRED_ENV}, {}, rows)) == []
    for p in ("eager", "triton"):
        r = by[p]
        assert r["kind"] == "model" and r["cbam_blocks"] == 3 and r["base_traffic_bytes"] < r["traffic_bytes"]
        # the marginal cost (network minus the CBAM-free network) is exactly the bytes inside the blocks
        assert r["cbam_traffic_bytes"] == r["cbam_attributed_bytes"] > 0
        assert 0 < r["cbam_traffic_share"] < 1 and r["cbam_vs_floor"] > 1
    # the kernels read x three times under the CPU's "stream" schedule, eager's ops many more
    assert by["triton"]["cbam_traffic_bytes"] < 0.75 * by["eager"]["cbam_traffic_bytes"]
    assert by["triton"]["base_traffic_bytes"] == by["eager"]["base_traffic_bytes"]


def test_triton_plus_compile_has_no_graph_break_and_counts_the_kernels(mini_model):
    rows = models.run_model_case(mini_model, ("triton+compile",), torch.device("cpu"))
    r = rows[0]
    assert (r["status"], r["timing"]) == ("pass", "verified"), r
    assert r["graph_breaks"] == 0 and r["graphs"] == 1 and r["recompiles"] == 0
    # inductor's count of the opaque operator was replaced by the kernels' own model
    assert r["cbam_kernel_bytes"] > 0 and r["traffic_bytes"] != r["bytes_accessed"]
    assert 0 < r["cbam_traffic_share"] < 1


@pytest.fixture
def mini_resnet(monkeypatch):
    """stem -> one official ResNet BasicBlock with CBAM -> head: the least the fused tail needs."""
    from dialects import BasicBlock

    def build():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1), BasicBlock(16, 16, use_cbam=True),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))

    monkeypatch.setitem(models.MODELS, "mini-resnet", models.ModelSpec("mini-resnet", build, 32, (1,), 32, (1,), "t"))
    monkeypatch.setattr(models, "CPU_BUDGET_S", 0.05)
    return models.make_model_cases(["mini-resnet"], [2], ["fp32"], ["channels_last"])[0]


def test_fused_tail_provider_moves_fewer_bytes_than_triton(mini_resnet, tiny_model, monkeypatch):
    rows = models.run_model_case(mini_resnet, ("eager", "triton", "triton-tail"), torch.device("cpu"))
    by = {r["provider"]: r for r in rows}
    assert (by["triton-tail"]["status"], by["triton-tail"]["timing"]) == ("pass", "verified"), by["triton-tail"]
    # the block's BatchNorm, addition and ReLU are inside the tail's launches: fewer bytes than the CBAM alone
    assert by["triton-tail"]["traffic_bytes"] < by["triton"]["traffic_bytes"] < by["eager"]["traffic_bytes"]
    assert by["triton-tail"]["base_traffic_bytes"] == by["eager"]["base_traffic_bytes"]
    # too large for the interpreter: launches planned and counted, not run (the traffic model)
    monkeypatch.setattr(models, "INTERPRETER_MAX_ELEMENTS", 0)
    modelled = models.run_model_case(mini_resnet, ("triton-tail",), torch.device("cpu"), shares=False)[0]
    assert modelled["status"] == "modelled" and modelled["traffic_bytes"] == by["triton-tail"]["traffic_bytes"]
    skipped = models.run_model_case(tiny_model, ("triton-tail",), torch.device("cpu"), shares=False)[0]
    assert skipped["status"] == "skipped" and "no ResNet block" in skipped["note"]


def test_cli_models_writes_network_rows_and_goals(mini_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # what main() sets, undone after the test
    with pytest.raises(SystemExit):
        bench_main(["--help"])
    assert "--models" in capsys.readouterr().out  # scripts/gpu_check.sh looks for it
    assert bench_main(["--models", "resnet51-cbam", "--out", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err
    out = tmp_path / "run"
    assert bench_main(["--models", "mini-cbam", "--batch", "1", "--providers", "eager", "triton", "triton-l2",
                       "--no-plots", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert report.validate(doc) == []
    assert {r["provider"] for r in doc["results"]} == {"eager", "triton"}  # triton-l2: blocks only
    assert all(r["kind"] == "model" for r in doc["results"]) and "targets" not in doc
    assert [v["status"] for v in doc["model_goals"]] == ["not measured"] * len(models.GOALS)
    md = (out / "results.md").read_text()
    assert "## Networks" in md and "CBAM traffic" in md and "mini-cbam-32px-b1-fp32-channels_last" in md
    page = build_dashboard([doc])
    assert "cbam_traffic_share" in page and "mini-cbam-32px" in page


def test_goals_judge_resnet50_fp16_batch32_rows():
    def row(provider, **kw):
        return dict(kind="model", shape_name="resnet50-cbam", dtype="fp16", batch=32, provider=provider,
                    status="ok", id="resnet50-cbam-224px-b32-fp16-channels_last", **kw)

    doc = {"env": {"device_type": "cuda"},
           "results": [row("triton+compile", speedup_vs_compile=1.2), row("triton", speedup_vs_eager=1.1,
                                                                           cbam_vs_floor=1.05)]}
    assert [v["status"] for v in models.evaluate_goals(doc)] == ["met", "missed", "met", "not measured"]
    tail = [dict(row("triton-tail+compile", speedup_vs_compile=1.1))]
    assert models.evaluate_goals({"env": {"device_type": "cuda"}, "results": tail})[3]["status"] == "missed"
    doc["results"] = [dict(r, batch=8) for r in doc["results"]]
    assert {v["status"] for v in models.evaluate_goals(doc)} == {"not measured"}
