"""Model structure: BN folding, quantizable-layer discovery and the per-layer policy.

Everything is found by running the model once on a calibration batch with hooks, so the
order is the execution order (not the registration order) and only layers that run count.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import warnings
from typing import Any, Callable, Iterable, cast

import torch
import torch.nn as nn

from lowbit.config import check_bits

log = logging.getLogger("lowbit")

QUANTIZABLE = (nn.Linear, nn.Conv2d)
LOOKUPS = (nn.Embedding,)  # quantized with embedding_bits only: weight-only, nearest rounding
_SPEC_FIELDS = ("w_bits", "a_bits", "granularity", "group_size", "symmetric")


@dataclasses.dataclass
class LayerSpec:
    """What one quantizable layer gets. ``a_bits=None`` leaves its input in float."""

    name: str
    kind: str  # "linear" | "conv" | "embedding"
    w_bits: int
    a_bits: int | None
    granularity: str  # "tensor" | "channel" | "group"
    group_size: int | None
    symmetric: bool
    order: int  # execution order among quantizable layers
    reads_model_input: bool  # its input is the network input (never quantized)
    notes: list[str] = dataclasses.field(default_factory=list)


def get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the submodule ``name`` ("a.b.c" -> (a.b, "c"))."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` of model with ``module``, under every name it is registered
    (a table tied between an encoder and a decoder is one module under two names)."""
    old = model.get_submodule(name)
    aliases = [n for n, m in model.named_modules(remove_duplicate=False) if m is old and n] or [name]
    for alias in aliases:
        parent, child = get_parent(model, alias)
        setattr(parent, child, module)


@dataclasses.dataclass
class Trace:
    """One forward pass seen by hooks: the leaf calls in order, with tensor identities."""

    order: list[str]  # names of leaf modules in call order (first call of each)
    consumed_model_input: set[str]
    bn_after_conv: list[tuple[str, str]]  # (conv name, bn name) where bn read exactly conv's output


def trace(model: nn.Module, call: Callable[[], Any], model_inputs: Iterable[torch.Tensor]) -> Trace:
    """Run ``call()`` (a forward pass of model) under hooks on its Linear / Conv2d / Embedding /
    BatchNorm modules: their call order, which of them read one of ``model_inputs`` directly,
    and which BatchNorms read exactly a Conv2d's output (the pairs fold_bn folds)."""
    input_ids = {id(t) for t in model_inputs}
    order: list[str] = []
    seen: set[str] = set()
    reads_input: set[str] = set()
    # id(conv output) -> (conv name, the tensor): holding the tensor keeps its id unique.
    last_out: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: list[tuple[str, str]] = []
    hooks = []

    def hook(name: str, mod: nn.Module):
        def fn(m, args, out):
            if name not in seen:
                seen.add(name)
                order.append(name)
            x = args[0] if args else None
            if isinstance(x, torch.Tensor):
                if id(x) in input_ids:
                    reads_input.add(name)
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    producer = last_out.get(id(x))
                    if producer is not None:
                        pairs.append((producer[0], name))
            if isinstance(out, torch.Tensor) and isinstance(m, nn.Conv2d):
                last_out[id(out)] = (name, out)
        return fn

    for name, mod in model.named_modules():
        if name and isinstance(mod, (*QUANTIZABLE, *LOOKUPS, nn.modules.batchnorm._BatchNorm)):
            hooks.append(mod.register_forward_hook(hook(name, mod)))
    try:
        with torch.no_grad():
            call()
    finally:
        for h in hooks:
            h.remove()
    return Trace(order, reads_input, list(dict.fromkeys(pairs)))


def fold_bn(model: nn.Module, tr: Trace) -> list[str]:
    """Fold each BatchNorm2d that reads exactly a Conv2d's output into that conv (in place).

    W' = W * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta; the BN
    becomes nn.Identity. Returns the folded conv names.
    """
    folded = []
    for conv_name, bn_name in tr.bn_after_conv:
        conv = cast(nn.Conv2d, model.get_submodule(conv_name))  # trace() pairs BNs with Conv2d outputs only
        bn = model.get_submodule(bn_name)
        if (not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats or bn.running_var is None
                or bn.running_mean is None):
            continue
        with torch.no_grad():
            std = torch.sqrt(bn.running_var + bn.eps)
            gamma = bn.weight if bn.affine else torch.ones_like(std)
            beta = bn.bias if bn.affine else torch.zeros_like(std)
            factor = gamma / std
            conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new_bias = (bias - bn.running_mean) * factor + beta
            conv.bias = nn.Parameter(new_bias.detach().clone())
        set_module(model, bn_name, nn.Identity())
        folded.append(conv_name)
    return folded


def _matches(key: Any, name: str, module: nn.Module) -> bool:
    if isinstance(key, type):
        return isinstance(module, key)
    if isinstance(key, str) and key.startswith("re:"):
        return re.fullmatch(key[3:], name) is not None
    return key == name


def _check_keys(keys: Iterable[Any], arg: str) -> None:
    for k in keys:
        if not (isinstance(k, str) or (isinstance(k, type) and issubclass(k, nn.Module))):
            raise TypeError(f"{arg} keys must be module names, 're:<regex>' strings or nn.Module types, got {k!r}")
        if isinstance(k, str) and k.startswith("re:"):
            try:
                re.compile(k[3:])
            except re.error as e:
                raise ValueError(f"{arg}: invalid regex {k!r}: {e}") from e


def _why_left_float(mod: nn.Module) -> str | None:
    """Why no fake-quant layer can stand in for ``mod`` (a Linear, Conv2d or Embedding); None
    if one can. The swap keeps the weight and the base class's computation, nothing else."""
    base = next(b for b in (nn.Linear, nn.Conv2d, nn.Embedding) if isinstance(mod, b))
    if type(mod).forward is not base.forward:  # e.g. LoRA wrappers, scaled token embeddings
        return f"{type(mod).__name__} has its own forward, which a quantized {base.__name__} would drop"
    if isinstance(mod, nn.Conv2d) and mod.padding_mode != "zeros":
        return f"padding_mode={mod.padding_mode!r} is not supported"
    if isinstance(mod, nn.Embedding) and mod.max_norm is not None:
        return "max_norm renormalises its weight in every lookup"
    return None


def plan_layers(
    model: nn.Module,
    tr: Trace,
    *,
    w_bits: int,
    a_bits: int | None,
    granularity: str,
    group_size: int | None,
    symmetric: bool,
    ignore: Iterable[Any],
    overrides: dict[Any, dict[str, Any]] | None,
    filter_fn: Callable[[str, nn.Module], bool] | None,
    keep_first_last: int | None,
    embedding_bits: int | None = None,
) -> list[LayerSpec]:
    """The quantizable layers in execution order, each with its bits and grid (the policy).
    With ``embedding_bits``, the nn.Embedding lookups that ran are planned too (kind
    "embedding", weight-only); keep_first_last counts Linear / Conv2d layers only."""
    ignore = list(ignore)
    overrides = dict(overrides or {})
    _check_keys(ignore, "ignore")
    _check_keys(overrides, "overrides")
    for key, ov in overrides.items():
        if not isinstance(ov, dict):
            raise TypeError(f"overrides[{key!r}] must be a dict of {_SPEC_FIELDS}, got {type(ov).__name__}")
        bad = sorted(set(ov) - set(_SPEC_FIELDS))
        if bad:
            raise ValueError(f"overrides[{key!r}] has unknown field(s) {bad}; allowed: {list(_SPEC_FIELDS)}")

    candidates = []
    for name in tr.order:
        mod = model.get_submodule(name)
        if not isinstance(mod, QUANTIZABLE) and not (embedding_bits is not None and isinstance(mod, LOOKUPS)):
            continue
        if filter_fn is not None and not filter_fn(name, mod):
            continue
        candidates.append((name, mod))

    used_ignore: set[str] = set()
    specs: list[LayerSpec] = []
    for name, mod in candidates:
        hit = [k for k in ignore if _matches(k, name, mod)]
        used_ignore.update(map(repr, hit))
        if hit:
            continue
        why = _why_left_float(mod)
        if why:
            warnings.warn(f"layer '{name}': {why}; left in float", stacklevel=3)
            continue
        if isinstance(mod, LOOKUPS):
            specs.append(LayerSpec(name, "embedding", cast(int, embedding_bits), None, granularity, group_size,
                                   symmetric, len(specs), False))
            continue
        specs.append(LayerSpec(name, "linear" if isinstance(mod, nn.Linear) else "conv", w_bits, a_bits,
                               granularity, group_size, symmetric, len(specs), name in tr.consumed_model_input))
    for k in ignore:
        if repr(k) not in used_ignore:
            warnings.warn(f"ignore pattern {k!r} matched no quantizable layer", stacklevel=3)
    compute = [s for s in specs if s.kind != "embedding"]
    if not compute:
        raise ValueError("no quantizable layer (nn.Linear / nn.Conv2d) left to quantize: the model has none "
                         "that ran on the calibration batch, or ignore/filter_fn excluded them all "
                         "(embedding_bits quantizes nn.Embedding tables beside such layers, not alone)")

    if keep_first_last is not None:
        first, last = compute[0], compute[-1]
        for s, where in ((first, "first"), (last, "last")):
            if s.w_bits < keep_first_last:
                s.w_bits = keep_first_last
                s.notes.append(f"{where} layer kept at W{keep_first_last}")
        if last.a_bits is not None and last.a_bits < keep_first_last:
            last.a_bits = keep_first_last
            last.notes.append(f"last layer input kept at A{keep_first_last}")

    for s in specs:
        mod = model.get_submodule(s.name)
        for key, ov in overrides.items():
            if _matches(key, s.name, mod):
                for field, value in ov.items():
                    setattr(s, field, value)
                s.notes.append(f"override {key!r}")
        check_bits(f"w_bits of layer '{s.name}'", s.w_bits)
        check_bits(f"a_bits of layer '{s.name}'", s.a_bits, allow_none=True)
        if s.kind == "embedding" and s.a_bits is not None:
            s.a_bits = None
            s.notes.append("a lookup: no input activation to quantize")
        if s.reads_model_input and s.a_bits is not None:
            s.a_bits = None
            s.notes.append("reads the network input: not quantized")
        if s.granularity == "group":
            k = cast(torch.Tensor, mod.weight)[0].numel()  # planned layers are Linear / Conv2d / Embedding
            if s.group_size is None or k % s.group_size:
                size = "row length" if s.kind == "embedding" else "input size"
                warnings.warn(f"layer '{s.name}': group_size={s.group_size} does not divide its {size} {k}; "
                              "it is quantized per channel instead", stacklevel=3)
                s.granularity, s.group_size = "channel", None
                s.notes.append("group_size does not divide K: per channel")
    log.debug("planned %d layers", len(specs))
    return specs
