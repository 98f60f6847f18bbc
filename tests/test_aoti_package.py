"""AOTInductor packages of the fused kernels (``cbam_triton.package_kernels``, cbam_triton/deploy.py).

Inside ``package_kernels()`` ``torch.export`` records a converted block's fused forward as
``cbam_triton::fused_forward_kernels`` (the fused residual tail as ``fused_tail_kernels``):
``torch.library.triton_op`` operators whose bodies launch the kernels through ``wrap_triton``.

On the CPU (no GPU, no CUDA driver), a subprocess without the interpreter exports on fake CUDA tensors
planned for an H200 (``residency.assume(132, 90)``), torch's kernel analysis given an sm_90 target,
and decomposes and functionalizes the program as AOTInductor's lowering begins: the graph holds the
fused forward's Triton kernels with the grids the eager planner gives the same shape, copies only
what the kernels write, and the rest of a network (and the stage functions) stays standard ops.
In this process (the interpreter): an eager call of the packaged op is bitwise the fused op, and what
a package cannot hold is refused clearly. GPU only: the AOTInductor package runs and matches the eager module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import make_input, make_reference

import cbam_triton
from cbam_triton.launchers import forward as fwd

CUDA = torch.cuda.is_available()
ROOT = Path(__file__).resolve().parents[1]

# exported on fake CUDA tensors in a process without the interpreter (the kernels are JIT functions, as
# on a GPU), then traced as AOTInductor lowers a program: functionalized, triton_ops decomposed
_TRACE = textwrap.dedent("""
    import json, logging, os, sys
    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    class Driver:  # what torch's kernel analysis asks of Triton's driver (no GPU here): an H200's target
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_active_torch_device(self):
            return torch.device("cuda")

        def get_current_device(self):
            return 0

    triton.runtime.driver.set_active(Driver())
    fallbacks = []  # torch's warning when it cannot analyse a kernel (it then assumes every input mutated)
    logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").addFilter(
        lambda record: fallbacks.append(record.getMessage()) or True)
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx
    import cbam_triton
    from cbam_triton.explain import explain_module
    from cbam_triton.launchers import residency
    from dialects import Bottleneck, randomize
    from helpers import make_reference

    def lowered(program, x):
        mod = program.module()
        state = {**dict(mod.named_parameters()), **dict(mod.named_buffers())}
        names = list(state)
        def f(x, *values):
            return torch.func.functional_call(mod, dict(zip(names, values)), (x,))
        graph = make_fx(dispatch_functionalize(f), tracing_mode="fake")(x, *state.values()).graph
        return [(kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__, list(n.kwargs["grid"][0]),
                 sorted(n.kwargs["tensors_to_clone"]))
                for n in graph.nodes if "triton_kernel_wrapper" in str(n.target)]

    def ops(program):
        return sorted({str(n.target) for n in program.graph.nodes if n.op == "call_function"})

    out = {}
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    block = cbam_triton.CBAM.from_reference(make_reference(64, reduction_ratio=4)).eval().half()
    shape = (8, 64, 14, 14)
    with fake:
        block = block.to("cuda")
        x = torch.empty(shape, device="cuda", dtype=torch.float16)
    with residency.assume(132, 90):
        with cbam_triton.package_kernels():
            program = torch.export.export(block, (x,))
        out["block_ops"] = ops(program)
        out["block_kernels"] = lowered(program, x)
        plan = explain_module(shape, "fp16", "nchw", reduction=4, sms=132)
        out["planned"] = [(launch["name"], launch["grid"]) for launch in plan["launches"]]
        try:
            with cbam_triton.package_kernels():
                torch.export.export(block, (x,), dynamic_shapes=({0: torch.export.Dim("n", min=2)},))
            out["dynamic"] = "no error"
        except Exception as exc:
            out["dynamic"] = f"{type(exc).__name__}: {exc}"
        net = randomize(torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), Bottleneck(32, 8, use_cbam=True)))
        net = cbam_triton.convert(net.eval(), backend="triton", fuse_block_tail=True)
        with fake:
            net = net.to("cuda")
            y = torch.empty(2, 32, 12, 12, device="cuda")
        with cbam_triton.package_kernels():
            program = torch.export.export(net, (y,))
        out["net_ops"] = ops(program)
        out["net_kernels"] = lowered(program, y)

        class Stages(torch.nn.Module):  # the stage functions are not a block: standard ops
            def forward(self, x):
                avg, mx = cbam_triton.functional.channel_pool(x)
                return x * (avg + mx)[:, :, None, None]

        with cbam_triton.package_kernels():
            out["stage_ops"] = ops(torch.export.export(Stages(), (x,)))

        # AOTInductor passes a Python float argument (BatchNorm eps) to the kernels as fp64: they compile
        # so (the block's spatial BatchNorm; the fused tail's affine of the block's last BatchNorm)
        from cbam_triton.fused_parts import BlockTail, channel_affine
        from cbam_triton.launchers.forward import plan_fused_forward
        from cbam_triton.schedule import plan_schedule
        from cbam_triton.tools.aot import compile_launch

        meta = cbam_triton.CBAM.from_reference(make_reference(64, reduction_ratio=4)).eval().to("meta")
        xm = torch.empty(shape, device="meta")
        mlp, conv = meta.fused_parts()
        norm = torch.nn.BatchNorm2d(64).eval().to("meta")
        compiled = []
        for tail in (None, BlockTail(channel_affine(norm), torch.empty(shape, device="meta"), "relu")):
            launches, _ = plan_fused_forward(xm, mlp, conv, plan_schedule(shape[0], 1, "stream"), tail)
            for launch in launches:
                floats = [a for a in launch.args if isinstance(a, float)]
                if floats and (launch.meta.get("HAS_BN") or launch.meta.get("AFFINE")):
                    compile_launch(launch, 90, float_type="fp64")
                    compiled.append(launch.name)
        out["fp64_eps_compiled"] = compiled
    out["fallbacks"] = fallbacks
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def traced() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), CBAM_TRITON_L2_BYTES=str(30 << 20))
    proc = subprocess.run([sys.executable, "-c", _TRACE], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT")), None)
    assert proc.returncode == 0 and line, proc.stderr[-4000:]
    return json.loads(line[len("RESULT"):])


def test_export_records_the_packaged_op_and_the_trace_holds_the_planned_kernels(traced):
    assert [op for op in traced["block_ops"] if "cbam_triton" in op] == ["cbam_triton.fused_forward_kernels.default"]
    kernels = traced["block_kernels"]
    assert [name for name, *_ in kernels] == ["channel_pool_mlp_kernel", "spatial_pool_kernel", "gate_conv_kernel"]
    # the grids the eager planner gives this shape on an H200 (explain plans as a GPU without a compiler)
    assert [grid[:2] for _, grid, _ in kernels] == [grid for _, grid in traced["planned"]]
    # torch analysed every kernel (no "assuming every input is mutated"): what a launch writes is copied
    # for the functional graph, never x, the weights or the map a launch only reads
    assert traced["fallbacks"] == []
    written = {name: set(clone) for name, _, clone in kernels}
    assert all("x_ptr" not in clone for clone in written.values())
    assert {"out_ptr"} <= written["gate_conv_kernel"] and "pooled_ptr" not in written["gate_conv_kernel"]
    assert not {"w1_ptr", "mcw_ptr", "cw_ptr"} & set().union(*written.values())


def test_the_rest_of_a_network_stays_standard_ops_and_the_tail_is_packaged(traced):
    ours = [op for op in traced["net_ops"] if "cbam_triton" in op]
    assert ours == ["cbam_triton.fused_tail_kernels.default"]
    assert any("conv2d" in op for op in traced["net_ops"])
    assert [name for name, *_ in traced["net_kernels"]] == ["channel_pool_mlp_kernel", "spatial_pool_kernel",
                                                             "gate_conv_kernel"]
    assert not [op for op in traced["stage_ops"] if "cbam_triton" in op]


def test_the_kernels_compile_with_the_fp64_floats_aot_inductor_passes(traced):
    assert traced["fp64_eps_compiled"] == ["gate_conv", "channel_pool_mlp", "gate_conv"]


def test_a_symbolic_extent_is_refused_clearly(traced):
    assert traced["dynamic"].startswith("ValueError") and "static shapes" in traced["dynamic"]


def _module(c: int, device) -> cbam_triton.CBAM:
    return cbam_triton.CBAM.from_reference(make_reference(c, reduction_ratio=4, device=device)).eval()


def test_eager_call_of_the_packaged_op_is_bitwise_the_fused_op():
    block = _module(24, "cpu")
    x = make_input((3, 24, 9, 11), torch.float32, "channels_last", torch.device("cpu"))
    mlp, conv = block.fused_parts()
    args = (x, mlp.fc1_weight, mlp.fc1_bias, mlp.fc2_weight, mlp.fc2_bias, conv.weight, conv.bias, conv.bn_mean,
            conv.bn_var, conv.bn_weight, conv.bn_bias, float(conv.bn_eps), mlp.pools, mlp.act, conv.input,
            "auto", None)
    with torch.no_grad():
        want = torch.ops.cbam_triton.fused_forward(*args)
        cached = len(fwd.PLANS)
        got = torch.ops.cbam_triton.fused_forward_kernels(*args)
    assert got.stride() == want.stride() and torch.equal(got, want)
    assert len(fwd.PLANS) == cached  # planned for the call, not cached


def test_a_package_of_cpu_tensors_is_refused_clearly():
    block = _module(16, "cpu")
    x = torch.randn(2, 16, 5, 5)
    with pytest.raises(ValueError, match="packages the CUDA kernels"), cbam_triton.package_kernels():
        torch.export.export(block, (x,))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("what", ["block", "network"])
def test_aot_inductor_package_of_the_kernels_matches_eager(tmp_path, what):
    """The package runs the fused kernels without Python: bitwise the eager block (the same plan and
    kernels), and a converted network with the fused tail within the network tolerance."""
    from dialects import Bottleneck, randomize

    cuda = torch.device("cuda")
    if what == "block":
        model = _module(64, cuda).half()
        x = make_input((4, 64, 14, 14), torch.float16, "nchw", cuda)
    else:
        net = randomize(torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), Bottleneck(32, 8, use_cbam=True)))
        model = cbam_triton.convert(net.eval(), backend="triton", fuse_block_tail=True).to(cuda)
        x = torch.randn(2, 32, 12, 12, device=cuda)
    with cbam_triton.package_kernels():
        program = torch.export.export(model, (x,))
    kept = {str(n.target) for n in program.graph.nodes if "cbam_triton" in str(n.target)}
    assert kept and all("_kernels" in t for t in kept)
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / f"{what}.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        got, want = loaded(x), model(x)
    if what == "block":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
