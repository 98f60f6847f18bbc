"""The GPU acceptance run (bench/gpu_check.py, scripts/gpu_check.sh) and the README regenerator
(bench/readme.py): budgets, cutting and killing steps, failing tools, outputs. Cheap: phases are
driven in-process with stub commands and tiny budgets; one end-to-end ``--dry`` call runs only the
env and tests phases (CI runs the whole ``--dry`` separately)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from bench import gpu_check, junit, readme, report, sanitizer
from bench.gpu_check import Context

ROOT = gpu_check.ROOT


def _ctx(tmp_path, dry=False, **budgets) -> Context:
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    b = gpu_check.budgets(dry, environ={})
    b.update(budgets)
    return Context(out_dir=str(out), work_dir=str(work), dry=dry, budgets=b)


def _fake_tools(tmp_path, monkeypatch, **scripts: str) -> None:
    """Executables named like the keys (``_`` for ``-``) on PATH, ahead of any real one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name.replace("_", "-")
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


# ------------------------------------------------------------------------------------------ budgets
def test_budgets_from_the_environment():
    b = gpu_check.budgets(False, {"CBAM_GPU_CHECK_BUDGET_TESTS": "5", "CBAM_GPU_CHECK_BUDGET_BENCH_MAX_AUTOTUNE": "7.5",
                                  "CBAM_GPU_CHECK_BUDGET_BENCH": "100"})
    assert (b["tests"], b["bench.max-autotune"], b["bench"]) == (5, 7.5, 100)
    assert gpu_check.budgets(True, {})["total"] < 120  # --dry must end within CI's two minutes
    # the GPU defaults end within 8 minutes: env, sanitizer beside tests, the bench (the rest), report
    assert gpu_check.budgets(False, {})["total"] <= 460
    with pytest.raises(ValueError, match="CBAM_GPU_CHECK_BUDGET_TESTS"):
        gpu_check.budgets(False, {"CBAM_GPU_CHECK_BUDGET_TESTS": "soon"})
    with pytest.raises(ValueError, match="CBAM_GPU_CHECK_BUDGET_ENV"):
        gpu_check.budgets(False, {"CBAM_GPU_CHECK_BUDGET_ENV": "-1"})


def test_steps_name_known_shapes_providers_and_flags():
    """The bench steps only ask for what `python -m bench` knows (catches a rename in suite/runner)."""
    from bench.runner import PROVIDERS_GPU
    from bench.suite import SHAPES

    for step in gpu_check.STEPS:
        for call in step.calls:
            for args in (f"{step.args} {call}".split(), (step.dry_args or "").split()):
                for flag, known in (("--shapes", SHAPES), ("--providers", PROVIDERS_GPU)):
                    if flag in args and step.name != "models":
                        i = args.index(flag) + 1
                        values = []
                        while i < len(args) and not args[i].startswith("--"):
                            values.append(args[i])
                            i += 1
                        assert values and set(values) <= set(known), (step.name, flag, values)
        assert f"bench.{step.name}" in gpu_check.DEFAULT_BUDGETS
    files, excluded = gpu_check.test_files(dry=False)
    assert "tests/test_gpu_check.py" in excluded and "tests/test_gpu_check.py" not in files
    assert files[0] == "tests/test_fused_forward.py" and "tests/test_backward.py" in files


# ---------------------------------------------------------------------------------------- run_step
def test_run_step_cuts_at_its_budget_and_kills_the_process_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(60)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); "
            "time.sleep(60)")
    ctx = _ctx(tmp_path)
    t0 = time.monotonic()
    step = gpu_check.run_step(ctx, "bench/slow", [sys.executable, "-c", code], 2.0, str(tmp_path / "slow.log"))
    assert time.monotonic() - t0 < 10
    assert step.status == "timeout" and "cut at its 2 s budget" in step.note
    assert "started" in (tmp_path / "slow.log").read_text()
    pid = int(pid_file.read_text())
    for _ in range(50):  # the grandchild (think: ncu's target, inductor's compile workers) is gone too
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the step's grandchild survived the cut")


def test_run_step_sends_sigint_first_so_pytest_can_report(tmp_path):
    code = ("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print('summary printed')\n"
            "    raise SystemExit(2)")
    ctx = _ctx(tmp_path)
    step = gpu_check.run_step(ctx, "tests", [sys.executable, "-c", code], 3.0, str(tmp_path / "t.log"),
                              interrupt_before_s=1.5)
    assert step.status == "timeout" and "SIGINT first" in step.note and step.rc == 2
    assert "summary printed" in (tmp_path / "t.log").read_text()


# ---------------------------------------------------------------------------------------- sanitizer
def test_classify_sanitizer_output():
    assert sanitizer.classify_sanitizer("...\n========= ERROR SUMMARY: 0 errors\n", 0, False)[0] == "clean"
    status, errors, note = sanitizer.classify_sanitizer(
        "========= Invalid __global__ read of size 2 bytes\n=========     at gate_kernel+0x1a0\n"
        "========= ERROR SUMMARY: 3 errors\n", 97, False)
    assert (status, errors) == ("errors", 3) and "Invalid __global__ read" in note
    assert sanitizer.classify_sanitizer("========= Error: Device not supported\n========= ERROR SUMMARY: 0 errors\n",
                                        1, False)[0] == "unavailable"
    assert sanitizer.classify_sanitizer("sh: compute-sanitizer: cannot execute\n", 126, False)[0] == "unavailable"
    assert sanitizer.classify_sanitizer("Traceback ...\n========= ERROR SUMMARY: 0 errors\n", 1,
                                        False)[0] == "driver-failed"
    assert sanitizer.classify_sanitizer("", None, True)[0] == "timeout"


def test_sanitizer_phase_with_failing_and_hanging_fake_tools(tmp_path, monkeypatch):
    """A compute-sanitizer that cannot run (memcheck), finds errors (racecheck) and hangs (synccheck):
    the phase still ends, says what it could not check, and counts only real errors as failures."""
    _fake_tools(tmp_path, monkeypatch, compute_sanitizer="""
case "$2" in
  memcheck) echo "========= Error: Target application terminated before first instrumented API call"; exit 1;;
  racecheck) echo "========= Error: Race reported between Write access at gate_kernel+0x10"
             echo "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)"
             echo "========= ERROR SUMMARY: 1 error"; exit 97;;
  *) sleep 30;;
esac""")
    monkeypatch.setattr(gpu_check, "DRIVER", ("-c", "print('driver: 1 checks, 0 failed')"))
    ctx = _ctx(tmp_path, **{"sanitizer.synccheck": 1.5})
    t0 = time.monotonic()
    gpu_check.phase_sanitizer(ctx, 60)
    assert time.monotonic() - t0 < 20
    runs = {r["tool"]: r for r in ctx.results["sanitizer"]["runs"]}
    assert runs["driver (plain run)"]["status"] == "ok"
    assert (runs["memcheck"]["result"], runs["racecheck"]["result"], runs["synccheck"]["result"]) == \
        ("unavailable", "errors", "timeout")
    assert ctx.results["sanitizer"]["status"] == "FAILED"
    assert len(ctx.failures) == 1 and "racecheck" in ctx.failures[0]
    assert any("memcheck" in s and "could not run" in s for s in ctx.skipped)
    assert any("synccheck" in s and "cut" in s for s in ctx.skipped)
    text = (tmp_path / "out" / "sanitizer.txt").read_text()
    assert "Target application terminated" in text and "ERROR SUMMARY: 1 error" in text


# --------------------------------------------------------------------------------------------- ncu
def test_failing_fake_ncu_is_probed_and_the_step_skipped(tmp_path, monkeypatch):
    _fake_tools(tmp_path, monkeypatch, ncu='echo "==ERROR== ERR_NVGPUCTRPERM - The user does not have permission"; '
                                           'exit 1')
    ctx = _ctx(tmp_path)
    ctx.steps = ("ncu",)
    gpu_check.phase_bench(ctx, 60)
    step = next(s for s in ctx.results["bench"]["steps"] if s["name"] == "ncu")
    assert step["status"] == "skipped" and step["calls"] == [] and "ERR_NVGPUCTRPERM" in step["probe"]
    assert [s.name for s in ctx.ran] == ["bench/ncu-probe"]  # no benchmark call after a failed probe
    assert any(s.startswith("bench/ncu:") and "performance counters" in s for s in ctx.skipped)
    assert ctx.failures == [] and ctx.results["bench_doc"]["results"] == []
    _fake_tools(tmp_path, monkeypatch, ncu="echo 'segfault'; exit 139")
    ok, why = gpu_check.ncu_probe(_ctx(tmp_path), 30)
    assert not ok and "139" in why


# -------------------------------------------------------------------------------------- tests phase
def test_parse_junit_of_a_real_pytest_run(tmp_path):
    """pytest's own JUnit XML: passed, failed, errored, skipped and xfailed tests, a test class, a file
    that reported nothing."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef broken():\n    raise RuntimeError('CUDA error')\n\n"
        "@pytest.mark.parametrize('p', [1, 2])\ndef test_x(p):\n    assert p\n\n"
        "def test_y():\n    assert 1 == 2, 'boom'\n\ndef test_v(broken):\n    pass\n\n"
        "@pytest.mark.skip(reason='needs a CUDA device')\ndef test_z():\n    pass\n\n"
        "@pytest.mark.xfail\ndef test_w():\n    assert 0\n\n"
        "class TestK:\n    def test_k(self):\n        assert 0\n")
    xml = tmp_path / "out.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", "tests"],
                   cwd=tmp_path, capture_output=True, timeout=60)
    got = junit.parse_junit(str(xml))
    assert got["totals"] == {"passed": 2, "failed": 2, "error": 1, "skipped": 1, "xfailed": 1}
    assert got["files_reported"] == ["tests/test_a.py"]
    assert got["failures"][0].startswith("FAILED tests/test_a.py::test_y - AssertionError: boom")
    assert any(f.startswith("ERROR tests/test_a.py::test_v") for f in got["failures"])
    assert any(f.startswith("FAILED tests/test_a.py::TestK::test_k") for f in got["failures"])
    assert junit.parse_junit(str(tmp_path / "missing.xml")) == {"totals": {}, "files_reported": [],
                                                                     "failures": []}


@pytest.fixture(scope="module")
def dry_cut_run(tmp_path_factory):
    """`scripts/gpu_check.sh --dry --phases tests` with a 3 s tests budget and failing fake ncu and
    compute-sanitizer on PATH: (exit status, stdout, output folder)."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in ("ncu", "compute-sanitizer"):
        (bin_dir / tool).write_text("#!/bin/sh\necho broken >&2\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", CBAM_GPU_CHECK_BUDGET_TESTS="3",
               PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)
    out = tmp / "out"
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), "--dry", "--phases", "tests",
                           str(out)], capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp))
    return proc.returncode, proc.stdout + proc.stderr, out


def test_a_phase_over_its_budget_is_cut_and_the_script_still_reports(dry_cut_run):
    rc, output, out = dry_cut_run
    assert rc == 0, output  # a cut phase is reported, not failed
    assert "SKIPPED tests: cut at its 3 s budget" in output and "done in" in output
    summary = (out / "summary.md").read_text()
    assert "tests: cut at its 3 s budget" in summary and "| sanitizer | not selected |" in summary
    assert "tools: compute-sanitizer yes, ncu yes" in output  # the fakes were seen, and nothing broke
    doc = json.loads((out / "results.json").read_text())
    assert doc["gpu_check"]["phases"]["tests"]["status"] == "timeout"
    assert any(s.startswith("tests:") for s in doc["gpu_check"]["skipped"])


def test_output_folder_holds_the_eight_files_none_over_16_mb(dry_cut_run, tmp_path):
    _, _, out = dry_cut_run
    assert sorted(os.listdir(out)) == sorted(gpu_check.FILES) and len(gpu_check.FILES) <= 8
    assert all(os.path.getsize(out / name) < 16 * 2**20 for name in gpu_check.FILES)
    assert gpu_check.check_folder(str(out)) == []
    (tmp_path / "extra.txt").write_text("x")
    with open(tmp_path / "results.json", "wb") as f:
        f.truncate(17 * 2**20)  # sparse: costs no disk
    problems = gpu_check.check_folder(str(tmp_path))
    assert any("summary.md missing" in p for p in problems) and any("over 16 MB" in p for p in problems)


# ----------------------------------------------------------------------------------- merge + readme
def _row(id_, provider, ms=None, status="ok", **kw):
    return dict(id=id_, shape_name="resnet50-s1", batch=32, channels=256, height=56, width=56, dtype="fp16",
                layout="channels_last", mode="forward", provider=provider, status=status, x_bytes=100, note="",
                median_ms=ms, **kw)


def test_merge_documents_fills_fields_and_recomputes_speedups():
    env = {"date": "2026-12-01T00:00:00+00:00", "python": "3.12", "torch": "2.11", "triton": "3.6",
           "device_type": "cuda", "device_name": "NVIDIA H200", "git_sha": "abc"}
    a = {"env": env, "config": {"timer": "do_bench"}, "results": [
        _row("c1", "eager", 4.0, speedup_vs_eager=1.0), _row("c1", "triton-l2", 1.0, speedup_vs_eager=4.0)]}
    b = {"env": env, "config": {}, "results": [
        _row("c1", "triton-l2", 1.1, ncu_dram_x=2.05), _row("c1", "compile-max-autotune", 2.0)]}
    doc = report.merge_documents([("triton/1", a), ("ncu/1", b)], env)
    rows = {r["provider"]: r for r in doc["results"]}
    assert len(doc["results"]) == 3 and report.validate(doc) == []
    assert rows["triton-l2"]["median_ms"] == 1.0 and rows["triton-l2"]["ncu_dram_x"] == 2.05
    assert rows["compile-max-autotune"]["speedup_vs_eager"] == 2.0  # against the eager row of another call
    assert rows["triton-l2"]["step"] == "triton/1"
    verdicts = {v["target"]: v for v in doc["targets"]}
    dram = verdicts["DRAM traffic ~ 2|x| (ncu, L2 schedule, <= 2.25|x|)"]
    assert dram["status"] == "met" and dram["cases"] == [{"id": "c1", "value": 2.05, "met": True}]
    empty = report.merge_documents([], env)
    assert empty["results"] == [] and empty["env"]["device_name"] == "NVIDIA H200"


def test_readme_block_is_generated_from_the_folder_it_names(tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text[text.index(readme.BEGIN):text.index(readme.END)]
    folder = block.split("`bench/results/")[1].split("/`")[0]
    assert readme.main([os.path.join(ROOT, "bench", "results", folder), "--check"]) == 0
    assert "| case | provider | status |" in readme.render(os.path.join(ROOT, "bench", "results", folder))
    with pytest.raises(ValueError, match="exactly one"):
        readme.replace_block("no markers here", "x")
    (tmp_path / "README.md").write_text(f"intro\n{readme.BEGIN}\nold\n{readme.END}\nafter\n")
    assert readme.main([os.path.join(ROOT, "bench", "results", folder), "--readme", str(tmp_path / "README.md")]) == 0
    new = (tmp_path / "README.md").read_text()
    assert new.startswith("intro\n") and new.endswith("after\n") and "old" not in new and "Measured " in new


def test_readme_block_of_an_acceptance_folder(dry_cut_run):
    _, _, out = dry_cut_run
    block = readme.render(str(out))
    assert "GPU acceptance run (`bash scripts/gpu_check.sh --dry`, on a CPU)" in block
    # how many tests finish within the 3 s budget depends on the machine's load: any count, cut
    assert re.search(r"tests: \d+ passed, \d+ failed, \d+ skipped of \S+ collected \(cut at the budget\)", block), \
        block
    assert "(no benchmark rows in this folder)" in block
