"""Deployment: a converted model exports and traces exactly like the original (cbam_triton/deploy.py).

The Triton backend is active here (TRITON_INTERPRET=1), as on a GPU. Every dialect is covered at
once by one fan-out model (``x -> (cbam_1(x), ..., cbam_k(x))``, each output compared with its own
source module), so each exporter runs once; the converted timm ResNet-18 is exported by the plain
``torch.onnx.export(model, (x,), path)`` call a user (or a serving toolkit) makes.
"""

from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch
from dialects import LuuuyiCBAM, MMYoloCBAM, OfficialCBAM, randomize
from helpers import make_reference
from tolerance import assert_close_to_reference
from torch import nn

import cbam_triton

os.environ.setdefault("YOLO_OFFLINE", "1")
pytestmark = [pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
              pytest.mark.filterwarnings("ignore:`torch.jit.[a-z_]*` is deprecated:FutureWarning")]
C = 32
SHAPES = ((2, C, 6, 6), (3, C, 5, 7))  # export shape, then another batch, H and W


def _sources() -> dict[str, nn.Module]:
    """One eval-mode source module per dialect (timm / ultralytics when installed)."""
    mods: dict[str, nn.Module] = {"reference": make_reference(C, reduction_ratio=8),
                                  "official": OfficialCBAM(C, 8), "luuuyi": LuuuyiCBAM(C, 8),
                                  "mmyolo": MMYoloCBAM(C, 8)}
    if importlib.util.find_spec("timm") is not None:
        from timm.layers.cbam import CbamModule, LightCbamModule

        mods["timm"] = CbamModule(C, rd_ratio=1 / 8)
        mods["timm-light"] = LightCbamModule(C, rd_ratio=1 / 8)
    if importlib.util.find_spec("ultralytics") is not None:
        from ultralytics.nn.modules.conv import CBAM as UltralyticsCBAM

        mods["ultralytics"] = UltralyticsCBAM(C, 7)
    return {name: (m if name == "reference" else randomize(m, seed=i)).eval()
            for i, (name, m) in enumerate(mods.items())}


class FanOut(nn.Module):
    """Every dialect applied to the same x; one output per dialect."""

    def __init__(self, mods: dict[str, nn.Module]):
        super().__init__()
        self.mods = nn.ModuleDict(mods)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(m(x) for m in self.mods.values())


@pytest.fixture(scope="module")
def models(device) -> tuple[FanOut, FanOut]:
    """(sources on the CPU, converted on the test device): the converted copy holds only
    cbam-triton modules."""
    src = FanOut(_sources()).eval()  # eval at the top too: the TorchScript exporter restores this mode
    fast = cbam_triton.convert(copy.deepcopy(src)).to(device)
    assert all(type(m).__module__.startswith("cbam_triton") for m in fast.mods.values())
    return src, fast


def _check_outputs(outs, src: FanOut, x: torch.Tensor, how: str) -> None:
    for name, got, ref in zip(src.mods, outs, src.mods.values()):
        try:
            assert_close_to_reference(torch.as_tensor(got).cpu(), ref, x.cpu())
        except AssertionError as e:
            raise AssertionError(f"{how}, dialect {name}, x {tuple(x.shape)}: {e}") from None


def _onnx_ops(path) -> set[tuple[str, str]]:
    import onnx

    model = onnx.load(str(path))
    assert not model.functions, "the ONNX model holds local functions (custom ops)"
    return {(n.domain, n.op_type) for n in model.graph.node}


def _ort_run(path, x: torch.Tensor) -> list:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy()})


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
def test_onnx_export_every_dialect_standard_ops(models, dynamo, tmp_path, device):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    src, fast = models
    x = torch.randn(SHAPES[0], device=device)
    path = tmp_path / "cbam.onnx"
    if dynamo:  # inside keep_custom_ops too: ONNX export records standard ops whatever the switch
        dim = torch.export.Dim
        with cbam_triton.keep_custom_ops():
            torch.onnx.export(fast, (x,), path, dynamo=True,
                              dynamic_shapes=({0: dim("batch"), 2: dim("h"), 3: dim("w")},))
    else:
        torch.onnx.export(fast, (x,), path, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}})
    ops = _onnx_ops(path)
    assert {domain for domain, _ in ops} == {""}, f"non-standard ONNX ops: {sorted(ops)}"
    names = {op for _, op in ops}
    assert "ReduceMax" in names and not names & {"MaxPool", "GlobalMaxPool"}, sorted(names)
    for shape in SHAPES:
        xi = torch.randn(shape, device=device)
        _check_outputs(_ort_run(path, xi), src, xi, f"ONNX Runtime ({'dynamo' if dynamo else 'legacy'})")


def test_jit_trace_records_standard_ops(models, device):
    src, fast = models
    traced = torch.jit.trace(fast, (torch.randn(SHAPES[0], device=device),), check_trace=False)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert all(k.startswith(("aten::", "prim::")) for k in kinds), sorted(kinds)
    for shape in SHAPES:
        xi = torch.randn(shape, device=device)
        with torch.no_grad():
            _check_outputs(traced(xi), src, xi, "torch.jit.trace")


def test_torch_export_rule(models, device):
    src, fast = models
    x = torch.randn(SHAPES[0], device=device)
    program = torch.export.export(fast, (x,))  # default: a portable program of standard ops
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("cbam_triton" in t or "max_pool" in t for t in targets), sorted(targets)
    with torch.no_grad():
        _check_outputs(program.module()(x), src, x, "torch.export")
    one = fast.mods["reference"]
    with cbam_triton.keep_custom_ops():  # the switch: cbam-triton's operators stay in the graph
        kept = torch.export.export(one, (x,))
    assert {str(n.target) for n in kept.graph.nodes if "cbam_triton" in str(n.target)} == {
        "cbam_triton.channel_pool.default", "cbam_triton.spatial_pool.default", "cbam_triton.gate.default"}
    lowered = kept.run_decompositions(cbam_triton.decompositions())
    assert not any("cbam_triton" in str(n.target) for n in lowered.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(kept.module()(x), lowered.module()(x), rtol=1e-5, atol=1e-5)


def test_normal_calls_still_run_the_kernels(models, device):
    """After an export, outside it: eager and torch.compile calls launch the Triton kernels."""
    src, fast = models
    x = torch.randn(SHAPES[0], device=device)
    torch.jit.trace(fast.mods["reference"], (x,), check_trace=False)
    outs = []
    for name, module in fast.mods.items():
        with torch.no_grad(), cbam_triton.record_launches() as launches:
            outs.append(module(x))
        assert launches, f"{name}: no Triton launch in an eager call"
    _check_outputs(outs, src, x, "eager")
    torch._dynamo.reset()
    compiled = torch.compile(fast.mods["mmyolo"], fullgraph=True, backend="aot_eager")
    with torch.no_grad(), cbam_triton.record_launches() as launches:
        y = compiled(x)
    assert launches, "no Triton launch under torch.compile"
    assert_close_to_reference(y.cpu(), src.mods["mmyolo"], x.cpu())


def test_jit_script_says_what_to_use(models):
    _, fast = models
    for name in ("reference", "official"):
        with pytest.raises(RuntimeError, match=r"(?s)torch\.jit\.script cannot compile cbam_triton\..*"
                                               r"(CBAM\(channels=32|dialect='official').*torch\.jit\.trace"):
            torch.jit.script(nn.Sequential(nn.Identity(), copy.deepcopy(fast.mods[name])))


def test_converted_timm_resnet18_exports_like_the_original(tmp_path, device):
    timm = pytest.importorskip("timm")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    original = timm.create_model("resnet18", pretrained=False, block_args=dict(attn_layer="cbam")).eval()
    model, replaced = cbam_triton.convert_with_report(copy.deepcopy(original).to(device))
    assert len(replaced) == 8
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = original(x)
    x = x.to(device)
    path = tmp_path / "resnet18_cbam.onnx"
    torch.onnx.export(model, (x,), path)  # exactly as a user (or a serving toolkit) calls it
    assert {domain for domain, _ in _onnx_ops(path)} == {""}
    torch.testing.assert_close(torch.from_numpy(_ort_run(path, x)[0]), want, rtol=1e-5, atol=1e-5)
    legacy = tmp_path / "resnet18_cbam_legacy.onnx"  # the TorchScript exporter, dynamic batch
    torch.onnx.export(model, (x,), legacy, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    assert {domain for domain, _ in _onnx_ops(legacy)} == {""}
    x2 = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want2 = original(x2)
    x2 = x2.to(device)
    torch.testing.assert_close(torch.from_numpy(_ort_run(legacy, x2)[0]), want2, rtol=1e-5, atol=1e-5)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    assert not any(n.kind().startswith("cbam_triton") for n in traced.inlined_graph.nodes())
    with torch.no_grad():
        torch.testing.assert_close(traced(x2).cpu(), want2, rtol=1e-5, atol=1e-5)
