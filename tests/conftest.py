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
settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=5000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    import triton

    mode = "interpreter (TRITON_INTERPRET=1)" if DEVICE == "cpu" else "compiled"
    return f"cbam-triton tests: device={DEVICE}, triton {triton.__version__} {mode}, torch {torch.__version__}"


@pytest.fixture(scope="session")
def device() -> torch.device:
    if DEVICE != "cpu" and not torch.cuda.is_available():
        pytest.exit(f"CBAM_TEST_DEVICE={DEVICE} but CUDA is not available", returncode=2)
    return torch.device(DEVICE)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
