"""Converters: every supported CBAM dialect -> fused cbam-triton module, same function, same weights."""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from dialects import (
    LuuuyiBlock,
    LuuuyiCBAM,
    MMYoloCBAM,
    OfficialCBAM,
    OfficialResNet,
    randomize,
)
from helpers import make_input
from tolerance import assert_close_to_reference
from torch import nn

import cbam_triton
import reference

os.environ.setdefault("YOLO_OFFLINE", "1")
timm = pytest.importorskip("timm")
timm_cbam = pytest.importorskip("timm.layers.cbam")
ultralytics_conv = pytest.importorskip("ultralytics.nn.modules.conv")


def _timm(**kw):
    return timm_cbam.CbamModule(24, rd_ratio=1 / 4, **kw)


DIALECTS = {
    "reference": lambda: reference.CBAM(24, 4),
    "official": lambda: OfficialCBAM(24, 4),
    "official-avg": lambda: OfficialCBAM(24, 4, pool_types=("avg",)),
    "official-no-spatial": lambda: OfficialCBAM(24, 4, no_spatial=True),
    "timm": lambda: _timm(),
    "timm-hardsigmoid-silu-bias": lambda: _timm(gate_layer="hard_sigmoid", act_layer=nn.SiLU, mlp_bias=True),
    "timm-light": lambda: timm_cbam.LightCbamModule(24, rd_ratio=1 / 4),
    "ultralytics-k7": lambda: ultralytics_conv.CBAM(24, 7),
    "ultralytics-k3": lambda: ultralytics_conv.CBAM(24, 3),
    "luuuyi": lambda: LuuuyiCBAM(24, 4),
    "mmyolo": lambda: MMYoloCBAM(24, 4),
}
EXPECTED_DIALECT = {"reference": "reference", "official": "official", "official-avg": "official",
                    "official-no-spatial": "official", "timm": "timm CbamModule",
                    "timm-hardsigmoid-silu-bias": "timm CbamModule", "timm-light": "timm LightCbamModule",
                    "ultralytics-k7": "ultralytics CBAM", "ultralytics-k3": "ultralytics CBAM", "luuuyi": "luuuyi",
                    "mmyolo": "mmyolo"}


def _source(name, dtype=torch.float32):
    return randomize(DIALECTS[name]()).eval().to(dtype)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(DIALECTS))
def test_dialect_parity(name, dtype, layout, device):
    src = _source(name, dtype).to(device)
    fused = cbam_triton.from_module(copy.deepcopy(src), backend="triton")
    assert type(fused) is not type(src)
    x = make_input((2, 24, 9, 11), dtype, layout, device)
    with torch.no_grad(), cbam_triton.record_launches() as launches:
        y = fused(x)
    assert len(launches) == (2 if name == "official-no-spatial" else 3)
    assert_close_to_reference(y, src, x)  # fp32: <= 1e-5; fp16: the core tolerance rule
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", list(DIALECTS))
def test_converted_keeps_state_dict_keys_and_parameters(name):
    src = _source(name)
    fused = cbam_triton.from_module(src)
    if name == "reference":
        assert list(fused.state_dict()) == list(src.state_dict())
        return
    assert list(fused.state_dict()) == list(src.state_dict())
    for (k, a), (_, b) in zip(src.named_parameters(), fused.named_parameters()):
        assert a is b, k  # shared: optimizers holding the source's parameters keep working
    assert fused.spec.dialect == EXPECTED_DIALECT[name]
    fused.load_state_dict(copy.deepcopy(src.state_dict()))


def test_train_mode_uses_batch_statistics_like_the_source(device):
    src = randomize(_timm()).train().to(device)
    fused = cbam_triton.from_module(copy.deepcopy(src), backend="triton")
    assert fused.training
    x = make_input((3, 24, 6, 7), device=device)
    y_src, y_fused = src(x), fused(x)
    torch.testing.assert_close(y_fused, y_src, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.spatial.conv.bn.running_var, src.spatial.conv.bn.running_var)


def test_unsupported_configurations_are_left_alone_with_a_warning():
    prelu = _timm()
    prelu.channel.act = nn.PReLU()  # an activation with parameters
    model = nn.Sequential(OfficialCBAM(24, 4, pool_types=("avg", "lp")), LuuuyiBlock(24), prelu, OfficialCBAM(24, 4))
    with pytest.warns(UserWarning) as record:
        model, done = cbam_triton.convert_with_report(model)
    messages = " ".join(str(w.message) for w in record)
    assert "lp" in messages and "ca/sa inside a larger block" in messages and "PReLU" in messages
    assert [r.name for r in done] == ["3"]
    assert type(model[0]) is OfficialCBAM and type(model[1]) is LuuuyiBlock
    assert type(model[2]).__name__ == "CbamModule" and isinstance(model[3], cbam_triton.ConvertedCBAM)


def test_from_module_rejects_non_cbam():
    with pytest.raises(cbam_triton.UnsupportedCBAM, match="not a recognised CBAM dialect"):
        cbam_triton.from_module(nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError):
        cbam_triton.from_module(OfficialCBAM(24, 4, pool_types=("lse",)))


def test_convert_inplace_false_and_top_level():
    model = nn.Sequential(OfficialCBAM(24, 4))
    copy_model = cbam_triton.convert(model, inplace=False)
    assert type(model[0]) is OfficialCBAM and isinstance(copy_model[0], cbam_triton.ConvertedCBAM)
    top = cbam_triton.convert(reference.CBAM(16, 4))
    assert isinstance(top, cbam_triton.CBAM)


def test_ultralytics_bookkeeping_attributes_survive():
    m = ultralytics_conv.CBAM(24)
    m.f, m.i, m.type, m.np = -1, 7, "ultralytics.nn.modules.conv.CBAM", 123
    fused = cbam_triton.from_module(m)
    assert (fused.f, fused.i, fused.type, fused.np) == (-1, 7, "ultralytics.nn.modules.conv.CBAM", 123)


@pytest.mark.slow
def test_timm_resnet18_with_cbam_end_to_end(device, capsys):
    model = timm.create_model("resnet18", pretrained=False, block_args=dict(attn_layer="cbam"), num_classes=10)
    model = randomize(model, seed=3).eval().to(device)
    x = torch.randn(2, 3, 64, 64, device=device)
    with torch.no_grad():
        expected = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fused = cbam_triton.convert(model, inplace=False, backend="triton", verbose=True)
        assert "replaced 8 CBAM module(s): timm CbamModule x8" in capsys.readouterr().out
        with cbam_triton.record_launches() as launches:
            got = fused(x)
    assert len(launches) == 8 * 3
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_official_resnet_end_to_end(device):
    model = randomize(OfficialResNet(), seed=5).eval().to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    with torch.no_grad():
        expected = model(x)
        fused, done = cbam_triton.convert_with_report(model, inplace=False, backend="triton")
        assert len(done) == 4 and {r.dialect for r in done} == {"official"}
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- checkpoints
def test_official_checkpoint_with_dataparallel_prefix_loads_into_cbam():
    src = randomize(OfficialCBAM(24, 4)).eval()
    sd = {f"module.layer.cbam.{k}": v for k, v in src.state_dict().items()}
    ours = cbam_triton.load_state_dict_from(cbam_triton.CBAM(24, 4), sd, "official", prefix="layer.cbam.").eval()
    x = torch.randn(2, 24, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours.to_reference()(x), src(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dialect,make,norm", [
    ("timm", lambda: _timm(), True),
    ("luuuyi", lambda: LuuuyiCBAM(24, 4), False),
])
def test_conv_mlp_and_mean_max_checkpoints_map_to_reference(dialect, make, norm):
    src = randomize(make()).eval()
    ref = reference.CBAM(24, 4, spatial_norm=norm)
    cbam_triton.load_state_dict_from(ref, src.state_dict(), dialect).eval()
    x = torch.randn(2, 24, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), src(x), rtol=1e-5, atol=1e-5)


def test_checkpoint_errors():
    with pytest.raises(ValueError, match="unknown dialect"):
        cbam_triton.to_reference_state_dict({}, "caffe")
    with pytest.raises(ValueError, match="no ChannelGate.mlp.1.weight"):
        cbam_triton.to_reference_state_dict({"x": torch.zeros(1)}, "official")
