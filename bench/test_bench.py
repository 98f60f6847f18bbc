"""The benchmark's cases through pytest-benchmark: ``pytest bench/ --benchmark-only``.

On a GPU: the quick and ResNet-50 cases (fp16, batch 32 and 1) for eager, torch.compile and
cbam_triton, with a timer that synchronises the device. On a CPU-only machine: eager and
torch.compile on the quick cases (the Triton provider would run in the interpreter, which is not
worth timing; `python -m bench` verifies it there instead).
"""

from __future__ import annotations

import pytest
import torch

from bench import runner
from bench.suite import make_cases

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
if CUDA:
    CASES = make_cases(["tiny", "resnet50-s1", "resnet50-s4"], [1, 32], ["fp16"], ["nchw", "channels_last"])
    PROVIDERS = ["eager", "compile", "triton"]
else:
    CASES = make_cases(["tiny"], [2], ["fp32"], ["nchw", "channels_last"])
    PROVIDERS = ["eager", "compile"]


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _measure(benchmark, case, provider, built, rounds):
    benchmark.group = case.id
    benchmark.extra_info.update(case.as_dict(), provider=provider, compile_s=built.compile_s)

    def run() -> None:
        built.fn()
        _sync()

    benchmark.pedantic(run, warmup_rounds=3, rounds=rounds, iterations=1)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward(benchmark, case, provider):
    ref = runner.make_reference(case, DEVICE)
    x = runner.make_input(case, DEVICE)
    built = runner.build_provider(provider, ref, x)
    with torch.no_grad():
        expected = ref(x)
    ok, err = runner.check_output(built.fn(), expected, case.dtype)
    assert ok, f"{provider} differs from eager by {err:.3g}; not timed"
    _measure(benchmark, case, provider, built, rounds=20 if CUDA else 10)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", [c for c in CASES if c.batch > 1], ids=lambda c: c.id + "-train")
def test_train(benchmark, case, provider):
    """Forward + backward (train mode), checked against eager's output and input gradient first."""
    case = runner.Case(**{**{k: v for k, v in case.as_dict().items() if k != "id"}, "mode": "train"})
    ref = runner.make_reference(case, DEVICE).train()
    x = runner.make_input(case, DEVICE)
    g = runner.make_grad(case, DEVICE)
    built = runner.build_train_provider(provider, ref, x, g)
    expected = runner.build_train_provider("eager", ref, x, g).fn()
    ok, err = runner.check_output(built.fn(), expected, case.dtype, scaled=True)
    assert ok, f"{provider} differs from eager by {err:.3g}; not timed"
    _measure(benchmark, case, provider, built, rounds=20 if CUDA else 5)
