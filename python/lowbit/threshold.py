"""Threshold activation quantizers and N2UQ's weight quantizer.

Two drop-in replacements for ``UniformActQuantizer`` (``QuantLayer.act_quant``): same call
(``module(x) -> x^``), same ``bits`` / ``signed`` / ``scale`` / ``zero`` / ``drop_prob``
attributes, and both initialised from the data's uniform grid so that, before any learning, they
reproduce it (up to ties). Both produce uniform integer output levels from non-uniform input
thresholds; ``thresholds()`` exports the monotone per-channel thresholds of the inference form
``code = #{k : x >= t_{c,k}}``, ``x^ = scale * (code - zero)`` (threshold.h).

- ``BorderActQuantizer`` (AQuant, methods.md section 2, a reconstruction: no public code): per
  input channel c and level k a rounding border B_{c,k} replacing nearest rounding's 1/2, soft
  (sigmoid, temperature ``tau``) while learning and hard at the end / in eval; table
  parameterisation at <= 3 bits, affine in k above (section 2.3).
- ``LTQActQuantizer`` (N2UQ, section 4.1): an offset and 2^b - 1 positive interval lengths
  (floored), thresholds at the segment midpoints, G-STE backward.
- ``N2UQWeightQuantizer`` (section 4.2): L1-normalised per-output-channel scaling, a learnable
  clip, mid-rise levels; exported as ordinary integer codes plus scale/zero.

Forward and backward run in C++ (``lowbit._native``); the autograd Functions here only move
tensors across. Parameters live on the CPU (the kernels are CPU kernels).
"""

from __future__ import annotations

import math
from typing import Any, Callable, TypeVar

import torch
import torch.nn as nn

from lowbit import _native
from lowbit.quantizers import (
    QuantConv2d,
    QuantLayer,
    QuantLinear,
    UniformActQuantizer,
    act_quantizer_from_samples,
    round_ste,
)

PARAMETERIZATIONS = ("auto", "table", "affine")

_Q = TypeVar("_Q", bound="_ThresholdActQuantizer")


def _grad_scaled(p: torch.Tensor, g: float) -> torch.Tensor:
    """p in the forward pass, g * grad in the backward pass (LSQ's gradient scale)."""
    return (p - p * g).detach() + p * g


def _rows_view(x: torch.Tensor, channels: int, channel_axis: int) -> torch.Tensor:
    """The (rows, inner) layout of threshold.h: row r belongs to channel r % channels."""
    x = x.contiguous()
    if channels == 1:
        return x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)
    axis = channel_axis % x.dim()
    if x.shape[axis] != channels:
        raise ValueError(
            f"input has {x.shape[axis]} channels on axis {channel_axis} (shape {tuple(x.shape)}), "
            f"but the quantizer was built for {channels}")
    if axis == x.dim() - 1:
        return x.reshape(-1, 1)
    if axis != 1:
        raise ValueError(f"channel_axis must be 1 or the last axis, got {channel_axis}")
    return x.reshape(x.shape[0] * channels, -1)


class BorderQuantFunction(torch.autograd.Function):
    """AQuant fake quantization of x (rows, inner) from border parameters and a step (C++)."""

    @staticmethod
    def forward(ctx, x2, param, scale, bits, zero, tau, hard, affine, eps):
        B = _native.border_table(param, bits, affine=affine, eps=eps)
        out = _native.border_quant_forward(x2, B, bits, scale=float(scale), zero=zero, tau=tau,
                                           hard=hard)
        ctx.save_for_backward(x2, param, scale)
        ctx.B = B
        ctx.cfg = (bits, zero, tau, hard, affine, eps)
        return torch.from_numpy(out).to(x2.device)

    @staticmethod
    def backward(ctx, gy):
        x2, param, scale = ctx.saved_tensors
        bits, zero, tau, hard, affine, eps = ctx.cfg
        gx, gB, gs = _native.border_quant_backward(x2, gy, ctx.B, bits, scale=float(scale),
                                                   zero=zero, tau=tau, hard=hard)
        gp = _native.border_table_backward(param, gB, bits, affine=affine, eps=eps)
        return (torch.from_numpy(gx).to(x2.device), torch.from_numpy(gp).to(param.device),
                torch.tensor([gs], dtype=scale.dtype, device=scale.device),
                None, None, None, None, None, None)


class LTQFunction(torch.autograd.Function):
    """N2UQ LTQ fake quantization of x (rows, inner), G-STE backward (C++)."""

    @staticmethod
    def forward(ctx, x2, start, a, in_scale, out_scale, bits, zero, a_min, s1_min):
        y = _native.ltq_forward(x2, start, a, in_scale, bits, out_scale=float(out_scale),
                                zero=zero, a_min=a_min, s1_min=s1_min)
        ctx.save_for_backward(x2, start, a, in_scale, out_scale)
        ctx.cfg = (bits, zero, a_min, s1_min)
        return torch.from_numpy(y).to(x2.device)

    @staticmethod
    def backward(ctx, gy):
        x2, start, a, in_scale, out_scale = ctx.saved_tensors
        bits, zero, a_min, s1_min = ctx.cfg
        gx, gst, ga, gs1, gs2 = _native.ltq_backward(
            x2, gy, start, a, in_scale, bits, out_scale=float(out_scale), zero=zero, a_min=a_min,
            s1_min=s1_min)
        dev = x2.device
        return (torch.from_numpy(gx).to(dev), torch.from_numpy(gst).to(dev),
                torch.from_numpy(ga).to(dev), torch.from_numpy(gs1).to(dev),
                torch.tensor([gs2], dtype=out_scale.dtype, device=dev), None, None, None, None)


class _ThresholdActQuantizer(nn.Module):
    """What both threshold quantizers share: the UniformActQuantizer interface."""

    # The step (a Parameter in the subclasses) and the zero point (a buffer).
    scale: torch.Tensor
    zero: torch.Tensor

    @classmethod
    def from_uniform(cls: type[_Q], uq: UniformActQuantizer, *, channels: int = 1, channel_axis: int = 1,
                     **kw: Any) -> _Q:
        """Start on the grid of a calibrated uniform quantizer: every threshold at its uniform
        position (borders at 1/2, equal intervals), so the first forward is that quantizer's."""
        # The subclasses' constructors take (bits, scale, zero, signed, *, channels, channel_axis,
        # ...), not this base class's (bits, zero, signed, channels, channel_axis).
        make: Callable[..., _Q] = cls
        return make(uq.bits, float(uq.scale.item()), float(uq.zero.item()), uq.signed,
                    channels=channels, channel_axis=channel_axis, **kw)

    @classmethod
    def from_samples(cls: type[_Q], values: torch.Tensor, bits: int, vmin: float, **kw: Any) -> _Q:
        """Start on the Lp-optimal (p = 2.4) uniform grid of sampled values."""
        return cls.from_uniform(act_quantizer_from_samples(values, bits, vmin), **kw)

    def __init__(self, bits: int, zero: float, signed: bool, channels: int, channel_axis: int):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an integer in 2..8, got {bits!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        if float(zero) != round(float(zero)):
            raise ValueError(f"zero must be an integer zero point, got {zero!r}")
        self.bits = int(bits)
        self.signed = bool(signed)
        self.channels = int(channels)
        self.channel_axis = int(channel_axis)
        self.register_buffer("zero", torch.tensor([float(zero)]))
        self.drop_prob = 1.0  # QDrop: probability of quantizing each element while training
        self.lsq_grad_scale = True  # scale the step's gradient by 1/sqrt(numel * qmax)

    @property
    def qmax(self) -> int:
        """The largest code, 2^bits - 1."""
        return (1 << self.bits) - 1

    @property
    def n_thresholds(self) -> int:
        return self.qmax

    def _quant(self, x2: torch.Tensor, numel: int) -> torch.Tensor:
        raise NotImplementedError

    def thresholds(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _rows_view(x, self.channels, self.channel_axis)
        xq = self._quant(x2.float(), x.numel()).reshape(x.shape).to(x.dtype)
        if self.drop_prob < 1.0 and self.training:
            keep = torch.rand_like(x) < self.drop_prob
            xq = torch.where(keep, xq, x)
        return xq

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 codes of x from the exported thresholds (the packed path's requantize step)."""
        x2 = _rows_view(x, self.channels, self.channel_axis)
        t = self.thresholds()
        if self.channels == 1:
            t = t.reshape(1, -1)
        return torch.from_numpy(_native.threshold_quantize(x2, t, self.bits)).reshape(x.shape)

    def export(self) -> dict:
        """What an integer kernel needs: thresholds (C, 2^b - 1) in input units, the output
        step and zero point (x^ = scale * (code - zero)), bits and the channel axis."""
        return {"thresholds": self.thresholds(), "scale": float(self.output_scale()),
                "zero": float(self.zero.item()), "bits": self.bits,
                "channel_axis": self.channel_axis}

    def output_scale(self) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def stats(self, x: torch.Tensor) -> dict:
        """Report figures on inputs x: level occupancy (fractions, 2^b of them), dead levels
        (never hit), and how far the thresholds moved from the uniform grid's midpoints
        s (k + 1/2 - z), in steps (mean and max over channels and levels)."""
        c = self.codes(x).reshape(-1).long()
        occ = torch.bincount(c, minlength=self.qmax + 1).double() / max(c.numel(), 1)
        s = self.output_scale()
        k = torch.arange(self.qmax, dtype=torch.float32)
        dev = (self.thresholds() / s - (k + 0.5 - self.zero.float())).abs()
        return {"occupancy": [round(float(v), 6) for v in occ], "dead_levels": int((occ == 0).sum()),
                "threshold_shift_mean": float(dev.mean()), "threshold_shift_max": float(dev.max())}


class BorderActQuantizer(_ThresholdActQuantizer):
    """AQuant activation quantizer: a learned rounding border per input channel and level.

    ``x^ = s * (q - z)`` with v = x/s + z, k = floor(v), f = v - k and q = k + [f >= B_{c,k}]
    (hard) or k + sigmoid((f - B_{c,k}) / tau) (soft, while training with ``hard=False``);
    outside [0, 2^b - 1) the codes saturate. ``B = clamp(1/2 + delta, eps, 1 - eps)`` with delta
    a free (C, 2^b - 1) table (``"table"``) or ``alpha_c (k + 1/2) / n + beta_c`` (``"affine"``, n = 2^b - 1);
    ``"auto"`` picks the table at <= 3 bits. The step ``scale`` learns by LSQ. Borders start at
    1/2, i.e. at the data's uniform grid. Eval mode always uses hard decisions.
    """

    # Set by the aquant method: digest of the weight codes the borders were learned for.
    learned_for: str

    def __init__(self, bits: int, scale: float = 1.0, zero: float = 0.0, signed: bool = False, *,
                 channels: int = 1, channel_axis: int = 1, parameterization: str = "auto",
                 eps: float = 1e-3, tau: float = 0.2):
        super().__init__(bits, zero, signed, channels, channel_axis)
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        if parameterization == "auto":
            parameterization = "table" if bits <= 3 else "affine"
        if not 0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.parameterization = parameterization
        self.eps = float(eps)
        self.tau = float(tau)
        self.hard = False
        width = 2 if parameterization == "affine" else self.qmax
        self.border_param = nn.Parameter(torch.zeros(channels, width))
        self.scale = nn.Parameter(torch.tensor([float(scale)]))

    @property
    def affine(self) -> bool:
        """True with the affine border parameterisation, False with the table."""
        return self.parameterization == "affine"

    def borders(self) -> torch.Tensor:
        """B (C, 2^b - 1), each in [eps, 1 - eps]."""
        B = _native.border_table(self.border_param, self.bits, affine=self.affine, eps=self.eps)
        return torch.from_numpy(B)

    def thresholds(self) -> torch.Tensor:
        """t_{c,k} = s (k + B_{c,k} - z), (C, 2^b - 1), strictly increasing along k."""
        s, z = self.scale.detach().float(), self.zero.float()
        k = torch.arange(self.qmax, dtype=torch.float32)
        return s * (k + self.borders() - z)

    def output_scale(self) -> float:
        """The output step s (x^ = s * (code - zero))."""
        return float(self.scale.item())

    def _quant(self, x2: torch.Tensor, numel: int) -> torch.Tensor:
        s = self.scale
        if self.lsq_grad_scale and s.requires_grad:
            s = _grad_scaled(s, 1.0 / math.sqrt(max(numel, 1) * self.qmax))
        hard = self.hard or not self.training
        return BorderQuantFunction.apply(x2, self.border_param, s, self.bits, float(self.zero.item()),
                                         self.tau, hard, self.affine, self.eps)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, channels={self.channels}, {self.parameterization}, "
                f"scale={self.scale.item():.4g}, tau={self.tau:.3g}, hard={self.hard}")


class LTQActQuantizer(_ThresholdActQuantizer):
    """N2UQ's learnable threshold quantizer with uniform integer outputs.

    Per channel (``channels=1``: per tensor, as in N2UQ): ``start``, interval lengths ``a``
    (2^b - 1, floored at ``a_min``) and ``in_scale`` (floored at 1e-3); per tensor the output
    step ``scale``. u = in_scale * x, d_i = start + a_1 + ... + a_i, thresholds at the segment
    midpoints, x^ = scale * (#{i : u >= d_{i-1} + a_i / 2} - zero); G-STE backward.
    Initialised from the uniform grid (s, z): start = -z s, a_i = s, in_scale = 1, scale = s,
    which reproduces it exactly (up to ties). ``a_min`` defaults to 1e-3 of the initial step.
    The parameters ``start`` and ``a`` are stored in units of that initial step (buffer
    ``unit``); ``offset_and_intervals()`` gives them in input units.
    """

    unit: torch.Tensor  # buffer: the initial step

    def __init__(self, bits: int, scale: float = 1.0, zero: float = 0.0, signed: bool = False, *,
                 channels: int = 1, channel_axis: int = 1, a_min: float | None = None):
        super().__init__(bits, zero, signed, channels, channel_axis)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        s = float(scale)
        self.a_min = float(a_min) if a_min is not None else 1e-3 * s
        if not self.a_min > 0:
            raise ValueError(f"a_min must be > 0, got {a_min!r}")
        self.s1_min = 1e-3
        # start and a are stored in units of the initial step, so one learning rate suits
        # layers of any activation scale (N2UQ assumes inputs of order 1 instead).
        self.register_buffer("unit", torch.tensor([s]))
        self.start = nn.Parameter(torch.full((channels,), -float(zero)))
        self.a = nn.Parameter(torch.ones(channels, self.qmax))
        self.in_scale = nn.Parameter(torch.ones(channels))
        self.scale = nn.Parameter(torch.tensor([s]))

    def offset_and_intervals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """start (C,) and interval lengths a (C, 2^b - 1) in input units (before the floor)."""
        return self.start * self.unit, self.a * self.unit

    def threshold_parameters(self) -> list[nn.Parameter]:
        """start, a, in_scale: the group N2UQ trains at a tenth of the learning rate."""
        return [self.start, self.a, self.in_scale]

    def thresholds(self) -> torch.Tensor:
        """(C, 2^b - 1) thresholds in x units, strictly increasing along the last axis."""
        start, a = self.offset_and_intervals()
        t = _native.ltq_thresholds(start, a, self.in_scale, self.bits, a_min=self.a_min,
                                   s1_min=self.s1_min)
        return torch.from_numpy(t)

    def output_scale(self) -> float:
        """The output step s (x^ = s * (code - zero))."""
        return float(self.scale.item())

    def _quant(self, x2: torch.Tensor, numel: int) -> torch.Tensor:
        s = self.scale
        if self.lsq_grad_scale and s.requires_grad:
            s = _grad_scaled(s, 1.0 / math.sqrt(max(numel, 1) * self.qmax))
        start, a = self.offset_and_intervals()
        return LTQFunction.apply(x2, start, a, self.in_scale, s, self.bits,
                                 float(self.zero.item()), self.a_min, self.s1_min)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, channels={self.channels}, scale={self.scale.item():.4g}"


def threshold_act_quantizer(layer: QuantLayer, kind: str, *, per_channel: bool = True,
                            **kw) -> _ThresholdActQuantizer:
    """A BorderActQuantizer (``kind="border"``, AQuant) or LTQActQuantizer (``"ltq"``, N2UQ) on
    the grid of ``layer.act_quant`` (a calibrated UniformActQuantizer), per input channel of the
    layer (conv: axis 1, linear: the last axis) or per tensor. It reproduces that grid until it
    learns; assign it to ``layer.act_quant``. Extra keywords go to the quantizer."""
    if not isinstance(layer, (QuantConv2d, QuantLinear)):
        raise TypeError(f"layer must be a QuantConv2d or QuantLinear, got {type(layer).__name__}")
    uq = layer.act_quant
    if not isinstance(uq, UniformActQuantizer):
        raise ValueError(f"layer has no calibrated uniform input quantizer to start from (act_quant is "
                         f"{type(uq).__name__}); quantize with a_bits set first")
    kinds: dict[str, type[_ThresholdActQuantizer]] = {"border": BorderActQuantizer, "ltq": LTQActQuantizer}
    if kind not in kinds:
        raise ValueError(f"kind must be one of {sorted(kinds)}, got {kind!r}")
    if isinstance(layer, QuantConv2d):
        channels, axis = layer.in_channels, 1
    else:
        channels, axis = layer.in_features, -1
    return kinds[kind].from_uniform(uq, channels=channels if per_channel else 1, channel_axis=axis, **kw)


# --- N2UQ weight quantizer ----------------------------------------------------------------


class N2UQWeightQuantizer(nn.Module):
    """N2UQ's weight quantizer (methods.md section 4.2), per output channel c:

    sf_c = gamma_b * mean|W_c| with gamma_b = (2^b - 1) / 2^(b-1) (a constant, no gradient);
    W' = clamp(W / sf_c, -alpha/2, alpha/2) with the clip alpha learnable (init 2);
    code = round((W' + alpha/2) (2^b - 1) / alpha) in 0..2^b - 1 (straight-through);
    W^ = sf_c * (code alpha / (2^b - 1) - alpha/2) = scale_c * (code - zero),
    scale_c = sf_c alpha / (2^b - 1), zero = (2^b - 1)/2.

    The levels are mid-rise (no zero level): at 2 bits {-3, -1, 1, 3} * alpha sf_c / 6. The
    zero point is a half-integer, so the stored form is ordinary uint8 codes plus a per-channel
    scale and a (R, 1) zero of (2^b - 1)/2; (code - zero) is an odd integer over 2.
    """

    def __init__(self, bits: int, alpha: float = 2.0):
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an integer in 2..8, got {bits!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.bits = int(bits)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    @property
    def qmax(self) -> int:
        """The largest code, 2^bits - 1."""
        return (1 << self.bits) - 1

    @property
    def gamma(self) -> float:
        """N2UQ's gamma_b = (2^b - 1) / 2^(b-1)."""
        return self.qmax / 2 ** (self.bits - 1)

    def channel_scale(self, w2d: torch.Tensor) -> torch.Tensor:
        """sf (out, 1) = gamma_b * mean|W_c| (detached; floored so an all-zero row is safe)."""
        sf = self.gamma * w2d.detach().abs().mean(dim=1, keepdim=True)
        return sf.clamp_min(torch.finfo(torch.float32).tiny)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """Fake-quantized weight (same shape), differentiable in w (STE) and alpha."""
        w2d = w.reshape(w.shape[0], -1)
        sf = self.channel_scale(w2d)
        half = self.alpha / 2
        wn = torch.maximum(torch.minimum(w2d / sf, half), -half)
        code = round_ste((wn + half) * self.qmax / self.alpha)
        return (sf * (code * self.alpha / self.qmax - half)).reshape(w.shape)

    @torch.no_grad()
    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 codes (out, K), scale (out, 1), zero (out, 1)): QuantLayer.set_codes's form."""
        w2d = w.reshape(w.shape[0], -1).float()
        sf = self.channel_scale(w2d)
        alpha = self.alpha.detach().float()
        wn = torch.clamp(w2d / sf, -alpha / 2, alpha / 2)
        code = torch.clamp(torch.round((wn + alpha / 2) * self.qmax / alpha), 0, self.qmax)
        scale = sf * alpha / self.qmax
        zero = torch.full_like(scale, self.qmax / 2)
        return code.to(torch.uint8), scale, zero

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={self.alpha.item():.4g}"
