"""Fake-quant modules: what ``lowbit.quantize`` swaps in for nn.Linear / nn.Conv2d (and
nn.Embedding with ``embedding_bits``).

A quantized layer stores what a packed kernel needs and nothing it does not: integer weight
codes (uint8, 0..2^b-1, shape (out, K) with K = in_features or in/groups*kh*kw), a scale and
zero point per unit (``(1, 1)`` per tensor, ``(out, 1)`` per channel, ``(out, K/group_size)``
per group), the bias, and an optional activation quantizer applied to the layer's input.
The float weight is ``(codes - zero) * scale``, computed on the fly.

Methods that learn something (AdaRound's soft rounding, AQuant's borders) set
``layer.weight_override`` to a differentiable weight while they optimise and clear it after.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F


def expand_units(p: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(R, G) per-unit parameters broadcast to (rows, cols) (R in {1, rows}, G divides cols)."""
    R, G = p.shape
    return p.repeat_interleave(cols // G, dim=1).expand(rows, cols)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """float32 (rows, cols) = (codes - zero) * scale, the exact twin of the C++ dequantize."""
    rows, cols = codes.shape
    return (codes.float() - expand_units(zero, rows, cols)) * expand_units(scale, rows, cols)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward (straight-through)."""
    return x + (torch.round(x) - x).detach()


class UniformActQuantizer(nn.Module):
    """Per-tensor uniform affine fake quantizer for a layer's input.

    ``x^ = s * (clamp(round(x / s) + z, 0, 2^b - 1) - z)``; unsigned inputs (after ReLU) get
    z = 0. The backward pass is the straight-through estimator (LSQ-style gradient to ``scale``
    when it is a Parameter).
    """

    # Buffers (or Parameters, once a method makes them learnable), registered in __init__.
    scale: torch.Tensor
    zero: torch.Tensor

    def __init__(self, bits: int, scale: float = 1.0, zero: float = 0.0, signed: bool = False):
        super().__init__()
        self.bits = int(bits)
        self.signed = bool(signed)
        self.register_buffer("scale", torch.tensor([float(scale)]))
        self.register_buffer("zero", torch.tensor([float(zero)]))
        # QDrop: probability of quantizing each element while reconstructing (1 = always).
        self.drop_prob = 1.0

    @property
    def qmax(self) -> int:
        """The largest code, 2^bits - 1."""
        return (1 << self.bits) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x fake-quantized (QDrop keeps each element in float with probability 1 - drop_prob)."""
        s, z = self.scale, self.zero
        q = torch.clamp(round_ste(x / s) + z, 0, self.qmax)
        xq = (q - z) * s
        if self.drop_prob < 1.0 and self.training:
            keep = torch.rand_like(x) < self.drop_prob
            xq = torch.where(keep, xq, x)
        return xq

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, scale={self.scale.item():.4g}"


class QuantLayer(nn.Module):
    """Common state of QuantLinear and QuantConv2d (see the module docstring)."""

    # Buffers registered in __init__ (declared here so that type checkers see them).
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bias: torch.Tensor | None
    act_quant: nn.Module | None

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        bias: torch.Tensor | None,
        w_bits: int,
        weight_shape: tuple[int, ...],
        act_quant: nn.Module | None = None,
    ):
        super().__init__()
        self.w_bits = int(w_bits)
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.register_buffer("codes", codes.to(torch.uint8).contiguous())
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("zero", zero.float().contiguous())
        if bias is not None:
            self.register_buffer("bias", bias.detach().float().clone())
        else:
            self.bias = None
        self.act_quant = act_quant
        self.weight_override: torch.Tensor | None = None

    @property
    def granularity(self) -> str:
        """"tensor", "channel" or "group", from the shape of scale."""
        R, G = self.scale.shape
        if R == 1 and G == 1:
            return "tensor"
        return "channel" if G == 1 else "group"

    @property
    def group_size(self) -> int | None:
        """Weights per scale along K for group granularity, None otherwise."""
        G = self.scale.shape[1]
        return self.codes.shape[1] // G if G > 1 else None

    @property
    def weight(self) -> torch.Tensor:
        """The weight the layer computes with, in the float module's shape."""
        if self.weight_override is not None:
            return self.weight_override
        return dequantize_codes(self.codes, self.scale, self.zero).reshape(self.weight_shape)

    def set_codes(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, w_bits: int) -> None:
        """Replace the quantized weight (e.g. after a method re-rounds it or changes its bits)."""
        self.codes = codes.to(torch.uint8).contiguous()
        self.scale = scale.float().contiguous()
        self.zero = zero.float().contiguous()
        self.w_bits = int(w_bits)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input through its activation quantizer (unchanged without one)."""
        return self.act_quant(x) if self.act_quant is not None else x

    @property
    def a_bits(self) -> int | None:
        """Bits of the input quantizer, None without one."""
        return getattr(self.act_quant, "bits", None)


class QuantLinear(QuantLayer):
    """Fake-quant nn.Linear: ``F.linear(act_quant(x), (codes - zero) * scale, bias)``."""

    def __init__(self, in_features: int, out_features: int, **kw):
        super().__init__(weight_shape=(out_features, in_features), **kw)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"w_bits={self.w_bits}, granularity={self.granularity}")


class QuantConv2d(QuantLayer):
    """Fake-quant nn.Conv2d (any stride, padding, dilation, groups; zero padding only)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation,
                 groups: int, **kw):
        kh, kw_ = kernel_size
        super().__init__(weight_shape=(out_channels, in_channels // groups, kh, kw_), **kw)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self.dilation = tuple(dilation)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.quantize_input(x), self.weight, self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, groups={self.groups}, w_bits={self.w_bits}, "
                f"granularity={self.granularity}")


def check_token_ids(ids: torch.Tensor, num_embeddings: int) -> torch.Tensor:
    """The ids of a lookup, flattened; TypeError / IndexError as nn.Embedding would raise (and
    no negative id silently indexing from the end)."""
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"embedding ids must be int64 or int32, got {ids.dtype}")
    flat = ids.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_embeddings):
        raise IndexError(f"token ids must lie in 0..{num_embeddings - 1}, got {int(flat.min())}..{int(flat.max())}")
    return flat


class QuantEmbedding(QuantLayer):
    """Fake-quant nn.Embedding: a lookup of rows of ``(codes - zero) * scale``, each token's row
    decoded on its own (a whole vocabulary is never dequantized). A lookup has no input
    activation to quantize and no bias."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, **kw):
        if kw.get("act_quant") is not None or kw.get("bias") is not None:
            raise ValueError("an embedding has no input activation quantizer and no bias")
        super().__init__(weight_shape=(num_embeddings, embedding_dim), **kw)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.weight_override is not None:
            return F.embedding(ids, self.weight_override, self.padding_idx)
        flat = check_token_ids(ids, self.num_embeddings)
        unit = (lambda p: p.expand(flat.numel(), -1)) if self.scale.shape[0] == 1 else (lambda p: p[flat])
        rows = dequantize_codes(self.codes[flat], unit(self.scale), unit(self.zero))
        return rows.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, w_bits={self.w_bits}, "
                f"granularity={self.granularity}")


def float_weight_2d(module: nn.Module) -> torch.Tensor:
    """(out, K) float weight of an nn.Linear / nn.Conv2d / QuantLayer."""
    w = cast(torch.Tensor, module.weight).detach()  # nn.Module types attributes as Tensor | Module
    return w.reshape(w.shape[0], -1)


def weight_grid(w2d: torch.Tensor, bits: int, granularity: str, group_size: int | None, symmetric: bool,
                p: float = 2.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero (R, G) for a (out, K) weight from the Lp range search (C++)."""
    from lowbit import _native

    rows = 1 if granularity == "tensor" else w2d.shape[0]
    groups = 1
    if granularity == "group":
        if group_size is None:
            raise ValueError("group_size is required with granularity='group'")
        groups = w2d.shape[1] // group_size
    scale, zero = _native.lp_range_search(w2d, bits, symmetric=symmetric, p=p, rows=rows, groups=groups)
    return torch.from_numpy(scale), torch.from_numpy(zero)


def round_nearest(w2d: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (out, K) of w2d rounded to the nearest grid point (C++)."""
    from lowbit import _native

    return torch.from_numpy(_native.quantize(w2d, scale, zero, bits))


def act_quantizer_from_samples(values: torch.Tensor, bits: int, vmin: float, p: float = 2.4) -> UniformActQuantizer:
    """Per-tensor activation quantizer whose range minimises the Lp error on sampled values;
    unsigned (zero point 0) when the input was never negative."""
    from lowbit import _native

    scale, zero = _native.lp_range_search(values.reshape(1, -1), bits, symmetric=False, p=p)
    return UniformActQuantizer(bits, float(scale[0, 0]), float(zero[0, 0]), signed=vmin < 0)


def quant_layer_from_float(module: nn.Module, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                           w_bits: int, act_quant: nn.Module | None = None) -> QuantLayer:
    """The QuantLinear / QuantConv2d / QuantEmbedding standing in for ``module`` with the given weight codes."""
    bias = cast("torch.Tensor | None", getattr(module, "bias", None))  # a Linear / Conv2d bias, or None
    kw = dict(codes=codes, scale=scale, zero=zero, w_bits=w_bits, act_quant=act_quant,
              bias=None if bias is None else bias.detach())
    if isinstance(module, nn.Linear):
        return QuantLinear(module.in_features, module.out_features, **kw)
    if isinstance(module, nn.Conv2d):
        return QuantConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                           module.padding, module.dilation, module.groups, **kw)
    if isinstance(module, nn.Embedding):
        return QuantEmbedding(module.num_embeddings, module.embedding_dim, module.padding_idx, **kw)
    raise TypeError(f"cannot quantize {type(module).__name__}")
