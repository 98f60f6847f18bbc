"""The chunking rule of the fused forward's schedules, against fake device properties (no GPU)."""

from __future__ import annotations

import types

import pytest
import torch

from cbam_triton import schedule as sched
from cbam_triton.schedule import l2_budget, plan_schedule

MIB = 1 << 20
H100_L2 = 50 * MIB


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch.cuda.get_device_properties / current_device of a fake GPU with a settable L2 size."""
    props = types.SimpleNamespace(L2_cache_size=H100_L2, multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda idx=None: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(sched, "_L2_SIZE", {})
    monkeypatch.delenv(sched.L2_ENV, raising=False)
    return props


def test_budget_is_a_fraction_of_the_device_l2(fake_gpu):
    assert l2_budget(torch.device("cuda", 0)) == int(H100_L2 * sched.L2_FRACTION)
    assert l2_budget(torch.device("cuda", 0), l2_cache_bytes=40 * MIB) == 20 * MIB  # A100-40GB
    assert l2_budget(torch.device("cuda", 0), l2_budget_bytes=1234) == 1234     # explicit wins


def test_budget_env_override_and_errors(fake_gpu, monkeypatch):
    monkeypatch.setenv(sched.L2_ENV, str(8 * MIB))
    assert l2_budget(torch.device("cuda", 0)) == 8 * MIB
    assert l2_budget(torch.device("cpu")) == 8 * MIB  # also gives the interpreter a budget
    monkeypatch.setenv(sched.L2_ENV, "lots")
    with pytest.raises(ValueError, match=sched.L2_ENV):
        l2_budget(torch.device("cuda", 0))
    monkeypatch.setenv(sched.L2_ENV, "-5")
    with pytest.raises(ValueError, match=sched.L2_ENV):
        l2_budget(torch.device("cuda", 0))


def test_no_budget_without_a_gpu(monkeypatch):
    monkeypatch.delenv(sched.L2_ENV, raising=False)
    assert l2_budget(torch.device("cpu")) is None


def test_device_without_l2_size(fake_gpu):
    fake_gpu.L2_cache_size = 0
    assert l2_budget(torch.device("cuda", 0)) is None
    assert plan_schedule(32, MIB, "auto", None).kind == "stream"


# ResNet-50 stage shapes, fp16, batch 32, on an H100 (25 MiB budget)
@pytest.mark.parametrize("c,hw,expect_chunks", [
    (256, 56, 2),     # 1.53 MiB a sample -> 16 per chunk -> 2 chunks of 16
    (512, 28, 1),     # 0.77 MiB -> 32 fit
    (1024, 14, 1),
    (2048, 7, 1),
    (64, 128, 3),     # small C, large H*W: 2 MiB a sample -> 12 per chunk -> 3 chunks of 11
])
def test_resnet50_shapes_on_an_h100(fake_gpu, c, hw, expect_chunks):
    sample = c * hw * hw * 2
    budget = l2_budget(torch.device("cuda", 0))
    s = plan_schedule(32, sample, "auto", budget)
    assert s.kind == "l2" and s.hints
    assert s.chunk * sample <= budget  # a chunk of x fits the budget
    assert s.num_chunks == expect_chunks
    if c == 64:
        assert s.chunk == 11
    chunks = s.chunks(32)
    assert chunks[0][0] == 0 and chunks[-1][1] == 32 and len(chunks) == s.num_chunks
    assert all(b == c2 for (_, b), (c2, _) in zip(chunks, chunks[1:]))  # contiguous, no overlap


def test_chunks_are_balanced():
    s = plan_schedule(10, 100, "l2", budget=400)  # 4 fit -> 3 chunks -> 4, 4, 2 would be unbalanced
    assert (s.num_chunks, s.chunk) == (3, 4)
    assert s.chunks(10) == [(0, 4), (4, 8), (8, 10)]
    s = plan_schedule(9, 100, "l2", budget=400)
    assert s.chunks(9) == [(0, 3), (3, 6), (6, 9)]


def test_auto_falls_back_to_stream():
    big = plan_schedule(4, 30 * MIB, "auto", 25 * MIB)  # one sample alone exceeds the budget
    assert big.kind == "stream" and big.num_chunks == 1 and "exceeds" in big.reason and not big.hints
    assert plan_schedule(4, MIB, "auto", 25 * MIB, device_type="cpu").kind == "stream"
    assert plan_schedule(4, MIB, "auto", None).kind == "stream"
    assert plan_schedule(4, MIB, "auto", 25 * MIB, fusable=False).kind == "stream"


def test_forced_l2_always_chunks_and_stream_never_does():
    s = plan_schedule(4, 30 * MIB, "l2", 25 * MIB)  # over budget: one sample a chunk
    assert (s.kind, s.chunk, s.num_chunks) == ("l2", 1, 4)
    unknown = plan_schedule(4, MIB, "l2", None)  # no budget known (CPU): hints, one chunk
    assert (unknown.kind, unknown.chunk, unknown.num_chunks, unknown.hints) == ("l2", 4, 1, True)
    st = plan_schedule(64, 1, "stream", 25 * MIB)
    assert (st.kind, st.chunk, st.num_chunks, st.hints) == ("stream", 64, 1, False)


def test_whole_batch_fits_one_chunk():
    s = plan_schedule(8, MIB, "auto", 25 * MIB)
    assert (s.kind, s.chunk, s.num_chunks) == ("l2", 8, 1)


@pytest.mark.parametrize("bad,err", [("fast", ValueError), ("L2", ValueError), (2, TypeError), (None, TypeError)])
def test_bad_schedule_names(bad, err):
    with pytest.raises(err, match="schedule"):
        plan_schedule(4, 10, bad, None)
    with pytest.raises(err, match="schedule"):
        sched.validate_schedule(bad)


@pytest.mark.parametrize("bad,err", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_budgets(bad, err):
    with pytest.raises(err, match="l2_budget_bytes"):
        sched.validate_budget(bad)
