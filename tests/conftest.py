"""Test setup: run the real Triton kernels through Triton's CPU interpreter.

``TRITON_INTERPRET=1`` must be set before ``triton`` is imported, so it is set here, at the top
of the first module pytest imports. Set ``CBAM_TEST_DEVICE=cuda`` to run the same tests on a GPU
with compiled kernels instead (the interpreter is then left off).
"""

import os

DEVICE = os.environ.get("CBAM_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# fuzzing profiles: `ci` (default, bounded and reproducible) and `long` (--hypothesis-profile=long)
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=5000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    import triton

    mode = "interpreter (TRITON_INTERPRET=1)" if DEVICE == "cpu" else "compiled"
    return f"cbam-triton tests: device={DEVICE}, triton {triton.__version__} {mode}, torch {torch.__version__}"


if DEVICE == "cpu":
    from interpreter_speedup import install  # noqa: E402

    install()


@pytest.fixture(scope="session")
def device() -> torch.device:
    if DEVICE != "cpu" and not torch.cuda.is_available():
        pytest.exit(f"CBAM_TEST_DEVICE={DEVICE} but CUDA is not available", returncode=2)
    return torch.device(DEVICE)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------------
# The ahead-of-time compile gate (tests/test_aot_compile.py) is the longest single job of the suite
# (hundreds of compiles). When the whole suite (or that file) runs on the CPU, the controlling pytest
# process starts it in the background at once, so it overlaps every other test whatever order
# pytest-xdist hands out the files in; the test then waits for its result.
AOT_FILE = "test_aot_compile.py"


def _aot_command(out_json: str) -> list[str]:
    import sys

    archs = os.environ.get("CBAM_AOT_ARCHS", "90").split()
    extra = os.environ.get("CBAM_AOT_OPTIONS", "").split()
    return [sys.executable, "-m", "cbam_triton.tools.kernel_report", "--check", "--quiet", "--json", out_json,
            "--arch", *archs, *extra]


def pytest_configure(config):
    if hasattr(config, "workerinput") or DEVICE != "cpu" or os.environ.get("CBAM_AOT_EARLY_DIR"):
        return  # an xdist worker, a GPU run, or already started
    args = [a for a in config.args if not a.startswith("-")]
    wanted = not args or any(a.rstrip("/").endswith(("tests", AOT_FILE)) or AOT_FILE in a for a in args)
    keyword = config.getoption("keyword", "") or ""
    if not wanted or config.getoption("collectonly", False) or (keyword and "aot" not in keyword.lower()):
        return  # a subset that can't include the compile gate: don't start it
    import subprocess
    import tempfile

    folder = tempfile.mkdtemp(prefix="cbam-aot-")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = " ".join(f"'{c}'" for c in _aot_command(os.path.join(folder, "report.json")))
    script = f"{cmd} > '{folder}/log' 2>&1; echo $? > '{folder}/rc.tmp'; mv '{folder}/rc.tmp' '{folder}/rc'"
    config._cbam_aot = subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True)
    os.environ["CBAM_AOT_EARLY_DIR"] = folder  # inherited by the xdist workers started after this


def pytest_unconfigure(config):
    proc = getattr(config, "_cbam_aot", None)
    if proc is not None and proc.poll() is None:  # the run ended early (-x, Ctrl-C): stop compiling
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
