"""Data-parallel training: DistributedDataParallel over converted CBAMs, and the spatial gate's
BatchNorm replaced by SyncBatchNorm (or any other BatchNorm subclass).

* DDP: two gloo processes on the CPU (Triton interpreter) run one training step of a small CNN whose
  CBAM (no BatchNorm in the gate, so that the per-process batch statistics cannot differ from the
  global ones) was converted by ``cbam_triton.convert``; every gradient must equal the single-process
  step on the same global batch.
* A norm that is not a plain ``nn.BatchNorm2d`` must be called as the module it is — in training
  (``SyncBatchNorm`` all-reduces its statistics there) and in eval — never recomputed as a local
  BatchNorm from its attributes.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from helpers import make_reference
from torch import nn

import cbam_triton

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH, WORLD = 4, 2


def _net() -> nn.Module:
    """conv -> ReLU -> CBAM (no gate BN) -> conv -> global pool -> linear, seeded."""
    import reference

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), reference.CBAM(8, 2, spatial_norm=False),
                         nn.Conv2d(8, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 3, 6, 7, generator=g), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """One training step's forward + backward (mean cross-entropy); returns the Triton launches."""
    with cbam_triton.record_launches() as launches:
        nn.functional.cross_entropy(model(x), y).backward()
    return len(launches)


def _worker(rank: int, store: str, out: str) -> None:
    """One DDP process: its half of the global batch, gradients saved to ``out``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        model = cbam_triton.convert(_net().train())
        ddp = DistributedDataParallel(model)
        x, y = _batch()
        per = GLOBAL_BATCH // WORLD
        launches = _step(ddp, x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per])
        torch.save({"grads": {n: p.grad for n, p in model.named_parameters()}, "launches": launches,
                    "types": sorted({type(m).__name__ for m in model.modules()})}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process_gradients(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(store), str(tmp_path / f"rank{r}.pt")],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=180)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)

    model = cbam_triton.convert(_net().train())  # the single-process step on the whole global batch
    x, y = _batch()
    assert _step(model, x, y) > 0
    expected = {n: p.grad for n, p in model.named_parameters()}
    for r in range(WORLD):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got["launches"] > 0, "the DDP step ran no Triton kernel"
        assert "CBAM" in got["types"] and "Sequential" in got["types"]
        assert got["grads"].keys() == expected.keys()
        for name, g in expected.items():
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-5, atol=1e-6, msg=f"rank {r}: {name}")


# --------------------------------------------------------------------------- BatchNorm subclasses
class ShiftedBN(nn.BatchNorm2d):
    """A BatchNorm2d subclass with its own forward (+0.25), counting its calls."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return super().forward(x) + 0.25


def _with_norm(module: nn.Module, norm: nn.Module) -> nn.Module:
    module = copy.deepcopy(module)
    module.spatial_gate.bn = copy.deepcopy(norm)
    return module


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batchnorm_subclass_in_the_gate_is_called_as_a_module(train):
    """Output, input and weight gradients, running statistics: those of the reference, which calls
    the subclass; the subclass ran in the fused module too (never a local BatchNorm instead)."""
    ref = make_reference(8, reduction_ratio=2, train=train)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    norm = ShiftedBN(1)
    norm.load_state_dict(ref.spatial_gate.bn.state_dict())
    ref, ours = _with_norm(ref, norm).train(train), _with_norm(ours, norm).train(train)
    x = torch.randn(2, 8, 5, 6)
    xr, xo = x.clone().requires_grad_(train), x.clone().requires_grad_(train)
    ShiftedBN.calls = 0
    with torch.set_grad_enabled(train):
        out = ours(xo)
    assert ShiftedBN.calls >= 1
    expected = ref(xr)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours.spatial_gate.bn.buffers(), ref.spatial_gate.bn.buffers()):  # updated once, as eager
        torch.testing.assert_close(a, b)
    if train:
        g = torch.randn_like(expected)
        got = torch.autograd.grad(out, [xo, *ours.parameters()], g)
        want = torch.autograd.grad(expected, [xr, *ref.parameters()], g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sync_batchnorm_in_training_is_never_a_local_batchnorm(monkeypatch, tmp_path):
    """After convert_sync_batchnorm the SyncBatchNorm's own forward runs in training: without a process
    group it normalises locally (as eager does); inside one it synchronises — on a CPU PyTorch refuses
    that, so the forward must raise rather than quietly normalise locally. In eval it equals the
    plain BatchNorm's running-statistics forward."""
    import torch.distributed as dist

    cbam_mod = pytest.importorskip("timm.layers.cbam")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 1), cbam_mod.CbamModule(8))
    bn = model[1].spatial.conv.bn
    with torch.no_grad():
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(1.7)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(cbam_triton.convert(copy.deepcopy(model)))
    assert type(synced[1].spatial.conv.bn) is nn.SyncBatchNorm and type(synced[1]).__name__ == "ConvertedCBAM"
    calls = []
    forward = nn.SyncBatchNorm.forward
    monkeypatch.setattr(nn.SyncBatchNorm, "forward", lambda self, t: calls.append(1) or forward(self, t))
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(synced.train()(x), model.train()(x), rtol=1e-5, atol=1e-5)  # no process group
    assert calls
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            synced(x)
    finally:
        dist.destroy_process_group()
    with torch.no_grad():
        torch.testing.assert_close(synced.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-5)


if __name__ == "__main__":  # a DDP worker: rank, store file, output file
    os.environ.setdefault("TRITON_INTERPRET", "1")
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
