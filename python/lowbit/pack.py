"""Packed inference modules: ``lowbit.pack(qmodel)`` turns the fake-quant layers of a quantized
model into layers that run on lowbit's packed low-bit kernels (``cpp/include/lowbit/qmatmul.h``).

What each layer computes
------------------------
* **Weight-only** (no activation quantizer on the layer): fp32 activations times the packed
  weight decoded exactly to ``(q - z)``, the scale applied per group. Equal to the fake-quant
  layer up to float rounding.
* **Static int8 path** (the layer has a ``UniformActQuantizer``, any ``a_bits`` in 2..8): the
  activation quantizer is fused into the kernel. Its integer codes are exactly the fake-quant
  model's; A8 and lower (A4, A2, ...) codes all fit int8, so every product is an exact integer
  sum and the output equals the fake-quant layer's up to the rounding of the final float
  scaling. Fewer activation bits give the same speed as A8 (the kernel is int8 either way).
* **Dynamic int8** (opt-in, ``pack(qmodel, dynamic_act=True)``): layers without an activation
  quantizer quantize each input row to int8 on the fly (symmetric, per row), like torch's
  dynamic quantized Linear: faster for batched inputs, no longer exact.
* **Threshold path** (the layer has a threshold quantizer from ``lowbit.threshold``: AQuant's
  learned borders, N2UQ's LTQ): the per-channel multi-threshold requantize step
  ``code = #{k : x >= t[c, k]}`` (C++ ``threshold_quantize``, on the layer input before im2col)
  gives the integer codes, which the static int8 kernel consumes with the quantizer's output
  step and zero point. Exact like the static path: the codes are the fake-quant model's (hard
  decisions, as in eval mode). AQuant borders learned for other weight codes are refused.
* **Lookup** (``PackedEmbedding``, from ``quantize(..., embedding_bits=b)``): the rows of the
  token ids are decoded from the packed table in C++, exactly the fake-quant QuantEmbedding's.
* Other activation quantizers (not a plain ``UniformActQuantizer``) run in torch first, then the
  weight-only kernel: exact up to float rounding, at weight-only speed.

Weights of 2, 3, 4 and 8 bits use their own packed formats; 5..7-bit codes are stored in the
8-bit format (exact, 8 bits of storage). Convolutions with ``groups=1`` run as im2col
(``F.unfold``) plus the packed matrix product; grouped convolutions whose output channels per
group are a multiple of 16 run one product per group on row slices of the same packed matrix;
depthwise and other grouped convolutions keep the packed bytes as their stored form and run
torch's convolution on the weight decoded from them once (cached; those weights are tiny).

Packed modules are for inference (no autograd) on CPU float32 inputs (other float dtypes are
converted and converted back).
"""

from __future__ import annotations

import copy
import sys
import types
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lowbit import _native
from lowbit.graph import set_module
from lowbit.quantizers import (
    QuantConv2d,
    QuantEmbedding,
    QuantLayer,
    QuantLinear,
    UniformActQuantizer,
    check_token_ids,
)

if TYPE_CHECKING:
    from lowbit.threshold import _ThresholdActQuantizer

__all__ = ["PackedLinear", "PackedConv2d", "PackedEmbedding", "PackedLayer", "pack", "container_bits"]

PACKED_BITS = (2, 3, 4, 8)


def container_bits(w_bits: int) -> int:
    """The packed format that holds ``w_bits``-bit codes (5..7 go in the 8-bit format)."""
    if w_bits in PACKED_BITS:
        return w_bits
    if 5 <= w_bits <= 7:
        return 8
    raise ValueError(f"no packed format for {w_bits}-bit weights (2..8 are supported)")


def _is_threshold(aq: nn.Module | None) -> TypeGuard[_ThresholdActQuantizer]:
    from lowbit.threshold import _ThresholdActQuantizer

    return isinstance(aq, _ThresholdActQuantizer)


def _threshold_act(aq: _ThresholdActQuantizer) -> tuple[float, float, int]:
    """(output step, zero point, bits) of a threshold quantizer, checked for the int8 kernel."""
    s, z = float(aq.output_scale()), float(aq.zero.reshape(-1)[0])
    if not (np.isfinite(s) and s > 0 and z == round(z) and 0 <= z <= aq.qmax):
        raise ValueError(f"threshold quantizer with output step {s} and zero point {z} cannot be packed "
                         f"(needs a finite step > 0 and an integer zero in 0..{aq.qmax})")
    return s, z, int(aq.bits)


def threshold_requantize(aq: _ThresholdActQuantizer, x: torch.Tensor) -> torch.Tensor:
    """The inference form of a threshold quantizer on x (its channel layout): the codes of the
    multi-threshold compare, returned as s * (code - z) so that the static int8 kernel's own
    rounding gives back exactly the same codes."""
    s, z, _ = _threshold_act(aq)
    codes = aq.codes(x)
    return (codes.to(torch.float32) - z) * s


def _fusable(aq: nn.Module | None) -> bool:
    """An activation quantizer the int8 kernel reproduces exactly."""
    if type(aq) is not UniformActQuantizer or aq.drop_prob < 1.0:
        return False
    s, z = float(aq.scale.reshape(-1)[0]), float(aq.zero.reshape(-1)[0])
    return (aq.scale.numel() == 1 and 2 <= aq.bits <= 8 and np.isfinite(s) and s > 0
            and z == round(z) and 0 <= z <= aq.qmax)


class PackedLayer(nn.Module):
    """State shared by PackedLinear and PackedConv2d: the packed matrix (out, K) and the
    activation handling. Buffers: ``codes`` uint8 (code_bytes,), ``scales`` float32 and
    ``zeros`` uint8 (tiles, groups, 16) (pack.h), ``bias`` float32 (out,) or None."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bias: torch.Tensor | None
    act_quant: nn.Module | None

    def __init__(self, *, out_features: int, K: int, w_bits: int, group_size: int, codes: torch.Tensor,
                 scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None,
                 act_quant: nn.Module | None = None, dynamic_act: bool = False):
        super().__init__()
        self.w_bits = int(w_bits)  # the quantizer's bits (5..7 live in the 8-bit format)
        self.bits = container_bits(self.w_bits)
        self.group_size = int(group_size)  # 0 = one group per row
        self.K = int(K)
        self.out_features = int(out_features)
        lay = _native.packed_layout(self.bits, self.out_features, self.K, self.group_size)
        shapes = {"codes": (lay["code_bytes"],), "scales": (lay["tiles"], lay["groups"], 16),
                  "zeros": (lay["tiles"], lay["groups"], 16)}
        dtypes = {"codes": torch.uint8, "scales": torch.float32, "zeros": torch.uint8}
        for name, t in (("codes", codes), ("scales", scales), ("zeros", zeros)):
            if tuple(t.shape) != shapes[name] or t.dtype != dtypes[name]:
                raise ValueError(f"{name} must be {dtypes[name]} of shape {shapes[name]}, "
                                 f"got {t.dtype} {tuple(t.shape)}")
            self.register_buffer(name, t.detach().cpu().contiguous())
        if bias is not None:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
            self.register_buffer("bias", bias.detach().float().cpu().contiguous())
        else:
            self.bias = None
        self.act_quant = act_quant
        self.dynamic_act = bool(dynamic_act)
        self._row_sums: np.ndarray | None = None

    # -- the packed matrix ----------------------------------------------------------------
    def packed(self) -> _native.Packed:
        return _native.packed_from_arrays(self.codes, self.scales, self.zeros, self.bits,
                                          self.out_features, self.K, self.group_size)

    @property
    def granularity(self) -> str:
        return "group" if self.group_size else "channel"

    @property
    def a_bits(self) -> int | None:
        return getattr(self.act_quant, "bits", None)

    @property
    def path(self) -> str:
        """Which kernel path forward() takes: "int8_static", "threshold_int8", "int8_dynamic"
        or "weight_only"."""
        if self.act_quant is not None:
            if _is_threshold(self.act_quant):
                return "threshold_int8"
            return "int8_static" if _fusable(self.act_quant) else "weight_only"
        return "int8_dynamic" if self.dynamic_act else "weight_only"

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes uint8 (out, K), scale (out, G), zero (out, G)) read back from the bytes."""
        q, s, z = _native.unpack_weights(self.packed())
        return torch.from_numpy(q), torch.from_numpy(s), torch.from_numpy(z)

    def weight_2d(self) -> torch.Tensor:
        """The float weight (out, K) the packed bytes stand for: (q - z) * s."""
        from lowbit.quantizers import dequantize_codes

        return dequantize_codes(*self.unpack())

    # -- the product ------------------------------------------------------------------------
    def _all_row_sums(self) -> np.ndarray:
        if self._row_sums is None:
            self._row_sums = _native.packed_row_sums(self.packed())
        return self._row_sums

    def _matmul(self, x2: torch.Tensor, part: tuple | None = None, channel: np.ndarray | None = None) -> torch.Tensor:
        """(M, N) = x2 (M, K) W^T + bias through this layer's kernel path. ``part`` =
        (packed row slice, its bias, its row slice) runs a slice of the matrix (grouped convs).
        ``channel`` (int32, P) folds the last P rows into those channels in the same native call
        (packed multipoint: out (M, rows - P))."""
        if part is None:
            p, b, rows = self.packed(), self.bias, slice(None)
        else:
            p, b, rows = part
        path = self.path
        kw: dict[str, Any] | None  # the int8 path's act / row_sums; None: weight-only
        if path == "int8_static":
            aq = cast(UniformActQuantizer, self.act_quant)  # the path _fusable() accepted
            act = (float(aq.scale.reshape(-1)[0]), float(aq.zero.reshape(-1)[0]), int(aq.bits))
            kw = dict(act=act, row_sums=np.ascontiguousarray(self._all_row_sums()[rows]))
        elif path == "threshold_int8":  # x2 already went through threshold_requantize
            kw = dict(act=_threshold_act(cast("_ThresholdActQuantizer", self.act_quant)),
                      row_sums=np.ascontiguousarray(self._all_row_sums()[rows]))
        elif path == "int8_dynamic":
            kw = dict(act=None)
        else:
            if self.act_quant is not None:
                x2 = self.act_quant(x2)
            kw = None
        if channel is not None:
            y = _native.multipoint_qmatmul(p, x2, channel, b, int8=kw is not None, **(kw or {}))
        elif kw is None:
            y = _native.qmatmul(p, x2, b)
        else:
            y = _native.qmatmul_a8(p, x2, kw["act"], b, kw.get("row_sums"))
        return torch.from_numpy(y)

    def _apply(self, fn, *args, **kwargs):
        self._row_sums = None
        return super()._apply(fn, *args, **kwargs)


def _prep(x: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
    if x.device.type != "cpu":
        raise ValueError(f"packed layers run on CPU; got an input on {x.device}")
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return x.detach().to(torch.float32), dtype


class PackedLinear(PackedLayer):
    """nn.Linear on a packed low-bit weight (inference only)."""

    def __init__(self, in_features: int, out_features: int, **kw: Any):
        super().__init__(out_features=out_features, K=in_features, **kw)
        self.in_features = int(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, dtype = _prep(x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected {self.in_features} input features, got input of shape {tuple(x.shape)}")
        if self.path == "threshold_int8":
            x = threshold_requantize(cast("_ThresholdActQuantizer", self.act_quant), x)  # the path says so
        y = self._matmul(x.reshape(-1, self.in_features).contiguous())
        return y.reshape(*x.shape[:-1], self.out_features).to(dtype)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_2d()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, w_bits={self.w_bits}, "
                f"granularity={self.granularity}, path={self.path}")


class PackedConv2d(PackedLayer):
    """nn.Conv2d on a packed low-bit weight (out, in/groups*kh*kw), zero padding (inference only)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation,
                 groups: int, **kw: Any):
        kh, kw_ = (int(k) for k in kernel_size)
        super().__init__(out_features=out_channels, K=in_channels // groups * kh * kw_, **kw)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = (kh, kw_)
        self.stride = tuple(int(s) for s in stride)
        self.padding = padding if isinstance(padding, str) else tuple(int(p) for p in padding)
        self.dilation = tuple(int(d) for d in dilation)
        self.groups = int(groups)
        self._weight_cache: torch.Tensor | None = None

    @property
    def uses_kernel(self) -> bool:
        """True when forward runs the packed kernels (im2col); False for depthwise and grouped
        convolutions whose per-group output channels are not a multiple of 16."""
        opg = self.out_channels // self.groups
        return self.groups == 1 or opg % 16 == 0

    @property
    def path(self) -> str:
        """As PackedLayer.path, or "decoded" where torch's conv runs on the decoded weight."""
        return super().path if self.uses_kernel else "decoded"

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_2d().reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _pads(self, H: int, W: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding."""
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return 0, 0, 0, 0
            th = self.dilation[0] * (self.kernel_size[0] - 1)
            tw = self.dilation[1] * (self.kernel_size[1] - 1)
            return tw // 2, tw - tw // 2, th // 2, th - th // 2
        ph, pw = self.padding
        return pw, pw, ph, ph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, dtype = _prep(x)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        if not self.uses_kernel:
            return self._forward_decoded(x).to(dtype)
        if self.path == "threshold_int8":  # per input channel: before im2col
            x = threshold_requantize(cast("_ThresholdActQuantizer", self.act_quant), x)  # the path says so
        left, right, top, bottom = self._pads(x.shape[2], x.shape[3])
        if (left, top) != (right, bottom):
            x = F.pad(x, (left, right, top, bottom))
            left = top = 0
        B = x.shape[0]
        oh = (x.shape[2] + 2 * top - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (x.shape[3] + 2 * left - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=(top, left), stride=self.stride)
        rows = cols.transpose(1, 2).reshape(B * oh * ow, -1)  # (B*L, C*kh*kw), channel-major like W
        if self.groups == 1:
            y = self._matmul(rows.contiguous())
        else:
            y = self._grouped(rows)
        y = y.reshape(B, oh * ow, self.out_channels).transpose(1, 2).reshape(B, self.out_channels, oh, ow)
        return y.contiguous().to(dtype)

    def _grouped(self, rows: torch.Tensor) -> torch.Tensor:
        """One product per group on the group's row slice of the packed matrix (whole tiles)."""
        p = self.packed()
        opg, K = self.out_channels // self.groups, self.K
        tiles = opg // 16
        cb = p.codes.shape[0] // p.scales.shape[0] * tiles  # code bytes per group
        outs = []
        for g in range(self.groups):
            pg = p._replace(codes=p.codes[g * cb:(g + 1) * cb], scales=p.scales[g * tiles:(g + 1) * tiles],
                            zeros=p.zeros[g * tiles:(g + 1) * tiles], rows=opg)
            b = None if self.bias is None else self.bias[g * opg:(g + 1) * opg]
            outs.append(self._matmul(rows[:, g * K:(g + 1) * K].contiguous(), (pg, b, slice(g * opg, (g + 1) * opg))))
        return torch.cat(outs, dim=1)

    def _forward_decoded(self, x: torch.Tensor) -> torch.Tensor:
        if self._weight_cache is None:
            self._weight_cache = self.weight
        if _is_threshold(self.act_quant):
            x = threshold_requantize(self.act_quant, x)
        elif self.act_quant is not None:
            x = self.act_quant(x)
        return F.conv2d(x, self._weight_cache, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _apply(self, fn, *args, **kwargs):
        self._weight_cache = None
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}, w_bits={self.w_bits}, granularity={self.granularity}, path={self.path}")


class PackedEmbedding(PackedLayer):
    """nn.Embedding on a packed low-bit table (inference only): each looked-up row is decoded
    in C++ (``dequantize_rows``), equal to the fake-quant QuantEmbedding bit for bit."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, **kw: Any):
        if kw.get("act_quant") is not None or kw.get("bias") is not None or kw.get("dynamic_act"):
            raise ValueError("an embedding has no input activation quantizer and no bias")
        super().__init__(out_features=num_embeddings, K=embedding_dim, **kw)
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.padding_idx = padding_idx

    @property
    def path(self) -> str:
        return "lookup"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.device.type != "cpu":
            raise ValueError(f"packed layers run on CPU; got ids on {ids.device}")
        flat = check_token_ids(ids, self.num_embeddings)
        rows = _native.dequantize_rows(self.packed(), flat.detach().numpy())
        return torch.from_numpy(rows).reshape(*ids.shape, self.embedding_dim)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_2d()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, w_bits={self.w_bits}, granularity={self.granularity}"


# -- conversion -------------------------------------------------------------------------------


def _pack_arrays(layer: QuantLayer, name: str) -> tuple[int, int, _native.Packed]:
    """(w_bits of the stored codes, group_size, packed matrix) of a quantized layer.

    Integer zero points pack as they are. Half-integer ones (mid-rise grids: N2UQ's weight grid,
    zero (2^b - 1) / 2) pack exactly as (b + 1)-bit codes: s (q - z) = (s / 2) (2q - 2z), with
    2q, 2z integers and s / 2 exact, so the packed weight equals the fake-quant one bit for bit
    (2-bit N2UQ weights take the 3-bit format)."""
    if layer.weight_override is not None:
        raise ValueError(f"layer '{name}': a method is still optimising it (weight_override is set)")
    w_bits = layer.w_bits
    codes = layer.codes.reshape(layer.codes.shape[0], -1)
    scale = layer.scale.detach().float()
    N, K = codes.shape
    R, G = layer.scale.shape
    group_size = 0 if G == 1 else K // G
    if group_size and group_size % 16:
        raise ValueError(f"layer '{name}': group_size {group_size} is not a multiple of 16, which the packed "
                         f"formats need; quantize with group_size 16, 32, 64, 128, ...")
    zero = layer.zero.detach().float()
    if not torch.equal(zero, zero.round()) and torch.equal(2 * zero, (2 * zero).round()):
        if w_bits >= 8:
            raise ValueError(f"layer '{name}': half-integer zero points need {w_bits + 1}-bit codes to pack; "
                             f"the packed formats hold at most 8")
        codes, zero, scale, w_bits = codes * 2, zero * 2, scale / 2, w_bits + 1
    if not torch.equal(zero, zero.round()) or zero.min() < 0 or zero.max() > (1 << w_bits) - 1:
        raise ValueError(f"layer '{name}': zero points must be integers (or half-integers) in "
                         f"0..{(1 << layer.w_bits) - 1} to pack")
    if not torch.isfinite(scale).all():
        raise ValueError(f"layer '{name}': non-finite weight scale")
    p = _native.pack_weights(codes, scale, zero, container_bits(w_bits), group_size)
    return w_bits, group_size, p


def packed_from_quant(layer: QuantLayer, name: str = "", dynamic_act: bool = False) -> PackedLayer:
    """The PackedLinear / PackedConv2d / PackedEmbedding equivalent of one QuantLinear /
    QuantConv2d / QuantEmbedding."""
    twin = getattr(layer, "packed_twin", None)  # layers holding more than one grid (multipoint)
    if twin is not None:
        return twin(name, dynamic_act)
    w_bits, group_size, p = _pack_arrays(layer, name)
    if _is_threshold(layer.act_quant):
        from lowbit.methods.aquant import check_borders

        check_borders(layer, name)
    aq = copy.deepcopy(layer.act_quant)
    kw = dict(w_bits=w_bits, group_size=group_size, codes=torch.from_numpy(p.codes),
              scales=torch.from_numpy(p.scales), zeros=torch.from_numpy(p.zeros), bias=layer.bias,
              act_quant=aq, dynamic_act=dynamic_act)
    if isinstance(layer, QuantLinear):
        return PackedLinear(layer.in_features, layer.out_features, **kw)
    if isinstance(layer, QuantEmbedding):
        return PackedEmbedding(layer.num_embeddings, layer.embedding_dim, layer.padding_idx,
                               **{**kw, "dynamic_act": False})  # a lookup has no activations
    if isinstance(layer, QuantConv2d):
        return PackedConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                            layer.dilation, layer.groups, **kw)
    raise TypeError(f"layer '{name}': cannot pack {type(layer).__name__}")


def pack(qmodel: nn.Module, *, inplace: bool = False, dynamic_act: bool = False) -> nn.Module:
    """Swap every QuantLinear / QuantConv2d / QuantEmbedding of a ``lowbit.quantize`` result for
    its packed twin.

    Parameters
    ----------
    qmodel : nn.Module
        A fake-quant model (or a single QuantLinear / QuantConv2d).
    inplace : bool
        Modify ``qmodel`` instead of returning a packed copy (the default leaves it untouched).
    dynamic_act : bool
        Layers without an activation quantizer quantize their inputs per row to int8 on the fly
        (faster for batches, approximate); by default they keep fp32 activations (exact).

    Returns
    -------
    nn.Module
        The packed model (``lowbit_report`` kept). Layers with an activation quantizer fuse it
        into the int8 kernel (exact for any a_bits <= 8).
    """
    if isinstance(qmodel, QuantLayer):
        return packed_from_quant(qmodel, type(qmodel).__name__, dynamic_act)
    model = qmodel if inplace else copy.deepcopy(qmodel)
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]
    for name, mod in targets:
        set_module(model, name, packed_from_quant(mod, name, dynamic_act))
    return model


class _CallableModule(types.ModuleType):
    """``lowbit.pack`` is both this module and the function: importing the submodule (e.g.
    ``from lowbit.pack import PackedLinear``) binds the name ``pack`` on the package to the
    module, so the module forwards calls to ``pack()``."""

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module:
        return pack(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
