"""The Triton backward (training path): gradients of x and every parameter against the reference,
gradcheck in float64, max-tie routing, determinism, saved tensors, launches and allocations,
gradients that arrive strided, and a short training run.

The tolerance rule for gradients is the outputs' rule (tests/tolerance.py, README): float32 within
``1e-5 + 1e-5 * |ref64|`` or twice the eager float32 gradient's own error, float16/bfloat16 within
``2 * max|eager - ref64| + 1 ulp``, where ref64 is the reference's gradient computed in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import make_input, make_reference
from tolerance import assert_grad_close
from torch.utils._python_dispatch import TorchDispatchMode

import cbam_triton
import reference
from cbam_triton import functional as CF
from cbam_triton.launchers import (
    channel_pool_counts,
    gate_backward,
    input_grad,
    spatial_pool_backward,
    spatial_pool_counts,
)
from cbam_triton.ops import IMPLEMENTATIONS


def _fwd_bwd(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor | None):
    """(out, x.grad, {param: grad}) for a fresh copy of module and a fresh leaf copy of x."""
    module = copy.deepcopy(module)
    leaf = x.detach().clone().requires_grad_(True)
    out = module(leaf)
    (out.sum() if g is None else out).backward(None if g is None else g.to(out.dtype))
    return out, leaf.grad, {n: p.grad for n, p in module.named_parameters()}, module


def _check_against_reference(ref: torch.nn.Module, x: torch.Tensor, g: torch.Tensor | None = None) -> None:
    """ours vs eager (same dtype) vs float64 reference: output, x.grad, every parameter's grad, buffers."""
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    out_o, gx_o, gp_o, mod_o = _fwd_bwd(ours, x, g)
    out_e, gx_e, gp_e, mod_e = _fwd_bwd(ref, x, g)
    out_r, gx_r, gp_r, _ = _fwd_bwd(copy.deepcopy(ref).double(), x.double(), None if g is None else g.double())
    assert_grad_close(out_o, out_e, out_r, "output")
    assert_grad_close(gx_o, gx_e, gx_r, "x.grad")
    assert gx_o.dtype == x.dtype
    for name in gp_r:
        assert (gp_o[name] is None) == (gp_r[name] is None), name
        if gp_r[name] is not None:
            assert_grad_close(gp_o[name], gp_e[name], gp_r[name], name)
    for (name, b_o), (_, b_e) in zip(mod_o.named_buffers(), mod_e.named_buffers()):
        # running statistics: ours are updated in fp32 then stored; eager updates them in x's dtype
        tight = dict(rtol=1e-5, atol=1e-6) if b_e.dtype in (torch.float32, torch.float64) else {}
        torch.testing.assert_close(b_o, b_e, msg=name, **tight)


# ------------------------------------------------------------------------------------ kernel level
@pytest.mark.parametrize("split", [None, 3])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 3, 1, 1), (2, 17, 6, 5), (1, 300, 3, 3), (1, 2, 40, 40)])
def test_backward_launchers_match_pytorch(shape, layout, split, device):
    """Each backward launcher (and the forward's tie counts) against its formula in PyTorch, with ties."""
    n, c, h, w = shape
    p = h * w
    x = make_input(shape, torch.float32, layout, device)
    g = make_input(shape, torch.float32, layout, device)
    with torch.no_grad():
        x[0, :, 0, 0] = 1.0                     # ties across channels at one pixel
        x[0, 0] = x[0, 0].abs().max()           # ties across every pixel of one channel
    avg, mx, cnt = channel_pool_counts(x, split)
    assert torch.equal(mx, x.amax((2, 3)))
    torch.testing.assert_close(avg, x.mean((2, 3)))
    assert torch.equal(cnt, (x == x.amax((2, 3), keepdim=True)).sum((2, 3)).int())
    assert cnt[0, 0] == p
    mc = torch.rand(n, c, device=device)
    mc[0] = 0.5
    pooled, cnt_s = spatial_pool_counts(x, mc, split)
    y = x * mc[:, :, None, None]
    assert torch.equal(pooled[:, 0], y.amax(1))
    assert torch.equal(cnt_s, (y == y.amax(1, keepdim=True)).sum(1).int().reshape(n, p))
    ms = torch.rand(n, h, w, device=device)
    for use_mc, use_ms in ((True, True), (True, False), (False, True)):
        d_mc, d_ms = gate_backward(g, x, mc if use_mc else None, ms if use_ms else None, split)
        gx = g * x
        if use_mc:
            torch.testing.assert_close(d_mc, (gx * (ms[:, None] if use_ms else 1)).sum((2, 3)))
        else:
            assert d_mc is None
        if use_ms:
            torch.testing.assert_close(d_ms, (gx * (mc[:, :, None, None] if use_mc else 1)).sum(1).reshape(n, p))
        else:
            assert d_ms is None
    a, b = torch.randn(n, p, device=device), torch.randn(n, p, device=device)
    pmax = pooled[:, 0].reshape(n, p)
    tie = (y.reshape(n, c, p) == pmax[:, None]).float()
    dy = a[:, None] * tie + b[:, None]
    torch.testing.assert_close(spatial_pool_backward(x, mc, pmax, a, b, split), (x.reshape(n, c, p) * dy).sum(2))
    avg_g, max_g = torch.randn(n, c, device=device), torch.randn(n, c, device=device)
    dx = input_grad(g, x, mc=mc, ms=ms.reshape(n, p), pmax=pmax, a=a, b=b, cmax=mx, avg_g=avg_g, max_g=max_g)
    col = lambda t: t[:, :, None, None]  # noqa: E731
    expected = (g * ms[:, None] + dy.reshape(n, c, h, w)) * col(mc) + col(avg_g) + col(max_g) * (x == col(mx))
    torch.testing.assert_close(dx, expected)
    assert dx.stride() == torch.empty_like(x).stride() or h * w == 1


def test_input_grad_drops_absent_terms(device):
    x = make_input((2, 4, 3, 5), torch.float32, "nchw", device)
    g = torch.randn_like(x)
    mc = torch.rand(2, 4, device=device)
    torch.testing.assert_close(input_grad(g, x, mc=mc), g * mc[:, :, None, None])
    torch.testing.assert_close(input_grad(None, x, avg_g=mc), mc[:, :, None, None].expand_as(x))
    with pytest.raises(ValueError, match="pmax, a and b"):
        input_grad(g, x, pmax=torch.zeros(2, 15, device=device))
    with pytest.raises(ValueError, match="max_g needs cmax"):
        input_grad(g, x, max_g=mc)


# ------------------------------------------------------------------------------------ module level
SHAPES = [(3, 17, 7, 9), (2, 3, 1, 1), (1, 1, 5, 300), (2, 8, 1, 13), (2, 8, 11, 1), (2, 256, 14, 14),
          (1, 2048, 7, 7)]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_gradients_match_reference(shape, train, device):
    c = shape[1]
    ref = make_reference(c, reduction_ratio=max(1, min(16, c // 2)), train=train, device=device)
    _check_against_reference(ref, make_input(shape, torch.float32, "nchw", device),
                             torch.randn(shape, device=device))


@pytest.mark.parametrize("layout", ["channels_last", "sliced_c", "sliced_w", "transposed", "expanded", "offset"])
def test_fp32_gradients_every_layout(layout, device):
    ref = make_reference(12, reduction_ratio=3, train=True, device=device)
    _check_against_reference(ref, make_input((2, 12, 6, 7), torch.float32, layout, device),
                             torch.randn(2, 12, 6, 7, device=device))


def test_fp32_gradients_seed_configuration(device):
    """The seed configuration (C=64, 128x128, r=2) for one sample: the big-map gradient paths."""
    ref = make_reference(64, reduction_ratio=2, train=True, device=device)
    _check_against_reference(ref, make_input((1, 64, 128, 128), torch.float32, "nchw", device))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_gradients_within_the_rule(dtype, layout, device):
    ref = make_reference(24, reduction_ratio=4, train=True, dtype=dtype, device=device)
    _check_against_reference(ref, make_input((2, 24, 9, 10), dtype, layout, device),
                             torch.randn(2, 24, 9, 10, device=device))


@pytest.mark.parametrize("config", [
    dict(pool_types=("avg",)), dict(pool_types=("max",)), dict(spatial_norm=False), dict(kernel_size=1),
    dict(kernel_size=3, hidden_channels=5),
], ids=["avg", "max", "no-bn", "k1", "k3-h5"])
def test_gradients_for_every_option(config, device):
    ref = make_reference(10, reduction_ratio=2, train=True, device=device, **config)
    _check_against_reference(ref, make_input((2, 10, 5, 6), torch.float32, "channels_last", device))


def test_lone_gates_gradients(device):
    x = make_input((2, 6, 5, 4), torch.float32, "nchw", device)
    g = torch.randn_like(x)
    ref_c = reference.ChannelGate(6, 3).to(device)
    ours_c = cbam_triton.ChannelGate(6, 3).to(device)
    ours_c.load_state_dict(ref_c.state_dict())
    ref_s = reference.SpatialGate(5).to(device)
    ours_s = cbam_triton.SpatialGate(5).to(device)
    ours_s.load_state_dict(ref_s.state_dict())
    for ours, ref in ((ours_c, ref_c), (ours_s, ref_s)):
        with cbam_triton.record_launches() as launches:
            _, gx_o, gp_o, _ = _fwd_bwd(ours, x, g)
        assert {launch.name for launch in launches} >= {"gate_backward", "input_grad"}
        _, gx_r, gp_r, _ = _fwd_bwd(ref, x, g)
        torch.testing.assert_close(gx_o, gx_r, rtol=1e-5, atol=1e-6)
        for name in gp_r:
            torch.testing.assert_close(gp_o[name], gp_r[name], rtol=1e-5, atol=1e-5, msg=name)


def test_converted_dialect_trains_with_the_triton_backward(device):
    from dialects import OfficialCBAM

    src = OfficialCBAM(16, 4).to(device).train()
    fused = cbam_triton.from_module(copy.deepcopy(src))
    x = make_input((2, 16, 6, 6), torch.float32, "channels_last", device)
    with cbam_triton.record_launches() as launches:
        _, gx_o, gp_o, _ = _fwd_bwd(fused, x, None)
    assert [launch.name for launch in launches][-3:] == ["gate_backward", "spatial_pool_backward", "input_grad"]
    _, gx_r, gp_r, _ = _fwd_bwd(src, x, None)
    torch.testing.assert_close(gx_o, gx_r, rtol=1e-5, atol=1e-6)
    for name in gp_r:
        torch.testing.assert_close(gp_o[name], gp_r[name], rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize(("bn", "pools", "fast", "n"), [
    ("batch-stats", ("avg", "max"), False, 1),   # every input element perturbed (slow in the interpreter)
    ("folded", ("avg", "max"), True, 2),         # the others in gradcheck's fast mode (random directions)
    ("none", ("max",), True, 2),
    ("batch-stats", ("avg",), True, 2),          # batch statistics couple the two samples
])
def test_gradcheck_float64(bn, pools, fast, n, device):
    """Finite differences in float64 through the kernels (fp64 accumulation) for x and every weight."""
    torch.manual_seed(1)
    c, h, w, hidden, k = 4, 3, 3, 2, 3
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.randn(n, c, h, w, **f64).requires_grad_(True)
    ws = [torch.randn(hidden, c, **f64) * 0.7, torch.randn(hidden, **f64) * 0.3, torch.randn(c, hidden, **f64) * 0.7,
          torch.randn(c, **f64) * 0.3, torch.randn(1, 2, k, k, **f64) * 0.4, torch.randn(1, **f64) * 0.3]
    ws = [t.requires_grad_(True) for t in ws]
    bn_w = torch.tensor([1.2], **f64).requires_grad_(True)
    bn_b = torch.tensor([-0.1], **f64).requires_grad_(True)
    rm, rv = torch.tensor([0.2], **f64), torch.tensor([1.5], **f64)

    def fn(x, w1, b1, w2, b2, cw, cb, bw, bb):
        kw = dict(pool_types=pools, backend="triton")
        if bn == "folded":
            kw.update(bn_weight=bw, bn_bias=bb, bn_running_mean=rm, bn_running_var=rv)
        elif bn == "batch-stats":
            kw.update(bn_weight=bw, bn_bias=bb, bn_training=True, use_bn=True)
        return CF.cbam(x, w1, b1, w2, b2, cw, cb, **kw)

    assert torch.autograd.gradcheck(fn, (x, *ws, bn_w, bn_b), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast)


# -------------------------------------------------------------------------------------- max ties
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_ties_share_the_gradient_evenly(layout, device):
    """Integer-valued x and a constant channel map: many exact ties in both max pools. The rule is
    torch.amax's (a max's gradient is split evenly among the elements that reach it); the reference
    uses amax, so its gradients define the expected values exactly."""
    ref = make_reference(6, reduction_ratio=2, train=True, device=device)
    with torch.no_grad():
        ref.channel_gate.mlp[2].weight.zero_()       # Mc = sigmoid(2 * bias): the same for every sample
        ref.channel_gate.mlp[2].bias.fill_(0.25)     # and every channel -> ties of x * Mc across channels
    x = torch.randint(-2, 3, (2, 6, 5, 5), device=device).float()
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    y = x * torch.sigmoid(torch.tensor(0.5))
    spatial_ties = (y == y.amax(1, keepdim=True)).sum(1)
    channel_ties = (x == x.amax((2, 3), keepdim=True)).sum((2, 3))
    assert spatial_ties.max() > 1 and channel_ties.max() > 1  # the test is about ties: make sure they exist
    g = torch.randn(x.shape, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    _, gx_o, gp_o, _ = _fwd_bwd(ours, x, g)
    _, gx_r, gp_r, _ = _fwd_bwd(ref, x, g)
    torch.testing.assert_close(gx_o, gx_r, rtol=1e-5, atol=1e-6)
    for name in gp_r:
        torch.testing.assert_close(gp_o[name], gp_r[name], rtol=1e-5, atol=1e-5, msg=name)
    # "route everything to the first maximum" would give a different x.grad here
    assert not torch.allclose(gx_o, _first_max_rule_grad(ref, x, g), atol=1e-4)


def _first_max_rule_grad(ref, x, g):
    """x.grad if both max pools routed their gradient to the first maximal element (torch.max(dim))."""
    ref = copy.deepcopy(ref)
    gate = ref.channel_gate

    def attention(xx):
        flat = xx.flatten(2)
        avg, mx = flat.mean(2), flat.max(2).values
        return torch.sigmoid(gate.mlp(avg) + gate.mlp(mx))[:, :, None, None]

    leaf = x.clone().requires_grad_(True)
    x1 = leaf * attention(leaf)
    sg = ref.spatial_gate
    comp = torch.cat([x1.max(1, keepdim=True).values, x1.mean(1, keepdim=True)], 1)
    out = x1 * torch.sigmoid(sg.bn(sg.conv(comp)))
    out.backward(g)
    return leaf.grad


# ---------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("split", ["natural", "forced"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gradients_are_bitwise_reproducible(layout, split, device, monkeypatch):
    if split == "forced":
        monkeypatch.setenv("CBAM_TRITON_TARGET_PROGRAMS", "4096")
    ref = make_reference(40, reduction_ratio=4, train=True, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 40, 33, 35), torch.float32, layout, device)
    g = torch.randn(x.shape, device=device)
    runs = [_fwd_bwd(ours, x, g) for _ in range(2)]
    assert torch.equal(runs[0][1], runs[1][1])
    for name in runs[0][2]:
        assert torch.equal(runs[0][2][name], runs[1][2][name]), name
    if split == "forced":  # the splits really happened
        with cbam_triton.record_launches() as launches:
            _fwd_bwd(ours, x, g)
        assert any(launch.grid[-1] > 1 for launch in launches if launch.name.endswith("backward"))


# ------------------------------------------------------------------------ memory and launch counts
def _saved_storages(fn, x):
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        saved[(st.data_ptr(), str(t.device))] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    return saved, out


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_saved_for_backward_is_x_plus_small_tensors(layout, device):
    shape = (2, 32, 24, 24)
    n, c, h, w = shape
    ref = make_reference(c, reduction_ratio=4, train=True, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input(shape, torch.float32, layout, device).requires_grad_(True)
    x_bytes = x.untyped_storage().nbytes()
    saved, _ = _saved_storages(ours, x)
    big = [k for k, size in saved.items() if size >= x_bytes // 4]
    assert big == [(x.untyped_storage().data_ptr(), str(x.device))], "only x itself may be saved full-size"
    small = sum(size for k, size in saved.items() if k not in big)
    assert small <= 64 * 4 * (n * c + n * h * w), small
    eager_saved, _ = _saved_storages(copy.deepcopy(ref), x)
    assert sum(eager_saved.values()) >= 2 * x_bytes  # eager keeps x and x * Mc (at least)


class _FullSizeCounter(TorchDispatchMode):
    """Counts outputs of aten ops (looking inside cbam_triton's ops) with at least ``big`` elements."""

    def __init__(self, big: int):
        super().__init__()
        self.big, self.full = big, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        impl = IMPLEMENTATIONS.get(func)
        if impl is not None:
            with self:
                return impl(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() >= self.big and t.untyped_storage().data_ptr() not in inputs:
                self.full.append(str(func))  # a new full-size tensor (views of inputs don't count)
        return out


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_backward_is_three_launches_and_writes_only_dx(layout, device):
    ref = make_reference(128, reduction_ratio=16, train=True, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 128, 16, 16), torch.float16, layout, device).requires_grad_(True)
    g = torch.randn(x.shape, device=device, dtype=x.dtype)
    with cbam_triton.record_launches() as fwd:
        y = ours(x)
    assert [launch.name for launch in fwd] == ["channel_pool", "spatial_pool", "gate"]
    assert fwd[0].meta["COUNT"] and fwd[1].meta["COUNT"]
    with cbam_triton.record_launches() as bwd:
        y.backward(g)
    assert [launch.name for launch in bwd] == ["gate_backward", "spatial_pool_backward", "input_grad"]
    x.grad = None
    y = ours(x)
    with _FullSizeCounter(x.numel()) as mode:
        y.backward(g)
    assert mode.full == ["aten.empty_like.default"], mode.full  # dx, which becomes x.grad without a copy
    traffic = sum(launch.bytes_read + launch.bytes_written for launch in bwd) / (x.numel() * x.element_size())
    assert 6.0 <= traffic < 6.5  # g, x read twice, x once more, dx written once (+ small maps)


# ----------------------------------------------------------------------------- odd gradients
def test_expanded_and_strided_output_gradients(device):
    ref = make_reference(8, reduction_ratio=2, train=True, device=device)
    x = make_input((2, 8, 7, 6), torch.float32, "channels_last", device)
    _check_against_reference(ref, x, None)  # out.sum().backward(): a stride-0 gradient
    g = torch.randn(2, 8, 6, 7, device=device).transpose(2, 3)  # non-contiguous, H and W not mergeable
    _check_against_reference(ref, x, g)


def test_empty_batch_backward(device):
    ours = cbam_triton.CBAM.from_reference(make_reference(8, reduction_ratio=2, device=device), backend="triton")
    x = torch.randn(0, 8, 5, 5, device=device, requires_grad=True)
    with cbam_triton.record_launches() as launches:
        y = ours(x)
        y.sum().backward()
    assert launches == [] and y.shape == x.shape and x.grad.shape == x.shape


def test_nan_in_x_propagates_to_the_same_gradients(device):
    ref = make_reference(6, reduction_ratio=2, device=device)
    x = make_input((2, 6, 5, 5), torch.float32, "nchw", device)
    x[1, 2, 3, 1] = float("nan")
    g = torch.randn(x.shape, device=device)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    _, gx_o, gp_o, _ = _fwd_bwd(ours, x, g)
    _, gx_r, gp_r, _ = _fwd_bwd(ref, x, g)
    assert torch.equal(gx_o.isnan(), gx_r.isnan())
    torch.testing.assert_close(gx_o[0], gx_r[0], rtol=1e-5, atol=1e-6)  # the clean sample is untouched
    for name in gp_r:
        assert torch.equal(gp_o[name].isnan(), gp_r[name].isnan()), name


def test_double_backward_is_refused_loudly(device):
    """The Triton backward is not itself differentiable: second derivatives raise, never silently wrong."""
    ours = cbam_triton.CBAM.from_reference(make_reference(8, reduction_ratio=2, device=device), backend="triton")
    x = torch.randn(2, 8, 5, 5, device=device, requires_grad=True)
    (gx,) = torch.autograd.grad(ours(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="autograd"):
        gx.sum().backward()


def test_opcheck_training_ops(device):
    x = make_input((2, 6, 5, 7), torch.float32, "channels_last", device)
    g = torch.randn_like(x)
    mc = torch.rand(2, 6, device=device)
    ms = torch.rand(2, 1, 5, 7, device=device)
    small = torch.rand(2, 5, 7, device=device)
    ops = torch.ops.cbam_triton
    torch.library.opcheck(ops.channel_pool_counts.default, (x,))
    torch.library.opcheck(ops.spatial_pool_counts.default, (x, mc))
    torch.library.opcheck(ops.gate_backward.default, (g, x, mc, ms))
    torch.library.opcheck(ops.gate_backward.default, (g, x, None, ms))
    torch.library.opcheck(ops.spatial_pool_backward.default, (x, mc, small, small, small))
    torch.library.opcheck(ops.input_grad.default, (g, x, mc, ms, small, small, small, mc, mc, mc))
    avg, mx, cnt = ops.channel_pool_counts(x)
    pooled, cnt_s = ops.spatial_pool_counts(x, mc)
    xr = x.clone().requires_grad_(True)
    torch.library.opcheck(ops.train_anchor.default, (xr, avg, mx, cnt, mc, ms, pooled, cnt_s))
    mcr = mc.clone().requires_grad_(True)
    proxy = torch.zeros(2, 2, 5, 7, device=device, requires_grad=True)
    torch.library.opcheck(ops.train_spatial_pool.default, (x, mcr, proxy, mc, pooled, cnt_s))
    torch.library.opcheck(ops.train_gate.default, (x, mcr, ms.clone().requires_grad_(True),
                                                   torch.zeros_like(x, requires_grad=True)))


# ---------------------------------------------------------------------------------- training run
def test_sgd_training_tracks_the_reference_loss_curve(device):
    torch.manual_seed(0)

    def net(block):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), block, torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))

    ref_net = net(reference.CBAM(16, 4)).to(device)
    our_net = copy.deepcopy(ref_net)
    our_net[1] = cbam_triton.CBAM.from_reference(ref_net[1], backend="triton")
    data = torch.randn(8, 3, 12, 12, device=device)
    target = torch.randint(0, 4, (8,), device=device)
    curves = []
    for model in (ref_net, our_net):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for _ in range(6):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(data), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0][-1] < curves[0][0]  # it learns
    torch.testing.assert_close(torch.tensor(curves[1]), torch.tensor(curves[0]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(our_net[1].spatial_gate.bn.running_var, ref_net[1].spatial_gate.bn.running_var)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inductor_training_step_on_gpu():
    """torch.compile (inductor, fullgraph) of a training step through the Triton backward, on a GPU."""
    ref = make_reference(64, reduction_ratio=4, train=True, device="cuda")
    x = torch.randn(8, 64, 28, 28, device="cuda").to(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    for _ in range(2):
        leaf = x.clone().requires_grad_(True)
        params = list(ours.parameters())
        grads = torch.autograd.grad(compiled(leaf), [leaf, *params], g)
    _, gx_r, gp_r, _ = _fwd_bwd(ref, x, g)
    torch.testing.assert_close(grads[0], gx_r, rtol=1e-4, atol=1e-5)
    for (name, _), got in zip(ours.named_parameters(), grads[1:]):
        torch.testing.assert_close(got, gp_r[name], rtol=1e-4, atol=1e-4, msg=name)
