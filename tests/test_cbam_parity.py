"""cbam_triton.CBAM against reference.CBAM through the real kernels (interpreter on CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import expected_channels_last, make_input, make_reference
from tolerance import assert_close_to_reference

import cbam_triton

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_IDS = ("fp32", "fp16", "bf16")


def _check(shape, dtype, layout, device, **ref_kwargs):
    ref = make_reference(shape[1], dtype=dtype, device=device, **ref_kwargs)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input(shape, dtype, layout, device)
    with torch.no_grad():
        with cbam_triton.record_launches() as launches:
            y = ours(x)
    if shape[0] > 0:
        # eval mode: the fused forward (MLP and conv + BN + sigmoid inside the kernels)
        expect = ["channel_pool_mlp", "spatial_pool", "gate_conv"] if not ref.training else \
            ["channel_pool", "spatial_pool", "gate"]
        names = [launch.name for launch in launches]
        if "channel_map" in names:  # Mc in its own launch where the weight-traffic model says it pays
            assert not ref.training and names.index("channel_map") == 1
            names.remove("channel_map")
        assert names == expect
    assert y.is_contiguous(memory_format=torch.channels_last) == expected_channels_last(x) or \
        y.is_contiguous(), "output memory format differs from the input's"
    if expected_channels_last(x):
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(y, ref, x)
    return y


@pytest.mark.slow
@pytest.mark.parametrize("dtype,layout", [(torch.float32, "nchw"), (torch.float16, "channels_last"),
                                          (torch.bfloat16, "nchw")], ids=["fp32-nchw", "fp16-cl", "bf16-nchw"])
def test_seed_configuration(dtype, layout, device):
    """The seed blog's configuration: N=2, C=64, 128x128, r=2."""
    _check((2, 64, 128, 128), dtype, layout, device, reduction_ratio=2)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(2, 256, 14, 14), (1, 2048, 7, 7), (3, 17, 7, 9), (2, 3, 1, 1),
                                   (1, 1, 5, 300), (0, 8, 5, 5), (2, 5, 1, 13), (2, 5, 11, 1)],
                         ids=lambda s: "x".join(map(str, s)))
def test_shapes_dtypes_layouts(shape, dtype, layout, device):
    _check(shape, dtype, layout, device)


@pytest.mark.parametrize("spatial_norm", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("pool_types", [("avg", "max"), ("avg",), ("max",), ("max", "avg")],
                         ids=["avg+max", "avg", "max", "max+avg"])
@pytest.mark.parametrize("kernel_size", [3, 7])
def test_module_options(kernel_size, pool_types, spatial_norm, device):
    _check((2, 17, 9, 11), torch.float32, "nchw", device, kernel_size=kernel_size,
           pool_types=pool_types, spatial_norm=spatial_norm, reduction_ratio=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("layout", ["sliced_c", "sliced_w", "transposed", "expanded", "offset"])
def test_non_contiguous_views(layout, dtype, device):
    _check((3, 24, 10, 12), dtype, layout, device, reduction_ratio=4)


def test_hidden_channels_and_small_c(device):
    _check((2, 1, 6, 6), torch.float32, "nchw", device)  # C // r == 0 -> hidden 1
    _check((2, 33, 6, 6), torch.float32, "channels_last", device, hidden_channels=5)
    _check((2, 16, 5, 5), torch.float32, "nchw", device, kernel_size=1)


def test_float64(device):
    ref = make_reference(9, dtype=torch.float64, device=device, reduction_ratio=3)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 9, 6, 7), torch.float64, "nchw", device)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_inputs(value, dtype, layout, device):
    ref = make_reference(12, dtype=dtype, device=device, reduction_ratio=4)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((3, 12, 6, 5), dtype, layout, device)
    x[0, 3, 2, 1] = value  # sample 0: through both branches
    x[2, :, 4, 4] = value  # sample 2: a whole pixel column
    with torch.no_grad():
        y = ours(x)
    assert_close_to_reference(y, ref, x)
    assert torch.isfinite(y[1]).all(), "a clean sample was contaminated"


def test_all_negative_and_constant_inputs(device):
    ref = make_reference(8, device=device, reduction_ratio=2)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    for x in (-make_input((2, 8, 5, 6), device=device).abs() - 3.0,
              torch.full((2, 8, 5, 6), 2.5, device=device)):
        with torch.no_grad():
            assert_close_to_reference(ours(x), ref, x)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_train_mode_forward_backward_and_running_stats(layout, device):
    ref = make_reference(16, device=device, reduction_ratio=4, train=True)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    assert ours.training and ours.spatial_gate.bn.training
    x = make_input((3, 16, 7, 8), torch.float32, layout, device)
    x_ref, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5)
    bn_r, bn_o = ref.spatial_gate.bn, ours.spatial_gate.bn
    torch.testing.assert_close(bn_o.running_mean, bn_r.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn_o.running_var, bn_r.running_var, rtol=1e-5, atol=1e-6)
    assert int(bn_o.num_batches_tracked) == int(bn_r.num_batches_tracked) == 8
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_ours.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for (name, p_ref), (_, p_ours) in zip(ref.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=1e-4, atol=1e-4, msg=name)


def test_train_mode_bn_momentum_none_and_no_running_stats(device):
    ref = make_reference(8, device=device, reduction_ratio=2, train=True)
    ref.spatial_gate.bn.momentum = None  # cumulative moving average
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 8, 5, 5), device=device)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.spatial_gate.bn.running_var, ref.spatial_gate.bn.running_var)
    # eval mode without running statistics uses batch statistics, like nn.BatchNorm2d
    ref2 = make_reference(8, device=device, reduction_ratio=2)
    ref2.spatial_gate.bn = torch.nn.BatchNorm2d(1, track_running_stats=False).to(device).eval()
    ours2 = cbam_triton.CBAM.from_reference(ref2, backend="triton")
    with torch.no_grad():
        torch.testing.assert_close(ours2(x), ref2(x), rtol=1e-5, atol=1e-5)


def test_inference_without_no_grad_still_has_reference_gradients(device):
    """Eval mode with parameters requiring grad: Triton forward, reference-correct gradients."""
    ref = make_reference(10, device=device, reduction_ratio=2)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 10, 6, 6), device=device)
    xr, xo = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref(xr).square().sum().backward()
    ours(xo).square().sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.spatial_gate.conv.weight.grad, ref.spatial_gate.conv.weight.grad,
                               rtol=1e-4, atol=1e-4)


def test_torch_backend_matches_reference(device):
    ref = make_reference(20, device=device, reduction_ratio=4)
    ours = cbam_triton.CBAM.from_reference(ref, backend="torch")
    for layout in ("nchw", "channels_last"):
        x = make_input((2, 20, 7, 9), torch.float32, layout, device)
        with torch.no_grad(), cbam_triton.record_launches() as launches:
            y = ours(x)
        assert launches == []
        assert_close_to_reference(y, ref, x)


def test_functional_matches_module(device):
    ref = make_reference(12, device=device, reduction_ratio=3)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 12, 8, 8), device=device)
    fc1, fc2 = ref.channel_gate.mlp[0], ref.channel_gate.mlp[2]
    bn = ref.spatial_gate.bn
    with torch.no_grad():
        y_f = cbam_triton.functional.cbam(
            x, fc1.weight, fc1.bias, fc2.weight, fc2.bias, ref.spatial_gate.conv.weight,
            bn_weight=bn.weight, bn_bias=bn.bias, bn_running_mean=bn.running_mean,
            bn_running_var=bn.running_var, bn_eps=bn.eps, backend="triton")
        torch.testing.assert_close(y_f, ours(x), rtol=0, atol=0)
        assert_close_to_reference(y_f, ref, x)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_submodules_alone(layout, device):
    ref = make_reference(14, device=device, reduction_ratio=2)
    ours = cbam_triton.CBAM.from_reference(ref, backend="triton")
    x = make_input((2, 14, 6, 9), torch.float32, layout, device)
    with torch.no_grad():
        torch.testing.assert_close(ours.channel_gate(x), ref.channel_gate(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.spatial_gate(x), ref.spatial_gate(x), rtol=1e-5, atol=1e-5)


def test_state_dict_loads_both_ways(device):
    ref = make_reference(32, device=device)
    ours = cbam_triton.CBAM(32)
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    for k, v in ours.state_dict().items():
        assert v.shape == ref.state_dict()[k].shape, k
    ours.load_state_dict(ref.state_dict())  # strict
    back = copy.deepcopy(make_reference(32, device=device))
    back.load_state_dict(ours.state_dict())
    for k, v in back.state_dict().items():
        assert torch.equal(v.cpu(), ref.state_dict()[k].cpu()), k
    to_ref = cbam_triton.CBAM.from_reference(ref).to_reference()
    assert type(to_ref) is type(ref)
    for k, v in to_ref.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k


def test_same_constructor_as_reference():
    import inspect

    import reference

    ours = inspect.signature(cbam_triton.CBAM.__init__).parameters
    theirs = inspect.signature(reference.CBAM.__init__).parameters
    for name, param in theirs.items():
        assert name in ours and ours[name].default == param.default, name
