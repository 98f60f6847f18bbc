"""Recognise CBAM modules of the common dialects and swap them for fused cbam-triton modules.

Recognition is by type where the package is importable (timm, ultralytics, the reference) and by
structure for copied code (official Jongchan/attention-module, luuuyi/CBAM.PyTorch, mmyolo).
A module that looks like a CBAM but has a configuration that cbam-triton can't reproduce exactly
(e.g. the official ``lp``/``lse`` pools, a gate with parameters) is left alone with a warning —
never converted wrongly.
"""

from __future__ import annotations

import copy
import logging
import sys
import warnings
from dataclasses import dataclass

from torch import nn

from cbam_triton import norms
from cbam_triton.converted import ConvertedCBAM, DialectSpec
from cbam_triton.fused_parts import TAIL_ACTIVATIONS_TEXT, tail_activation_name
from cbam_triton.modules import CBAM
from cbam_triton.reference import CBAM as ReferenceCBAM
from cbam_triton.schedule import validate_schedule
from cbam_triton.tail_block import FusedTailBlock, TailSpec

log = logging.getLogger("cbam_triton.converter")

_ACTS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Hardswish, nn.Mish, nn.ELU, nn.Tanh, nn.Identity)
_GATES = (nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Identity)


class UnsupportedCBAM(TypeError):
    """A module that is (probably) a CBAM but whose configuration cbam-triton can't reproduce."""


class _NotACBAM(UnsupportedCBAM):
    """A module that matches no recognised dialect at all (most modules of a model)."""


@dataclass
class Replacement:
    """One module swapped by :func:`convert`."""

    name: str
    dialect: str
    source_class: str


def _stateless(mod: nn.Module | None, allowed: tuple[type, ...], what: str) -> None:
    if mod is None:
        return
    if any(True for _ in mod.parameters()) or any(True for _ in mod.buffers()):
        raise UnsupportedCBAM(f"{what} {type(mod).__name__} has parameters or buffers")
    if isinstance(mod, allowed):
        return
    # timm's own activations (HardSigmoid, Sigmoid, ...) are stateless functions of their input
    if type(mod).__module__.startswith("timm.layers") and not list(mod.children()):
        return
    raise UnsupportedCBAM(f"{what} {type(mod).__name__} is not a known stateless activation")


def _check_linear(mod: nn.Module, what: str) -> int:
    if isinstance(mod, nn.Linear):
        return mod.in_features
    if isinstance(mod, nn.Conv2d) and mod.kernel_size == (1, 1) and mod.stride == (1, 1) and mod.groups == 1 \
            and mod.padding in ((0, 0), "valid") and mod.dilation == (1, 1):
        return mod.in_channels
    raise UnsupportedCBAM(f"{what} must be nn.Linear or a plain 1x1 nn.Conv2d, got {mod!r}")


def _check_conv(conv: nn.Module, in_ch: int) -> None:
    if not isinstance(conv, nn.Conv2d) or conv.in_channels != in_ch or conv.out_channels != 1:
        raise UnsupportedCBAM(f"spatial conv must be nn.Conv2d({in_ch}, 1, k), got {conv!r}")
    k = conv.kernel_size
    if k[0] != k[1] or k[0] % 2 == 0 or conv.padding != (k[0] // 2, k[0] // 2) or conv.stride != (1, 1) \
            or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        raise UnsupportedCBAM(f"spatial conv must be square, odd, stride 1, padding k // 2: {conv!r}")


def _check_bn(bn: nn.Module | None) -> None:
    """A one-feature BatchNorm-like norm (folded, or called as the module it is: :mod:`cbam_triton.norms`)."""
    try:
        norms.check(bn)
    except TypeError as exc:
        raise UnsupportedCBAM(str(exc)) from None


def _validate(m: nn.Module, spec: DialectSpec) -> DialectSpec:
    """Check the submodules a spec points to; raises UnsupportedCBAM naming the problem."""
    get = m.get_submodule
    c = _check_linear(get(spec.fc1), "channel MLP layer 1")
    if spec.fc2 is not None:
        _check_linear(get(spec.fc2), "channel MLP layer 2")
        if get(spec.fc2).weight.shape[0] != c:
            raise UnsupportedCBAM("channel MLP does not map C -> C")
    elif get(spec.fc1).weight.shape[0] != c:
        raise UnsupportedCBAM("channel layer does not map C -> C")
    _stateless(get(spec.act) if spec.act else None, _ACTS, "activation")
    _stateless(get(spec.channel_gate) if spec.channel_gate else None, _GATES, "channel gate")
    if spec.spatial_input is not None:
        _check_conv(get(spec.conv), 1 if spec.spatial_input == "light" else 2)
        _check_bn(get(spec.bn) if spec.bn else None)
        _stateless(get(spec.spatial_gate) if spec.spatial_gate else None, _GATES, "spatial gate")
    return DialectSpec(**{**spec.__dict__, "channels": c})


def _has(m: nn.Module, *names: str) -> bool:
    return all(hasattr(m, n) and isinstance(getattr(m, n), nn.Module) for n in names)


# ------------------------------------------------------------------------------------- recognisers
def _timm(m: nn.Module) -> DialectSpec | None:
    mod = sys.modules.get("timm.layers.cbam")
    if mod is None:
        return None
    if type(m) is mod.CbamModule:
        return DialectSpec("timm CbamModule", 0, "avg+max", "channel.fc1", "channel.fc2", "channel.act",
                           "channel.gate", "mean,max", "spatial.conv.conv", "spatial.conv.bn", "spatial.gate")
    if type(m) is mod.LightCbamModule:  # LightChannelAttn always uses sigmoid, whatever its gate
        return DialectSpec("timm LightCbamModule", 0, "light", "channel.fc1", "channel.fc2", "channel.act",
                           None, "light", "spatial.conv.conv", "spatial.conv.bn", "spatial.gate")
    return None


def _ultralytics(m: nn.Module) -> DialectSpec | None:
    mod = sys.modules.get("ultralytics.nn.modules.conv")
    typed = mod is not None and type(m) is mod.CBAM
    structural = (type(m).__name__ == "CBAM" and _has(m, "channel_attention", "spatial_attention")
                  and _has(m.channel_attention, "pool", "fc", "act") and _has(m.spatial_attention, "cv1", "act"))
    if not (typed or structural):
        return None
    if not isinstance(m.channel_attention.pool, nn.AdaptiveAvgPool2d):
        raise UnsupportedCBAM("ultralytics-style channel attention must use AdaptiveAvgPool2d(1)")
    return DialectSpec("ultralytics CBAM", 0, "avg", "channel_attention.fc", None, None, "channel_attention.act",
                       "mean,max", "spatial_attention.cv1", None, "spatial_attention.act")


def _official(m: nn.Module) -> DialectSpec | None:
    if not _has(m, "ChannelGate") or not _has(m.ChannelGate, "mlp") or not hasattr(m.ChannelGate, "pool_types"):
        return None
    pools = tuple(m.ChannelGate.pool_types)
    bad = [p for p in pools if p not in ("avg", "max")]
    if bad or not pools or len(set(pools)) != len(pools):
        raise UnsupportedCBAM(f"official ChannelGate pool_types {pools}: only 'avg' and 'max' are supported")
    mlp = m.ChannelGate.mlp
    if len(mlp) != 4 or not isinstance(mlp[2], nn.ReLU) or isinstance(mlp[0], (nn.Linear, nn.Conv2d)):
        raise UnsupportedCBAM("official ChannelGate.mlp must be Sequential(Flatten, Linear, ReLU, Linear)")
    pool = "avg+max" if len(pools) == 2 else pools[0]
    no_spatial = bool(getattr(m, "no_spatial", False)) or not _has(m, "SpatialGate")
    if no_spatial:
        return DialectSpec("official", 0, pool, "ChannelGate.mlp.1", "ChannelGate.mlp.3", "ChannelGate.mlp.2",
                           None, None, None, None, None)
    sg = m.SpatialGate
    if not _has(sg, "spatial") or not _has(sg.spatial, "conv"):
        raise UnsupportedCBAM("official SpatialGate must have spatial.conv (BasicConv)")
    if getattr(sg.spatial, "relu", None) is not None:
        raise UnsupportedCBAM("official SpatialGate with relu=True is not supported")
    bn = "SpatialGate.spatial.bn" if getattr(sg.spatial, "bn", None) is not None else None
    return DialectSpec("official", 0, pool, "ChannelGate.mlp.1", "ChannelGate.mlp.3", "ChannelGate.mlp.2",
                       None, "max,mean", "SpatialGate.spatial.conv", bn, None)


def _luuuyi(m: nn.Module) -> DialectSpec | None:
    names = [n for n, _ in m.named_children()]
    if not _has(m, "ca", "sa") or not _has(m.sa, "conv1"):
        return None
    if sorted(names) != ["ca", "sa"]:
        raise UnsupportedCBAM("luuuyi-style ca/sa inside a larger block (other children: "
                              f"{[n for n in names if n not in ('ca', 'sa')]}) can't be fused: its forward is "
                              "not known; wrap ca and sa in their own module to convert them")
    ca = m.ca
    if _has(ca, "fc") and isinstance(ca.fc, nn.Sequential) and len(ca.fc) == 3:
        fc1, act, fc2 = "ca.fc.0", "ca.fc.1", "ca.fc.2"
    elif _has(ca, "fc1", "fc2"):
        fc1, fc2 = "ca.fc1", "ca.fc2"
        act = "ca.relu1" if _has(ca, "relu1") else ("ca.relu" if _has(ca, "relu") else None)
    else:
        raise UnsupportedCBAM("luuuyi-style ca must have fc = Sequential(conv, relu, conv) or fc1/relu1/fc2")
    return DialectSpec("luuuyi", 0, "avg+max", fc1, fc2, act, None, "mean,max", "sa.conv1", None, None)


def _mmyolo(m: nn.Module) -> DialectSpec | None:
    if not _has(m, "channel_attention", "spatial_attention"):
        return None
    ca, sa = m.channel_attention, m.spatial_attention
    if not (_has(ca, "fc") and isinstance(ca.fc, nn.Sequential) and len(ca.fc) == 2 and _has(sa, "conv")
            and _has(sa.conv, "conv") and _has(ca.fc[0], "conv")):
        return None
    if getattr(ca.fc[0], "norm", None) is not None or getattr(sa.conv, "norm", None) is not None:
        raise UnsupportedCBAM("mmyolo-style CBAM with norm layers is not supported")
    if getattr(ca.fc[1], "activate", None) is not None:
        raise UnsupportedCBAM("mmyolo-style CBAM with an activation after the second fc is not supported")
    act = "channel_attention.fc.0.activate" if getattr(ca.fc[0], "activate", None) is not None else None
    gate = "channel_attention.sigmoid" if _has(ca, "sigmoid") else None
    sgate = "spatial_attention.conv.activate" if getattr(sa.conv, "activate", None) is not None else None
    if sgate is None:
        raise UnsupportedCBAM("mmyolo-style spatial attention without a gate activation")
    return DialectSpec("mmyolo", 0, "avg+max", "channel_attention.fc.0.conv", "channel_attention.fc.1.conv", act,
                       gate, "mean,max", "spatial_attention.conv.conv", None, sgate)


_RECOGNISERS = (_timm, _ultralytics, _official, _luuuyi, _mmyolo)


def from_module(m: nn.Module, *, backend: str | None = None, schedule: str = "auto") -> nn.Module:
    """The fused cbam-triton module computing the same function as CBAM module ``m``.

    ``reference.CBAM`` becomes :class:`cbam_triton.CBAM`; other dialects become
    :class:`~cbam_triton.converted.ConvertedCBAM`, which shares ``m``'s submodules (same parameters,
    same ``state_dict`` keys). ``schedule``: the fused forward's schedule (see
    :mod:`cbam_triton.schedule`). Raises :class:`UnsupportedCBAM` (a ``TypeError``) naming the reason when
    ``m`` is not a CBAM cbam-triton can reproduce exactly.
    """
    if isinstance(m, (CBAM, ConvertedCBAM)):
        return m
    if type(m) is ReferenceCBAM:
        return CBAM.from_reference(m, backend=backend, schedule=schedule)
    for recognise in _RECOGNISERS:
        spec = recognise(m)
        if spec is not None:
            return ConvertedCBAM(m, _validate(m, spec), backend=backend, schedule=schedule)
    raise _NotACBAM(f"{type(m).__name__} is not a recognised CBAM dialect")


# ------------------------------------------------------------------------------ residual blocks
#: dialect prefix of a block whose tail :func:`convert` fused (``fuse_block_tail=True``)
TAIL = "tail: "


def block_spec(m: nn.Module) -> TailSpec | None:
    """Where the parts of a ResNet block with attention are, if ``m`` is one of the supported kinds:
    timm's ``BasicBlock``/``Bottleneck`` (by type) and the official Jongchan/attention-module
    ``BasicBlock``/``Bottleneck`` (by name and structure: exactly its children, a ``cbam`` child).
    Whether the attention is a CBAM is checked by the caller."""
    mod = sys.modules.get("timm.models.resnet")
    if mod is not None and type(m) is getattr(mod, "Bottleneck", None):
        prelude = ("conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3")
        return TailSpec("timm Bottleneck", prelude, "bn3", "se", "drop_path", "downsample", "act3")
    if mod is not None and type(m) is getattr(mod, "BasicBlock", None):
        return TailSpec("timm BasicBlock", ("conv1", "bn1", "drop_block", "act1", "aa", "conv2"), "bn2", "se",
                        "drop_path", "downsample", "act2")
    names = {n for n, c in m._modules.items() if c is not None}
    if type(m).__name__ == "BasicBlock" and names - {"downsample"} == {"conv1", "bn1", "relu", "conv2", "bn2", "cbam"}:
        return TailSpec("official BasicBlock", ("conv1", "bn1", "relu", "conv2"), "bn2", "cbam", None, "downsample",
                        "relu")
    if type(m).__name__ == "Bottleneck" and names - {"downsample"} == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                                                                         "relu", "cbam"}:
        return TailSpec("official Bottleneck", ("conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3"), "bn3",
                        "cbam", None, "downsample", "relu")
    return None


def _tail_refusal(m: nn.Module, spec: TailSpec) -> str | None:
    """Why the fused tail can never reproduce block ``m`` (left unfused), or None."""
    act = getattr(m, spec.act, None)
    if tail_activation_name(act) is None:
        return (f"its activation {type(act).__name__} after the addition (the fused tail applies "
                f"{TAIL_ACTIVATIONS_TEXT})")
    norm = getattr(m, spec.norm, None)
    channels = norms.num_features(norm) if norm is not None else None
    if norm is not None and channels is None:
        return f"its last norm {type(norm).__name__} is not a BatchNorm (the fused tail folds an eval-mode BatchNorm)"
    drop = getattr(m, spec.drop_path, None) if spec.drop_path else None
    if drop is not None and not isinstance(drop, nn.Identity) and not (
            type(drop).__name__ == "DropPath" and type(drop).__module__.startswith("timm.layers")):
        return f"its drop-path {type(drop).__name__} is not timm's DropPath"
    conv = getattr(m, spec.prelude[-1], None)
    out_channels = getattr(conv, "out_channels", None)
    if channels is not None and out_channels is not None and out_channels != channels:
        return f"its last conv has {out_channels} channels but its last norm {channels}"
    return None


def _summary(done: list[Replacement]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in done:
        counts[r.dialect] = counts.get(r.dialect, 0) + 1
    return counts


def convert_with_report(model: nn.Module, *, inplace: bool = True, backend: str | None = None,
                        schedule: str = "auto", fuse_block_tail: bool = False) -> tuple[nn.Module, list[Replacement]]:
    """Like :func:`convert`, returning ``(model, replacements)``."""
    if not inplace:
        model = copy.deepcopy(model)
    done: list[Replacement] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            full = f"{prefix}{name}"
            if fuse_block_tail:
                block, handled = _try_block(child, full)
                if block is not None:
                    setattr(parent, name, block)
                if handled:
                    continue
            new = _try(child, full)
            if new is not None:
                setattr(parent, name, new)
            else:
                visit(child, full + ".")

    def _try_block(m: nn.Module, name: str) -> tuple[nn.Module | None, bool]:
        """(the block with its tail fused or None, whether the block has been dealt with)."""
        spec = block_spec(m)
        attn = getattr(m, spec.attn, None) if spec is not None else None
        if spec is None or attn is None:
            return None, False
        if not isinstance(attn, (CBAM, ConvertedCBAM)):
            try:
                from_module(attn, backend=backend)
            except Exception:  # noqa: BLE001 - not a CBAM (SE, ECA, ...), or one convert leaves alone (and says why)
                return None, False
        reason = _tail_refusal(m, spec)
        if reason is not None:
            warnings.warn(f"cbam_triton.convert: left the tail of {name or type(m).__name__} ({type(m).__name__}) "
                          f"unfused: {reason}", stacklevel=4)
            return None, False
        new_attn = _try(attn, f"{name}.{spec.attn}")
        if new_attn is not None:
            setattr(m, spec.attn, new_attn)
        visit_others = [n for n in m._modules if n != spec.attn]
        for child_name in visit_others:  # CBAMs elsewhere in the block (none in the supported kinds)
            child = m._modules[child_name]
            if child is not None:
                visit(child, f"{name}.{child_name}.")
        try:
            block = FusedTailBlock(m, spec, backend=backend, schedule=schedule)
        except Exception as exc:  # noqa: BLE001 - one block never fails the whole convert
            warnings.warn(f"cbam_triton.convert: left the tail of {name or type(m).__name__} ({type(m).__name__}) "
                          f"unfused: {type(exc).__name__}: {exc}", stacklevel=4)
            return None, True
        done.append(Replacement(name, TAIL + spec.kind, f"{type(m).__module__}.{type(m).__qualname__}"))
        return block, True

    def _try(m: nn.Module, name: str) -> nn.Module | None:
        try:
            new = from_module(m, backend=backend, schedule=schedule)
        except UnsupportedCBAM as exc:  # warn about CBAMs we can't reproduce, and about unrecognised "*cbam*"
            if not isinstance(exc, _NotACBAM) or "cbam" in type(m).__name__.lower():
                warnings.warn(f"cbam_triton.convert: left {name or type(m).__name__} ({type(m).__name__}) "
                              f"unconverted: {exc}", stacklevel=3)
            return None
        except Exception as exc:  # one block that fails to convert never fails the whole convert
            warnings.warn(f"cbam_triton.convert: left {name or type(m).__name__} ({type(m).__name__}) "
                          f"unconverted: {type(exc).__name__}: {exc}", stacklevel=3)
            return None
        if new is m:
            return None
        dialect = new.spec.dialect if isinstance(new, ConvertedCBAM) else "reference"
        done.append(Replacement(name, dialect, f"{type(m).__module__}.{type(m).__qualname__}"))
        return new

    block, handled = _try_block(model, "") if fuse_block_tail else (None, False)
    top = block if handled else _try(model, "")
    if top is not None:
        model = top
    elif not handled:
        visit(model, "")
    log.info("cbam_triton.convert: replaced %d CBAM module(s): %s", len(done), _summary(done))
    return model, done


def convert(model: nn.Module, *, inplace: bool = True, backend: str | None = None,
            schedule: str = "auto", verbose: bool = False, fuse_block_tail: bool = False) -> nn.Module:
    """Replace every recognised CBAM module in ``model`` by its fused cbam-triton equivalent.

    Returns the model (a deep copy when ``inplace=False``; the new module when ``model`` itself is a
    CBAM). Converted modules keep the source's parameters, buffers, ``state_dict`` keys and
    train/eval mode: BN is folded in eval and uses batch statistics in training. What was replaced
    is logged (logger ``cbam_triton.converter``) and printed with ``verbose=True``; use
    :func:`convert_with_report` for the list. CBAM-like modules that can't be reproduced exactly
    are left alone with a warning. ``schedule``: the fused forward's schedule of every converted
    module (``"auto"``, ``"l2"``, ``"stream"``; see :mod:`cbam_triton.schedule`).

    ``fuse_block_tail=True`` (off by default) also replaces every ResNet block with CBAM that ends in
    ``act(cbam(norm(y)) + shortcut)`` — timm's ``BasicBlock``/``Bottleneck`` with
    ``attn_layer="cbam"``, the official Jongchan/attention-module ``BasicBlock``/``Bottleneck`` — by a
    :class:`~cbam_triton.tail_block.FusedTailBlock`: same children and ``state_dict``, its eval forward
    runs the block's last norm, the CBAM, the residual addition and the activation as one fused
    operator (:func:`cbam_triton.functional.cbam_tail`); ``train()`` runs the original block's
    forward. A block whose tail can't be reproduced exactly (another activation, a norm that is not
    a BatchNorm) keeps its own forward, with a warning naming why (its CBAM is still converted).
    """
    validate_schedule(schedule)
    model, done = convert_with_report(model, inplace=inplace, backend=backend, schedule=schedule,
                                      fuse_block_tail=fuse_block_tail)
    if verbose:
        cbams = [r for r in done if not r.dialect.startswith(TAIL)]
        tails = [r for r in done if r.dialect.startswith(TAIL)]
        counts = _summary(cbams)
        print(f"cbam_triton.convert: replaced {len(cbams)} CBAM module(s)"
              + (": " + ", ".join(f"{k} x{v}" for k, v in counts.items()) if counts else "")
              + (f"; fused the tail of {len(tails)} block(s): "
                 + ", ".join(f"{k[len(TAIL):]} x{v}" for k, v in _summary(tails).items()) if tails else ""))
    return model
