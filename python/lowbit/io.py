"""Saving and loading quantized models: ``lowbit.save(model, path)``, ``lowbit.load(path, model=...)``.

The file is a `safetensors <https://github.com/huggingface/safetensors>`_ file: tensors plus one
JSON metadata entry. Nothing is pickled, so loading never runs code from the file.

What is stored
--------------
* Every entry of ``model.state_dict()`` as a tensor, except the integer weight codes of
  fake-quant layers (QuantLinear / QuantConv2d / QuantEmbedding), which are stored as a dense
  little-endian bitstream of ``w_bits`` bits per code (``<name>.codes``), so the file size
  reflects the bits. Packed layers (PackedLinear / PackedConv2d / PackedEmbedding) store their
  packed arrays as they are (pack.h).
* Metadata (key ``"lowbit"``, JSON): format version, packed-format version, lowbit and torch
  versions, and per quantized layer its type, constructor arguments, w_bits, granularity,
  group size, method, activation quantizer (uniform, AQuant's borders or N2UQ's LTQ: kind,
  shape, floors and flags; its tensors are in the state dict); the modules that are
  ``nn.Identity`` in the saved model (BatchNorm folded into the preceding conv); the
  QuantReport if the model has one.
* A SHA-256 over the metadata and every tensor's name, dtype, shape and bytes (key
  ``"lowbit_sha256"``): a truncated, corrupted or edited file raises :class:`LowbitFileError`.

Loading needs the architecture
------------------------------
The file holds weights, not code. ``lowbit.load(path, model=skeleton)`` takes the float model
(the same class the quantized model was made from, e.g. freshly constructed, weights
irrelevant), replaces the layers named in the metadata with the Quant* / Packed* layers
built from the file, replaces the modules recorded as folded BN with
``nn.Identity``, then loads every remaining tensor with strict key and shape checks. It returns
a new model (the skeleton is left as it was) unless ``inplace=True``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn as nn

from lowbit import _native
from lowbit.graph import set_module
from lowbit.methods.multipoint import (
    MultipointConv2d,
    MultipointLinear,
    MultipointMixin,
    packed_multipoint_classes,
)
from lowbit.pack import PackedConv2d, PackedEmbedding, PackedLayer, PackedLinear
from lowbit.quantizers import (
    QuantConv2d,
    QuantEmbedding,
    QuantLayer,
    QuantLinear,
    UniformActQuantizer,
)
from lowbit.threshold import BorderActQuantizer, LTQActQuantizer

__all__ = ["save", "load", "read_metadata", "LowbitFileError", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_META_KEY, _SUM_KEY = "lowbit", "lowbit_sha256"
_ACT_TYPES: dict[str, type[nn.Module]] = {
    "UniformActQuantizer": UniformActQuantizer, "LTQActQuantizer": LTQActQuantizer,
    "BorderActQuantizer": BorderActQuantizer}
_LAYER_TYPES: dict[str, type[nn.Module]] = {
    "QuantLinear": QuantLinear, "QuantConv2d": QuantConv2d, "QuantEmbedding": QuantEmbedding,
    "PackedLinear": PackedLinear, "PackedConv2d": PackedConv2d, "PackedEmbedding": PackedEmbedding,
    "MultipointLinear": MultipointLinear, "MultipointConv2d": MultipointConv2d,
    **{cls.__name__: cls for cls in packed_multipoint_classes()}}
# Code tensors of fake-quant layers stored as a dense bitstream: leaf name -> the metadata key of their bits.
_STREAMS = {"codes": "w_bits", "point_codes": "point_bits", "wide_codes": "wide_bits"}


class LowbitFileError(ValueError):
    """The file is not a lowbit model file, or it is truncated, corrupted or edited."""


# -- bitstream of b-bit codes -----------------------------------------------------------------

_CHUNK = 1 << 20


def codes_to_bitstream(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes < 2^bits -> ceil(n * bits / 8) bytes; code i occupies bits [i*bits, (i+1)*bits)
    of the stream, least significant bit first."""
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if flat.size and int(flat.max()) >= 1 << bits:
        raise ValueError(f"codes do not fit in {bits} bits")
    out = []
    for i in range(0, flat.size, _CHUNK * 8):  # chunks of a multiple of 8 codes: byte aligned
        c = flat[i:i + _CHUNK * 8]
        b = np.unpackbits(c[:, None], axis=1, bitorder="little")[:, :bits]
        out.append(np.packbits(b.reshape(-1), bitorder="little"))
    return np.concatenate(out) if out else np.zeros(0, np.uint8)


def bitstream_to_codes(stream: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of codes_to_bitstream: n uint8 codes."""
    stream = np.ascontiguousarray(stream, dtype=np.uint8).reshape(-1)
    if stream.size != (n * bits + 7) // 8:
        raise LowbitFileError(f"a {bits}-bit stream of {n} codes has {(n * bits + 7) // 8} bytes, got {stream.size}")
    out = np.empty(n, np.uint8)
    weights = (1 << np.arange(bits)).astype(np.uint8)
    for i in range(0, n, _CHUNK * 8):
        m = min(_CHUNK * 8, n - i)
        b = np.unpackbits(stream[i * bits // 8:(i * bits + m * bits + 7) // 8], bitorder="little")[:m * bits]
        out[i:i + m] = (b.reshape(m, bits) * weights).sum(axis=1, dtype=np.uint8)
    return out


# -- saving -----------------------------------------------------------------------------------


def _act_meta(aq: nn.Module | None, name: str) -> dict | None:
    if aq is None:
        return None
    kind = type(aq).__name__
    if type(aq) not in _ACT_TYPES.values():
        raise ValueError(f"layer '{name}': cannot save activation quantizer {kind} "
                         f"(this file format stores {', '.join(_ACT_TYPES)})")
    d: dict[str, Any] = {"type": kind, "bits": aq.bits, "signed": aq.signed, "drop_prob": aq.drop_prob}
    # Threshold quantizers: their tensors are in the state dict; the shapes and floors are not.
    if isinstance(aq, LTQActQuantizer):
        d.update(channels=aq.channels, channel_axis=aq.channel_axis, a_min=aq.a_min)
    elif isinstance(aq, BorderActQuantizer):
        d.update(channels=aq.channels, channel_axis=aq.channel_axis, parameterization=aq.parameterization,
                 eps=aq.eps, tau=aq.tau, hard=aq.hard, learned_for=getattr(aq, "learned_for", None))
    return d


def _layer_meta(name: str, mod: QuantLayer | PackedLayer, methods: dict[str, str]) -> dict[str, Any]:
    if type(mod).__name__ not in _LAYER_TYPES:  # e.g. a subclass with state this format does not know
        raise ValueError(f"layer '{name}': lowbit.save cannot store a {type(mod).__name__} yet "
                         f"(it stores {', '.join(_LAYER_TYPES)})")
    d: dict[str, Any] = {"type": type(mod).__name__, "w_bits": mod.w_bits, "granularity": mod.granularity,
                         "method": methods.get(name), "has_bias": mod.bias is not None,
                         "act_quant": _act_meta(mod.act_quant, name)}
    if isinstance(mod, QuantLayer):
        d["group_size"] = mod.group_size
        d["scale_shape"] = list(mod.scale.shape)
    else:
        d["group_size"] = mod.group_size or None
        d["container_bits"] = mod.bits
        d["dynamic_act"] = mod.dynamic_act
    if isinstance(mod, MultipointMixin):  # point rows and wider rows: shapes and bit widths
        d.update(points=mod.num_points, point_bits=mod.point_bits, wide=int(mod.wide_channel.numel()),
                 wide_bits=mod.wide_bits, wide_scale_shape=list(mod.wide_scale.shape))
    elif isinstance(mod, packed_multipoint_classes()):  # the point rows follow the N base rows
        d["points"] = int(mod.num_points)
    if isinstance(mod, (QuantLinear, PackedLinear)):
        d["args"] = {"in_features": mod.in_features, "out_features": mod.out_features}
    elif isinstance(mod, (QuantEmbedding, PackedEmbedding)):
        d["args"] = {"num_embeddings": mod.num_embeddings, "embedding_dim": mod.embedding_dim,
                     "padding_idx": mod.padding_idx}
    else:
        conv = cast("QuantConv2d | PackedConv2d", mod)  # _LAYER_TYPES (checked above) has no other kind
        d["args"] = {"in_channels": conv.in_channels, "out_channels": conv.out_channels,
                     "kernel_size": list(conv.kernel_size), "stride": list(conv.stride),
                     "padding": conv.padding if isinstance(conv.padding, str) else list(conv.padding),
                     "dilation": list(conv.dilation), "groups": conv.groups}
    return d


def _digest(meta_json: str, tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{t.dtype.str}\0{list(t.shape)}\0".encode())
        h.update(np.ascontiguousarray(t).tobytes())
    return h.hexdigest()


def save(model: nn.Module, path: str | Path) -> None:
    """Write a fake-quant or packed model (or any mix) to ``path`` (safetensors + JSON metadata)."""
    from safetensors.numpy import save as st_save

    import lowbit

    report = getattr(model, "lowbit_report", None)
    methods: dict[str, str] = {}
    if report is not None and hasattr(report, "layers"):
        methods = {row.name: row.method for row in report.layers}
    layers, identity = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, (QuantLayer, PackedLayer)):
            if not name:
                raise ValueError("save a model that contains the quantized layer, not the layer itself")
            if isinstance(mod, QuantLayer) and mod.weight_override is not None:
                raise ValueError(f"layer '{name}': a method is still optimising it (weight_override is set)")
            layers[name] = _layer_meta(name, mod, methods)
        elif isinstance(mod, nn.Identity) and name:
            identity.append(name)
    tensors: dict[str, np.ndarray] = {}
    for key, t in model.state_dict().items():
        t = t.detach().cpu()
        owner, _, leaf = key.rpartition(".")
        if leaf in _STREAMS and owner in layers and not layers[owner]["type"].startswith("Packed"):
            arr = codes_to_bitstream(t.numpy(), layers[owner][_STREAMS[leaf]])
            if leaf == "codes":
                layers[owner]["codes_shape"] = list(t.shape)
        else:
            if t.dtype == torch.bfloat16:
                raise ValueError(f"tensor '{key}': bfloat16 is not supported by this file format")
            arr = np.array(t.numpy(), copy=True)
        tensors[key] = np.ascontiguousarray(arr)
    forms = {("packed" if m["type"].startswith("Packed") else "fake_quant") for m in layers.values()}
    meta = {
        "format": "lowbit", "format_version": FORMAT_VERSION, "pack_format_version": _native.PACK_FORMAT_VERSION,
        "lowbit_version": lowbit.__version__, "torch_version": torch.__version__,
        "form": forms.pop() if len(forms) == 1 else ("mixed" if forms else "float"),
        "layers": layers, "identity": identity,
        "report": json.loads(report.to_json()) if report is not None and hasattr(report, "to_json") else None,
    }
    meta_json = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=True)
    blob = st_save(tensors, metadata={_META_KEY: meta_json, _SUM_KEY: _digest(meta_json, tensors)})
    Path(path).write_bytes(blob)


# -- loading ----------------------------------------------------------------------------------


def _read(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from safetensors.numpy import load as st_load

    data = Path(path).read_bytes()
    try:
        if len(data) < 8:
            raise LowbitFileError("file is shorter than a safetensors header")
        (n,) = struct.unpack("<Q", data[:8])
        if n > len(data) - 8:
            raise LowbitFileError(f"header claims {n} bytes but the file has {len(data) - 8} after it (truncated?)")
        header = json.loads(data[8:8 + n].decode("utf-8"))
        if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
            raise LowbitFileError("no metadata: not a lowbit model file")
        md = header["__metadata__"]
        if _META_KEY not in md or _SUM_KEY not in md:
            raise LowbitFileError("no lowbit metadata: not a lowbit model file")
        meta_json, digest = md[_META_KEY], md[_SUM_KEY]
        meta = json.loads(meta_json)
        tensors = st_load(data)
    except LowbitFileError:
        raise
    except Exception as e:  # malformed JSON / UTF-8 / safetensors layout
        raise LowbitFileError(f"{path}: not a readable lowbit file ({type(e).__name__}: {e})") from None
    if _digest(meta_json, tensors) != digest:
        raise LowbitFileError(f"{path}: checksum mismatch: the file is corrupted or was modified")
    if not isinstance(meta, dict) or meta.get("format") != "lowbit":
        raise LowbitFileError(f"{path}: not a lowbit model file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise LowbitFileError(f"{path}: file format version {meta.get('format_version')!r}; this lowbit reads "
                              f"version {FORMAT_VERSION}")
    return meta, tensors


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a lowbit file (verified), without building a model."""
    return _read(path)[0]


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise LowbitFileError(what)


def _tensor(tensors: dict[str, np.ndarray], key: str, dtype: npt.DTypeLike, shape: tuple | None = None) -> torch.Tensor:
    _need(key in tensors, f"missing tensor '{key}'")
    a = tensors.pop(key)
    _need(a.dtype == dtype, f"tensor '{key}' must be {np.dtype(dtype).name}, got {a.dtype}")
    _need(shape is None or tuple(a.shape) == tuple(shape), f"tensor '{key}' must have shape {tuple(shape or ())}, "
                                                          f"got {tuple(a.shape)}")
    return torch.from_numpy(np.array(a, copy=True))


def _number(d: dict, key: str, name: str, lo: float, hi: float, default: Any = None) -> float:
    v = d.get(key, default)
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi):
        raise LowbitFileError(f"layer '{name}': bad activation {key} {v!r}")
    return float(v)


def _build_act(name: str, d: Any, tensors: dict[str, np.ndarray], inputs: int) -> nn.Module | None:
    """The layer's activation quantizer from its metadata and tensors (popped from ``tensors``);
    ``inputs``: the layer's input channels, which a per-channel threshold quantizer must match."""
    if d is None:
        return None
    _need(isinstance(d, dict) and isinstance(d.get("type"), str) and d["type"] in _ACT_TYPES,
          f"layer '{name}': unknown activation quantizer")
    bits = d.get("bits")
    _need(isinstance(bits, int) and 2 <= bits <= 8, f"layer '{name}': bad activation bits {bits!r}")
    signed = d.get("signed", False)
    _need(isinstance(signed, bool), f"layer '{name}': bad activation 'signed' {signed!r}")
    drop = _number(d, "drop_prob", name, 0.0, 1.0, default=1.0)
    key = f"{name}.act_quant."
    aq: UniformActQuantizer | LTQActQuantizer | BorderActQuantizer
    if d["type"] == "UniformActQuantizer":
        aq = UniformActQuantizer(bits, signed=signed)
        aq.scale = _tensor(tensors, key + "scale", np.float32, (1,))
        aq.zero = _tensor(tensors, key + "zero", np.float32, (1,))
    else:
        channels, axis = d.get("channels"), d.get("channel_axis")
        _need(channels in (1, inputs) and not isinstance(channels, bool) and axis in (1, -1)
              and not isinstance(axis, bool), f"layer '{name}': bad activation channels {channels!r} / axis {axis!r}")
        zero = float(_tensor(tensors, key + "zero", np.float32, (1,)))
        _need(np.isfinite(zero) and zero == round(zero), f"layer '{name}': activation zero point must be an integer")
        if d["type"] == "LTQActQuantizer":
            ltq = LTQActQuantizer(bits, 1.0, zero, signed, channels=channels, channel_axis=axis,
                                  a_min=_number(d, "a_min", name, 1e-30, 1e30))
            shapes = {"start": (channels,), "a": (channels, ltq.qmax), "in_scale": (channels,), "scale": (1,),
                      "unit": (1,)}
            aq = ltq
        else:
            param = d.get("parameterization")
            _need(param in ("table", "affine"), f"layer '{name}': bad activation parameterization {param!r}")
            border = BorderActQuantizer(bits, 1.0, zero, signed, channels=channels, channel_axis=axis,
                                        parameterization=param, eps=_number(d, "eps", name, 1e-30, 0.499999))
            border.tau = _number(d, "tau", name, 1e-30, 1e30)
            border.hard = d.get("hard")
            _need(isinstance(border.hard, bool), f"layer '{name}': bad activation hard {border.hard!r}")
            learned_for = d.get("learned_for")
            _need(learned_for is None or isinstance(learned_for, str), f"layer '{name}': bad activation learned_for")
            if learned_for is not None:
                border.learned_for = learned_for
            shapes = {"border_param": (channels, 2 if param == "affine" else border.qmax), "scale": (1,)}
            aq = border
        with torch.no_grad():
            for attr, shape in shapes.items():
                getattr(aq, attr).copy_(_tensor(tensors, key + attr, np.float32, shape))
    aq.drop_prob = drop
    return aq


def _build_layer(name: str, d: Any, tensors: dict[str, np.ndarray]) -> nn.Module:
    _need(isinstance(d, dict) and isinstance(d.get("type"), str) and d["type"] in _LAYER_TYPES,
          f"layer '{name}': unknown layer type")
    kind = d["type"]
    w_bits = d.get("w_bits")
    _need(isinstance(w_bits, int) and 2 <= w_bits <= 8, f"layer '{name}': bad w_bits {w_bits!r}")
    args = d.get("args")
    _need(isinstance(args, dict), f"layer '{name}': missing constructor arguments")
    try:
        if kind.endswith("Linear"):
            in_f, out_f = _int(args["in_features"]), _int(args["out_features"])
            geo: tuple = (in_f, out_f)
            N, K, inputs = out_f, in_f, in_f
        elif kind.endswith("Embedding"):
            N, K = _int(args["num_embeddings"]), _int(args["embedding_dim"])
            pad = args.get("padding_idx")
            _need(pad is None or (not isinstance(pad, bool) and isinstance(pad, int) and -N <= pad < N),
                  f"layer '{name}': bad padding_idx {pad!r}")
            geo = (N, K, pad)
            inputs = 0  # token ids
        else:
            cin, cout, groups = _int(args["in_channels"]), _int(args["out_channels"]), _int(args["groups"])
            ks, stride, dil = _ints(args["kernel_size"]), _ints(args["stride"]), _ints(args["dilation"])
            pad = args["padding"]
            pad = pad if pad in ("same", "valid") else _ints(pad)
            _need(groups > 0 and cin % groups == 0 and cout % groups == 0 and min(*ks, *stride, *dil) > 0,
                  f"layer '{name}': bad conv geometry")
            geo = (cin, cout, ks, stride, pad, dil, groups)
            N, K, inputs = cout, cin // groups * ks[0] * ks[1], cin
    except (KeyError, TypeError, ValueError) as e:
        raise LowbitFileError(f"layer '{name}': bad constructor arguments ({e})") from None
    _need(N > 0 and K > 0, f"layer '{name}': empty weight")
    # A packed multipoint layer's matrix, and so its bias, has its P point rows after the N base rows.
    packed_points = kind.startswith("PackedMultipoint")
    P = _int(d.get("points")) if packed_points else 0
    bias = _tensor(tensors, f"{name}.bias", np.float32, (N + P,)) if d.get("has_bias") else None
    act = _build_act(name, d.get("act_quant"), tensors, inputs)
    try:
        if not kind.startswith("Packed"):
            rg = d.get("scale_shape")
            _need(isinstance(rg, list) and len(rg) == 2, f"layer '{name}': bad scale shape")
            R, G = _int(rg[0]), _int(rg[1])
            _need(R in (1, N) and G >= 1 and K % G == 0, f"layer '{name}': bad scale shape {rg}")
            cs = d.get("codes_shape")
            _need(cs == [N, K], f"layer '{name}': bad codes shape {cs!r}, expected {[N, K]}")
            codes = _stream(tensors, f"{name}.codes", w_bits, N, K)
            scale = _tensor(tensors, f"{name}.scale", np.float32, (R, G))
            zero = _tensor(tensors, f"{name}.zero", np.float32, (R, G))
            mod = _LAYER_TYPES[kind](*geo, codes=codes, scale=scale, zero=zero, bias=bias, w_bits=w_bits, act_quant=act)
            if isinstance(mod, MultipointMixin):
                _load_points(name, mod, d, tensors, N, K)
        else:
            gs = d.get("group_size") or 0
            _need(isinstance(gs, int) and gs >= 0, f"layer '{name}': bad group_size")
            lay = _native.packed_layout(_pack_bits(w_bits), N + P, K, gs)
            meta_shape = (lay["tiles"], lay["groups"], 16)
            codes = _tensor(tensors, f"{name}.codes", np.uint8, (lay["code_bytes"],))
            scales = _tensor(tensors, f"{name}.scales", np.float32, meta_shape)
            zeros = _tensor(tensors, f"{name}.zeros", np.uint8, meta_shape)
            if packed_points:  # (in, out, ...) geometry: the packed matrix has N + P outputs
                geo = (geo[0], N + P, *geo[2:])
            mod = _LAYER_TYPES[kind](*geo, w_bits=w_bits, group_size=gs, codes=codes, scales=scales, zeros=zeros,
                                     bias=bias, act_quant=act, dynamic_act=bool(d.get("dynamic_act", False)))
            if packed_points:
                cast(Any, mod)._setup_points(_channels(tensors, f"{name}.point_channel", np.int32, P, N, name), N)
    except LowbitFileError:
        raise
    except (ValueError, TypeError) as e:
        raise LowbitFileError(f"layer '{name}': {e}") from None
    return mod


def _channels(tensors: dict[str, np.ndarray], key: str, dtype: npt.DTypeLike, n: int, N: int, name: str) -> torch.Tensor:
    """The n output-channel indices ``key`` (popped), each checked to lie in 0..N-1."""
    c = _tensor(tensors, key, dtype, (n,))
    what = key.rpartition(".")[2].replace("_", " ")
    _need(bool(((c >= 0) & (c < N)).all()), f"layer '{name}': {what} out of range 0..{N - 1}")
    return c


def _stream(tensors: dict[str, np.ndarray], key: str, bits: int, rows: int, K: int) -> torch.Tensor:
    """(rows, K) uint8 codes from the bitstream tensor ``key`` (popped)."""
    stream = tensors.pop(key, None)
    _need(stream is not None and stream.dtype == np.uint8, f"missing tensor '{key}'")
    return torch.from_numpy(bitstream_to_codes(cast(np.ndarray, stream), bits, rows * K).reshape(rows, K))


def _load_points(name: str, mod: MultipointMixin, d: dict, tensors: dict[str, np.ndarray], N: int, K: int) -> None:
    """A multipoint layer's point rows and wider rows, checked against its N output channels."""
    bits = {}
    for k in ("point_bits", "wide_bits"):
        b = d.get(k)
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8:
            raise LowbitFileError(f"layer '{name}': bad {k} {b!r}")
        bits[k] = b
    P, W = _int(d.get("points")), _int(d.get("wide"))
    key = f"{name}."
    channel = _channels(tensors, key + "point_channel", np.int64, P, N, name)
    wide_channel = _channels(tensors, key + "wide_channel", np.int64, W, N, name)
    mod.set_points(channel, _stream(tensors, key + "point_codes", bits["point_bits"], P, K),
                   _tensor(tensors, key + "point_scale", np.float32, (P, 1)),
                   _tensor(tensors, key + "point_zero", np.float32, (P, 1)), bits["point_bits"])
    ws = d.get("wide_scale_shape")
    if not (isinstance(ws, list) and len(ws) == 2):
        raise LowbitFileError(f"layer '{name}': bad wide scale shape {ws!r}")
    r, g = _int(ws[0]), _int(ws[1])
    _need(r in (1, W) and g >= 1 and K % g == 0, f"layer '{name}': bad wide scale shape {ws}")
    mod.set_wide(wide_channel, _stream(tensors, key + "wide_codes", bits["wide_bits"], W, K),
                 _tensor(tensors, key + "wide_scale", np.float32, (r, g)),
                 _tensor(tensors, key + "wide_zero", np.float32, (r, g)), bits["wide_bits"])


_MAX_DIM = 1 << 31


def _int(v: Any) -> int:
    """A size from the metadata: a JSON integer in 0 .. 2^31 (no bools, floats or strings)."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_DIM:
        raise ValueError(f"expected an integer in 0..{_MAX_DIM}, got {v!r}")
    return v


def _ints(v: Any, n: int = 2) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) != n:
        raise ValueError(f"expected a list of {n} integers, got {v!r}")
    return tuple(_int(x) for x in v)


def _pack_bits(w_bits: int) -> int:
    from lowbit.pack import container_bits

    return container_bits(w_bits)


def load(path: str | Path, model: nn.Module | None = None, *, inplace: bool = False) -> nn.Module:
    """Rebuild a model saved by :func:`save` on top of ``model``, the float architecture.

    Parameters
    ----------
    path : str or Path
        A file written by ``lowbit.save``.
    model : nn.Module
        A skeleton of the architecture (the float model class, any weights). Required: the file
        holds no code. Its quantizable layers named in the file are swapped for the saved
        Quant* / Packed* layers; modules saved as ``nn.Identity``
        (folded BatchNorm) are replaced; all other tensors are loaded with strict checks.
    inplace : bool
        Modify ``model`` itself instead of a copy.

    Raises
    ------
    LowbitFileError
        Truncated, corrupted or modified file; wrong format version; a file that does not fit
        the skeleton (missing or extra tensors, shape mismatches).
    """
    meta, tensors = _read(path)
    if model is None:
        raise ValueError("lowbit.load needs the architecture: pass model=<the float model, freshly built>. "
                         "lowbit files contain weights and metadata only, never code; "
                         "lowbit.io.read_metadata(path) shows what the file holds")
    if meta.get("pack_format_version") != _native.PACK_FORMAT_VERSION and meta.get("form") in ("packed", "mixed"):
        raise LowbitFileError(f"{path}: packed format version {meta.get('pack_format_version')!r}; this lowbit "
                              f"reads version {_native.PACK_FORMAT_VERSION}")
    layers, identity = meta.get("layers"), meta.get("identity", [])
    if not (isinstance(layers, dict) and isinstance(identity, list)):
        raise LowbitFileError(f"{path}: bad layer table")
    work = model if inplace else copy.deepcopy(model)
    modules = dict(work.named_modules())

    def swap(name: str, new: nn.Module) -> None:
        parent_name, _, child = name.rpartition(".")
        _need(bool(name) and parent_name in modules and hasattr(modules[parent_name], child),
              f"{path}: the model has no module '{name}' (does the skeleton match the file?)")
        set_module(work, name, new)  # under every name the skeleton registers it

    for name in identity:
        _need(isinstance(name, str) and name in modules, f"{path}: the model has no module '{name}' to fold")
        if not isinstance(modules[name], nn.Identity):
            swap(name, nn.Identity())
    for name, d in layers.items():
        _need(name in modules, f"{path}: the model has no layer '{name}' (does the skeleton match the file?)")
        old = modules[name]
        _need(isinstance(old, (nn.Linear, nn.Conv2d, nn.Embedding, QuantLayer, PackedLayer)),
              f"{path}: '{name}' is a {type(old).__name__} in the model, not a Linear/Conv2d/Embedding")
        new = _build_layer(name, d, tensors)
        if isinstance(new, (QuantLinear, PackedLinear)):
            _need(isinstance(old, (nn.Linear, QuantLinear, PackedLinear)) and old.in_features == new.in_features
                  and old.out_features == new.out_features, f"{path}: layer '{name}' does not match the model's")
        elif isinstance(new, (QuantEmbedding, PackedEmbedding)):
            _need(isinstance(old, (nn.Embedding, QuantEmbedding, PackedEmbedding))
                  and old.num_embeddings == new.num_embeddings and old.embedding_dim == new.embedding_dim,
                  f"{path}: layer '{name}' does not match the model's")
        else:
            _need(isinstance(old, (nn.Conv2d, QuantConv2d, PackedConv2d)) and old.in_channels == new.in_channels
                  and old.out_channels == new.out_channels and tuple(old.kernel_size) == new.kernel_size
                  and old.groups == new.groups, f"{path}: layer '{name}' does not match the model's")
        swap(name, new)

    # Everything else: strict names and shapes.
    state = work.state_dict()
    rest = {k: v for k, v in state.items() if k.rpartition(".")[0] not in layers
            and not any(k.startswith(n + ".act_quant.") for n in layers)}
    missing = sorted(set(rest) - set(tensors))
    extra = sorted(set(tensors) - set(rest))
    _need(not missing and not extra, f"{path}: the file does not fit the model: missing {missing[:5]}, "
                                     f"unexpected {extra[:5]}")
    loaded = {}
    for k, v in rest.items():
        a = tensors[k]
        _need(tuple(a.shape) == tuple(v.shape), f"tensor '{k}' has shape {tuple(a.shape)}, the model {tuple(v.shape)}")
        _need(v.dtype == torch.bfloat16 or a.dtype == v.detach().cpu().numpy().dtype,
              f"tensor '{k}' is {a.dtype} in the file, {v.dtype} in the model")
        loaded[k] = torch.from_numpy(np.array(a, copy=True))
    work.load_state_dict(loaded, strict=False)
    if meta.get("report") is not None:
        from lowbit.reporting import QuantReport

        try:
            report = QuantReport.from_json(json.dumps(meta["report"]))
            setattr(work, "lowbit_report", report)  # noqa: B010  (nn.Module.__setattr__ is typed for Tensors)
        except (TypeError, KeyError, ValueError) as e:
            raise LowbitFileError(f"{path}: unreadable report ({e})") from None
    return work
