"""Differential tests: what users do to models, before and after ``cbam_triton.convert``.

Each transformation (normalisation swaps, parameter edits, moves and casts, graph tools) is applied
to a small network carrying a CBAM of one dialect — before ``convert`` (the original is transformed,
then a copy converted) and/or after it (the same transformation applied to the original and to the
converted copy, once the converted copy's fast path has cached a launch). The converted network must
then compute what the original computes: in eval (twice: the planned call and the replayed one) and in
one training step (output, input and parameter gradients, running statistics), under the project's
tolerance rule (``tests/tolerance.py``, against the float64 original). A block that ``convert``
cannot reproduce must be left alone with a warning — never converted into something that computes
differently; every case here is expected to convert. The table of supported transformations is in
docs/testing.md.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from tolerance import assert_grad_close, ulp
from torch import nn

import cbam_triton
import reference

timm_cbam = pytest.importorskip("timm.layers.cbam")
ultralytics_conv = pytest.importorskip("ultralytics.nn.modules.conv")
tv_misc = pytest.importorskip("torchvision.ops.misc")

C, SHAPE = 16, (2, 3, 5, 6)
DIALECTS: dict[str, Callable[[], nn.Module]] = {
    "reference": lambda: reference.CBAM(C, 4),
    "timm": lambda: timm_cbam.CbamModule(C, rd_ratio=1 / 4),
    "ultralytics": lambda: ultralytics_conv.CBAM(C, 7),
}
#: the spatial norm of each dialect's block (index 2 of the network); ultralytics has none
SPATIAL_BN = {"reference": "2.spatial_gate.bn", "timm": "2.spatial.conv.bn", "ultralytics": None}
FUSED_TYPES = (cbam_triton.CBAM, cbam_triton.ConvertedCBAM)


# ------------------------------------------------------------------------------------------ models
def _randomize(net: nn.Module, seed: int) -> nn.Module:
    """Every floating parameter and buffer random (BatchNorm statistics that matter, a spatial conv
    that shapes the map)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            if not t.is_floating_point():
                continue
            r = torch.rand(t.shape, generator=g, dtype=torch.float64)
            if name.endswith("running_var"):
                t.copy_(0.5 + 1.5 * r)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(r - 0.5)
            elif name.endswith("bn.weight"):
                t.copy_(0.5 + r)
            else:
                t.copy_((r - 0.5) * (2.0 if t.dim() == 4 and t.shape[0] == 1 else 1.0))
    return net


def make_net(dialect: str, seed: int = 0) -> nn.Module:
    """conv (no bias: a BatchNorm follows) -> BatchNorm -> CBAM block: the outer BatchNorm is what
    network-wide swaps also touch."""
    torch.manual_seed(seed)
    return _randomize(nn.Sequential(nn.Conv2d(3, C, 1, bias=False), nn.BatchNorm2d(C), DIALECTS[dialect]()), seed)


def _is_converted(net: nn.Module) -> bool:
    return any(isinstance(m, FUSED_TYPES) for m in net.modules())


def fresh_like(net: nn.Module, dialect: str) -> nn.Module:
    """A new network of the same kind as ``net`` (converted or not) with other weights."""
    new = make_net(dialect, seed=1)
    return cbam_triton.convert(new) if _is_converted(net) else new


def _swap(net: nn.Module, path: str | None, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    if path is None:
        return net
    parent, _, name = path.rpartition(".")
    old = net.get_submodule(path)
    new = make(old)
    new.train(old.training)
    setattr(net.get_submodule(parent), name, new)
    return net


def _bn_like(cls: type, **kw: object) -> Callable[[nn.Module], nn.Module]:
    """A ``cls`` norm with the old one's statistics and affine parameters (where it has them)."""
    def make(old: nn.Module) -> nn.Module:
        new = cls(1, **kw).to(old.running_mean.dtype if old.running_mean is not None else torch.float32)
        with torch.no_grad():
            for k in ("weight", "bias", "running_mean", "running_var"):
                src, dst = getattr(old, k, None), getattr(new, k, None)
                if src is not None and dst is not None:
                    dst.copy_(src)
        return new
    return make


class DoubledBN(nn.BatchNorm2d):
    """A BatchNorm subclass with behaviour of its own (its output doubled)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class RenamedBN(nn.BatchNorm2d):
    """A BatchNorm subclass that keeps BatchNorm2d's forward (foldable)."""


def _frozen_everywhere(net: nn.Module) -> nn.Module:
    """Every BatchNorm2d replaced by torchvision's FrozenBatchNorm2d with its statistics (what
    detection backbones are built with)."""
    for name, m in list(net.named_modules()):
        if type(m) is nn.BatchNorm2d or (type(m).__name__ == "BatchNormAct2d" and m.num_features == 1):
            frozen = tv_misc.FrozenBatchNorm2d(m.num_features, eps=m.eps)
            with torch.no_grad():
                for k in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, k).copy_(getattr(m, k))
            parent, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, attr, frozen)
    return net


def _other_state(net: nn.Module, dialect: str) -> dict[str, torch.Tensor]:
    return fresh_like(net, dialect).state_dict()


def _ema(net: nn.Module, dialect: str) -> nn.Module:
    """An EMA/SWA-style update: state_dict() values copy_'d in place."""
    other = _other_state(net, dialect)
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                v.copy_(0.5 * v + 0.5 * other[k].to(v.dtype))
    return net


def _data_edit(net: nn.Module, dialect: str) -> nn.Module:
    """In-place edits through ``.data`` (invisible to version counters) of every floating tensor."""
    for _, t in [*net.named_parameters(), *net.named_buffers()]:
        if t.is_floating_point():
            t.data.mul_(-1.5).add_(0.25) if t.dim() > 1 else t.data.add_(0.125)
    return net


def _load(strict: bool) -> Callable[[nn.Module, str], nn.Module]:
    def load(net: nn.Module, dialect: str) -> nn.Module:
        other = _other_state(net, dialect)
        if not strict:  # a partial checkpoint: the channel branch only
            other = {k: v for k, v in other.items() if k.startswith("2.") and "spatial" not in k}
        result = net.load_state_dict(other, strict=strict)
        assert strict or result.missing_keys
        return net
    return load


def _freeze_channel_mlp(net: nn.Module, dialect: str) -> nn.Module:
    for name, p in net.named_parameters():
        if name.startswith("2.") and "spatial" not in name:
            p.requires_grad_(False)
    return net


def _new_parameters(net: nn.Module, dialect: str) -> nn.Module:
    """Every parameter of the CBAM block replaced by a new ``nn.Parameter`` (other values)."""
    g = torch.Generator().manual_seed(7)
    for name, p in list(net.named_parameters()):
        if not name.startswith("2."):
            continue
        mod_name, _, attr = name.rpartition(".")
        new = nn.Parameter((torch.rand(p.shape, generator=g, dtype=torch.float64) - 0.5).to(p.dtype))
        setattr(net.get_submodule(mod_name), attr, new)
    return net


def _save_load_model(net: nn.Module, dialect: str) -> nn.Module:
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _save_load_state_dict(net: nn.Module, dialect: str) -> nn.Module:
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    new = fresh_like(net, dialect).to(next(net.parameters()).dtype)
    new.load_state_dict(torch.load(buf))
    return new


@dataclass(frozen=True)
class Transformation:
    """What a user does to a model; ``apply(net, dialect)`` may return a new module."""

    name: str
    apply: Callable[[nn.Module, str], nn.Module]
    orders: tuple[str, ...] = ("before", "after")
    needs_bn: bool = False                  # applies only to dialects with a spatial BatchNorm
    train_mode: Callable[[nn.Module], object] = nn.Module.train
    dtype: torch.dtype = torch.float32


def _spatial(make: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module, str], nn.Module]:
    return lambda net, dialect: _swap(net, SPATIAL_BN[dialect], make)


def _frozen_bn_finetune(net: nn.Module) -> None:
    """Frozen-BN fine-tuning: the model in train mode, every norm in eval."""
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            m.eval()


TRANSFORMATIONS = [
    # normalisation swaps
    Transformation("convert_sync_batchnorm", lambda net, d: nn.SyncBatchNorm.convert_sync_batchnorm(net)),
    Transformation("bn_subclass_own_forward", _spatial(_bn_like(DoubledBN)), needs_bn=True),
    Transformation("bn_subclass_plain", _spatial(_bn_like(RenamedBN)), needs_bn=True),
    Transformation("frozen_batchnorm", lambda net, d: _frozen_everywhere(net)),
    Transformation("frozen_bn_finetune", lambda net, d: net, orders=("before",), train_mode=_frozen_bn_finetune),
    Transformation("track_running_stats_false", _spatial(_bn_like(nn.BatchNorm2d, track_running_stats=False)),
                   needs_bn=True),
    Transformation("affine_false", _spatial(_bn_like(nn.BatchNorm2d, affine=False)), needs_bn=True),
    Transformation("momentum_none", _spatial(_bn_like(nn.BatchNorm2d, momentum=None)), needs_bn=True),
    # parameter edits the guard must see
    Transformation("data_edit", _data_edit),
    Transformation("ema_state_dict_copy", _ema),
    Transformation("load_state_dict_strict", _load(True)),
    Transformation("load_state_dict_partial", _load(False)),
    Transformation("requires_grad_false", _freeze_channel_mlp),
    Transformation("new_parameters", _new_parameters),
    # moves and casts
    Transformation("half", lambda net, d: net.half(), dtype=torch.float16),
    Transformation("bfloat16", lambda net, d: net.bfloat16(), dtype=torch.bfloat16),
    Transformation("channels_last", lambda net, d: net.to(memory_format=torch.channels_last)),
    Transformation("double_and_back", lambda net, d: net.double().float()),
    Transformation("deepcopy", lambda net, d: copy.deepcopy(net)),
    Transformation("save_load_model", _save_load_model),
    Transformation("save_load_state_dict", _save_load_state_dict),
]
BY_NAME = {t.name: t for t in TRANSFORMATIONS}


# --------------------------------------------------------------------------------------- the pair
def _convert(net: nn.Module) -> nn.Module:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = cbam_triton.convert(copy.deepcopy(net))
    left = [str(w.message) for w in caught if "cbam_triton.convert" in str(w.message)]
    assert _is_converted(out), f"the block was left unconverted: {left}"
    assert not left, left
    return out


def _input(dtype: torch.dtype, channels_last: bool, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64).to(dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def make_pair(dialect: str, tr: Transformation, order: str) -> tuple[nn.Module, nn.Module]:
    """(original, converted) after applying ``tr`` in ``order``."""
    net = make_net(dialect)
    if order == "before":
        net = tr.apply(net, dialect)
        return net, _convert(net)
    conv = _convert(net)
    net.eval()
    conv.eval()
    with torch.no_grad():  # the converted copy's fast path records its launches first
        conv(_input(torch.float32, False))
    return tr.apply(net, dialect), tr.apply(conv, dialect)


def _dtype_of(net: nn.Module) -> torch.dtype:
    return next(net.parameters()).dtype


def check_eval(orig: nn.Module, conv: nn.Module, channels_last: bool = False) -> None:
    orig.eval()
    conv.eval()
    x = _input(_dtype_of(orig), channels_last)
    ref64 = copy.deepcopy(orig).double()
    with torch.no_grad():
        eager, r = orig(x), ref64(x.double())
        first, second = conv(x), conv(x)
    assert_grad_close(first, eager, r, "eval output")
    assert torch.equal(first, second), "a repeated call (the fast path) differs from the first"


#: a one-element low-precision gradient (the spatial BatchNorm's weight or bias: one sum over the whole
#: batch) is a single sample of rounding, so "twice eager's own error" is a lottery there: such a
#: gradient may be SCALAR_ULPS ulps of its dtype further off than that (every other tensor: the rule)
SCALAR_ULPS = 4


def _assert_scalar_close(ours: torch.Tensor, eager: torch.Tensor, ref64: torch.Tensor, what: str) -> None:
    o, e, r = (t.detach().double().reshape(()) for t in (ours, eager, ref64))
    bound = 2 * (e - r).abs() + SCALAR_ULPS * ulp(r, ours.dtype)
    assert (o - r).abs() <= bound, \
        f"{what} ({ours.dtype}): ours {o.item():.6g}, eager {e.item():.6g}, ref {r.item():.6g}"


def check_train_step(orig: nn.Module, conv: nn.Module, train_mode: Callable[[nn.Module], object]) -> None:
    """One training step: output, gradients of input and parameters, running statistics after it."""
    ref64 = copy.deepcopy(orig).double()
    dtype = _dtype_of(orig)
    results = {}
    for tag, net, dt in (("eager", orig, dtype), ("ref64", ref64, torch.float64), ("ours", conv, dtype)):
        train_mode(net)
        x = _input(dt, False).requires_grad_()
        out = net(x)
        weight = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape).to(dt)
        (out * weight).sum().backward()
        grads = {k: p.grad for k, p in net.named_parameters() if p.requires_grad}
        buffers = {k: b for k, b in net.named_buffers() if b.is_floating_point()}
        results[tag] = (out, x.grad, grads, buffers, {k for k, p in net.named_parameters() if p.grad is None})
    (eo, ex, eg, eb, enone), (ro, rx, rg, rb, _), (oo, ox, og, ob, onone) = (
        results["eager"], results["ref64"], results["ours"])
    assert_grad_close(oo, eo, ro, "train output")
    assert_grad_close(ox, ex, rx, "input grad")
    assert og.keys() == eg.keys() and onone == enone, "different parameters receive gradients"
    for k in eg:
        if eg[k] is None:
            assert og[k] is None, k
            continue
        if eg[k].numel() == 1 and dtype in (torch.float16, torch.bfloat16):
            _assert_scalar_close(og[k], eg[k], rg[k], f"grad of {k}")
            continue
        assert_grad_close(og[k], eg[k], rg[k], f"grad of {k}")
    assert ob.keys() == eb.keys()
    for k in eb:
        assert_grad_close(ob[k], eb[k], rb[k], f"buffer {k}")


CASES = [(d, t.name, o) for t in TRANSFORMATIONS for o in t.orders for d in DIALECTS
         if not (t.needs_bn and SPATIAL_BN[d] is None)]


@pytest.mark.parametrize(("dialect", "name", "order"), CASES, ids=[f"{n}-{o}-{d}" for d, n, o in CASES])
def test_transformation_eval(dialect, name, order):
    tr = BY_NAME[name]
    orig, conv = make_pair(dialect, tr, order)
    check_eval(orig, conv, channels_last=name == "channels_last")


#: one training step per transformation, in the order users apply it (and the dialects that differ)
TRAIN_CASES = [(d, t.name, t.orders[0]) for t in TRANSFORMATIONS for d in DIALECTS
               if not (t.needs_bn and SPATIAL_BN[d] is None) and (d != "ultralytics" or not t.needs_bn)]


@pytest.mark.parametrize(("dialect", "name", "order"), TRAIN_CASES, ids=[f"{n}-{o}-{d}" for d, n, o in TRAIN_CASES])
def test_transformation_train_step(dialect, name, order):
    tr = BY_NAME[name]
    orig, conv = make_pair(dialect, tr, order)
    check_train_step(orig, conv, tr.train_mode)


# --------------------------------------------------------------------- the reported cases, exactly
def test_bn_subclass_with_own_forward_is_honoured():
    net = nn.Sequential(nn.Conv2d(3, 32, 1), reference.CBAM(32, 8)).eval()
    net[1].spatial_gate.bn = DoubledBN(1).eval()
    with torch.no_grad():
        net[1].spatial_gate.bn.running_mean.fill_(0.3)
        net[1].spatial_gate.bn.running_var.fill_(2.0)
    conv = _convert(net)
    assert type(conv[1].spatial_gate.bn) is DoubledBN
    assert isinstance(conv[1].fused_parts(), str), "a norm with its own forward must not be folded"
    check_eval(net, conv)


@pytest.mark.parametrize("norm", ["sync", "frozen"])
def test_convert_after_norm_swap_converts(norm):
    net = nn.Sequential(nn.Conv2d(3, 32, 1), reference.CBAM(32, 8)).eval()
    net = nn.SyncBatchNorm.convert_sync_batchnorm(net) if norm == "sync" else _frozen_everywhere(net)
    conv = _convert(net)
    assert isinstance(conv[1], cbam_triton.CBAM)
    assert not isinstance(conv[1].fused_parts(), str), "an eval-mode SyncBatchNorm/FrozenBatchNorm2d folds"
    check_eval(net, conv)


@pytest.mark.parametrize("dialect", ["reference", "timm"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_data_edit_of_every_tensor_is_seen(dialect, channels_last):
    """Each parameter and buffer edited alone through ``.data`` after the fast path cached a launch."""
    net = make_net(dialect).eval()
    conv = _convert(net).eval()
    if channels_last:
        net, conv = net.to(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
    x = _input(torch.float32, channels_last)
    names = [k for k, v in conv.state_dict().items() if k.startswith("2.") and v.is_floating_point()]
    assert len(names) >= 7
    for k in names:
        with torch.no_grad():
            conv(x)  # cached
            for m in (net, conv):
                t = dict([*m.named_parameters(), *m.named_buffers()])[k]
                t.data.mul_(-3.0 if "running_var" not in k else 3.0)
            assert_grad_close(conv(x), net(x), copy.deepcopy(net).double()(x.double()), f"after editing {k}")


def test_converted_checkpoint_loads_into_unconverted_model():
    net = make_net("timm").eval()
    conv = _convert(net)
    _data_edit(conv, "timm")
    fresh = make_net("timm", seed=1).eval()
    fresh.load_state_dict(conv.state_dict(), strict=True)
    check_eval(fresh, conv)


def test_leaving_a_block_alone_is_never_a_crash():
    """A block whose conversion fails for any reason is left alone with a warning; the rest converts."""
    bad = reference.CBAM(16, 4)
    bad.spatial_gate.bn = nn.GroupNorm(1, 1)  # not a BatchNorm: the spatial norm cannot be honoured
    net = nn.Sequential(reference.CBAM(16, 4), bad).eval()
    with pytest.warns(UserWarning, match=r"left 1 \(CBAM\) unconverted: .*one-feature BatchNorm"):
        out = cbam_triton.convert(copy.deepcopy(net))
    assert isinstance(out[0], cbam_triton.CBAM) and type(out[1]) is reference.CBAM


# ----------------------------------------------------------------------------------- graph tools
@pytest.mark.parametrize("dialect", ["reference", "ultralytics"])
def test_fx_symbolic_trace_records_the_block_as_one_node(dialect):
    net = make_net(dialect).eval()
    conv = _convert(net).eval()
    gm = torch.fx.symbolic_trace(conv)
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert "2" in calls, calls
    x = _input(torch.float32, False)
    with torch.no_grad():
        ours = gm(x)
    assert_grad_close(ours, net(x), copy.deepcopy(net).double()(x.double()), "fx traced output")


@pytest.mark.parametrize("name", ["convert_sync_batchnorm", "frozen_batchnorm", "data_edit"])
def test_compile_after_transformation(name):
    torch._dynamo.reset()
    orig, conv = make_pair("reference", BY_NAME[name], BY_NAME[name].orders[-1])
    orig.eval()
    compiled = torch.compile(conv.eval(), backend="aot_eager", fullgraph=True)
    x = _input(torch.float32, False)
    with torch.no_grad():
        ours = compiled(x)
    assert_grad_close(ours, orig(x), copy.deepcopy(orig).double()(x.double()), "compiled output")
