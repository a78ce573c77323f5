"""Multipoint quantization (Liu, Ye, Zhou, Liu, AAAI 2021; methods.md section 5).

Each output channel's weight row is its ordinary b-bit quantization (the "base", the nearest
rounding ``lowbit.quantize`` starts from, at the layer's granularity) plus a few extra b-bit
rows, the points, each with its own scale:

    w_c  ~  base_c + sum_p a_p * (u_p - z_p)        u_p: b-bit codes, a_p: one float per point

All points share the layer's bit width, so the same integer kernel runs them ("mixed precision
without mixed-precision hardware"). Each point is the exact optimum of the residual fit (the
breakpoint sweep of section 5.2, in C++), its scale refit to the layer's output error; points
go to the channels whose output error drops most, from a max-heap, until ``overhead`` extra
rows, ``tolerance`` or ``max_points`` stops it. The output error of channel c is
``||w_c^T x - w~_c^T xq||^2`` over the calibration set, with x the float network's input to the
layer and xq the quantized network's (layers in order, so points also absorb the error that
arrives from earlier layers; QDrop's "quantized inputs, float targets"), or with xq = x
(``inputs="float"``: ``(w_c - w~_c)^T H (w_c - w~_c)``, one calibration pass for all layers).

Ablations: ``placement="random"`` puts the same number of points on random channels;
``represent="wider"`` instead re-quantizes the channels the placement chose at b+1 bits (true
per-channel mixed precision), the baseline multipoint is measured against.

The extra rows are counted in the report (``effective_bits``: code bits per weight, e.g.
"W2 + 5.0 % points = 2.10 effective bits") and in the size.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn as nn

from lowbit import _native, calib, graph
from lowbit.config import QuantConfig, check_bits, check_range
from lowbit.quantizers import (
    QuantConv2d,
    QuantLayer,
    QuantLinear,
    dequantize_codes,
    float_weight_2d,
    round_nearest,
    weight_grid,
)
from lowbit.registry import register_method

if TYPE_CHECKING:
    from lowbit.api import QuantContext
    from lowbit.pack import PackedLayer

    # The mixins below are only ever combined with these classes (MultipointLinear(MultipointMixin,
    # QuantLinear), ...): the type checker sees them as subclasses, at run time they derive from object.
    _QuantBase = QuantLayer
    _PackedBase = PackedLayer
else:
    _QuantBase = _PackedBase = object

PLACEMENTS = ("error", "random")
INPUTS = ("float", "quantized")
SCALE_FITS = ("output", "weight")
REPRESENTS = ("points", "wider")
GRAM_BYTES_PER_PASS = 1 << 30  # Gram matrices gathered in one calibration pass


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultipointConfig(QuantConfig):
    """Options of multipoint quantization.

    bits: bit width of the extra points (None: each layer's own w_bits, the paper's setting).
    overhead: extra point rows as a fraction of the output channels (0.05 = 5 %), apportioned
        over the layers in proportion to their channels; None: no row budget.
    tolerance: a channel stops once its output error <= tolerance * its output energy
        (w_c^T H w_c); 0 disables.
    max_points: points per channel, the base row counting as the first.
    placement: "error" (largest output-error drop first) or "random" (the ablation).
    scale_fit: "output" refits each point's scale to the output error; "weight" keeps the
        sweep's weight-space optimum.
    represent: "points" (multipoint) or "wider" (the chosen channels at w_bits + 1 instead).
    inputs: "float": the output error on the float network's inputs (one calibration pass);
        "quantized": on the inputs the quantized network feeds each layer, against the float
        targets (layers in order, each after the ones before it got their points; two passes
        per layer), so points also make up for the error arriving from earlier layers.
    num_samples: calibration samples behind the Gram matrices and errors (None: all of them;
        256 by default: a conv layer sees every spatial position of each, plenty for d x d).
    """

    bits: int | None = None
    overhead: float | None = 0.05
    tolerance: float = 0.0
    max_points: int = 4
    placement: str = "error"
    scale_fit: str = "output"
    represent: str = "points"
    inputs: str = "quantized"
    num_samples: int | None = 256

    def validate(self) -> None:
        check_bits("bits", self.bits, allow_none=True)
        if self.overhead is not None:
            check_range("overhead", self.overhead, 0, 64)
        check_range("tolerance", self.tolerance, 0, 1)
        check_range("max_points", self.max_points, 1, 64, integer=True)
        for name, allowed in (("placement", PLACEMENTS), ("scale_fit", SCALE_FITS), ("represent", REPRESENTS),
                              ("inputs", INPUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.num_samples is not None:
            check_range("num_samples", self.num_samples, 1, 1 << 40, integer=True)
        if self.overhead is None and self.tolerance == 0 and self.represent == "wider":
            raise ValueError("represent='wider' needs an overhead or a tolerance to choose channels")


class MultipointMixin(_QuantBase):
    """Extra state of a multipoint layer: point rows folded into their channels, and rows kept
    at a wider bit width (the mixed-precision baseline). Both are empty after set_codes."""

    # Buffers registered in _init_points.
    point_channel: torch.Tensor
    point_codes: torch.Tensor
    point_scale: torch.Tensor
    point_zero: torch.Tensor
    wide_channel: torch.Tensor
    wide_codes: torch.Tensor
    wide_scale: torch.Tensor
    wide_zero: torch.Tensor

    def _init_points(self) -> None:
        K = self.codes.shape[1]
        self.point_bits = self.w_bits
        self.register_buffer("point_channel", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("point_codes", torch.zeros(0, K, dtype=torch.uint8))
        self.register_buffer("point_scale", torch.zeros(0, 1))
        self.register_buffer("point_zero", torch.zeros(0, 1))
        self.wide_bits = self.w_bits
        self.register_buffer("wide_channel", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("wide_codes", torch.zeros(0, K, dtype=torch.uint8))
        self.register_buffer("wide_scale", torch.zeros(1, 1))
        self.register_buffer("wide_zero", torch.zeros(1, 1))

    @property
    def num_points(self) -> int:
        return int(self.point_channel.numel())

    def set_points(self, channel, codes, scale, zero, bits: int) -> None:
        """Point rows (P, K), each added to output channel ``channel[p]`` as scale * (codes - zero)."""
        self.point_bits = int(bits)
        self.point_channel = torch.as_tensor(np.asarray(channel), dtype=torch.int64).reshape(-1)
        self.point_codes = torch.as_tensor(np.asarray(codes), dtype=torch.uint8).reshape(-1, self.codes.shape[1])
        self.point_scale = torch.as_tensor(np.asarray(scale), dtype=torch.float32).reshape(-1, 1)
        self.point_zero = torch.as_tensor(np.asarray(zero), dtype=torch.float32).reshape(-1, 1)

    def set_wide(self, channel: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                 bits: int) -> None:
        """Rows ``channel`` replaced by their own quantization at ``bits`` (scale/zero (1|n, G))."""
        self.wide_bits = int(bits)
        self.wide_channel = channel.to(torch.int64).reshape(-1)
        self.wide_codes = codes.to(torch.uint8)
        self.wide_scale = scale.float()
        self.wide_zero = zero.float()

    def set_codes(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, w_bits: int) -> None:
        """QuantLayer.set_codes; drops the points and wide rows."""
        super().set_codes(codes, scale, zero, w_bits)
        self._init_points()  # points fitted to the old base would be wrong for the new one

    @property
    def weight(self) -> torch.Tensor:
        if self.weight_override is not None:
            return self.weight_override
        w = dequantize_codes(self.codes, self.scale, self.zero)
        if self.wide_channel.numel():
            w = w.index_copy(0, self.wide_channel, dequantize_codes(self.wide_codes, self.wide_scale, self.wide_zero))
        if self.point_channel.numel():
            pts = (self.point_codes.float() - self.point_zero) * self.point_scale
            w = w.index_add(0, self.point_channel, pts)
        return w.reshape(self.weight_shape)

    def code_bits(self) -> int:
        """Weight code bits, base + points + the extra bit of the wide rows."""
        base = self.codes.numel() * self.w_bits
        return (base + self.point_codes.numel() * self.point_bits
                + self.wide_codes.numel() * (self.wide_bits - self.w_bits))

    @property
    def effective_bits(self) -> float:
        return self.code_bits() / self.codes.numel()

    def extra_bytes(self) -> int:
        """Bytes beyond the base codes and scales: point codes, an fp16 scale and zero and an
        int16 channel index per point; the wide rows' extra bits, scales and indices."""
        pts = (self.point_codes.numel() * self.point_bits + 7) // 8 + 6 * self.num_points
        n_wide = int(self.wide_channel.numel())
        wide = 0
        if n_wide:
            wide = (self.wide_codes.numel() * (self.wide_bits - self.w_bits) + 7) // 8
            wide += 4 * self.wide_scale.numel() + 2 * n_wide
        return int(pts + wide)

    def packed_twin(self, name: str = "", dynamic_act: bool = False) -> nn.Module:
        """The packed equivalent of this layer (``lowbit.pack`` calls it; see packed_twin())."""
        return packed_twin(self, name, dynamic_act)


class MultipointLinear(MultipointMixin, QuantLinear):
    """QuantLinear with multipoint rows (fake-quant: the folded float weight)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._init_points()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", points={self.num_points}, wide={int(self.wide_channel.numel())}"


class MultipointConv2d(MultipointMixin, QuantConv2d):
    """QuantConv2d with multipoint rows (fake-quant: the folded float weight)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._init_points()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", points={self.num_points}, wide={int(self.wide_channel.numel())}"


def to_multipoint(q: QuantLayer) -> MultipointMixin:
    """A Multipoint twin of a QuantLinear / QuantConv2d with the same codes, scales, bias and
    input quantizer (and no points yet)."""
    kw = dict(codes=q.codes, scale=q.scale, zero=q.zero, bias=q.bias, w_bits=q.w_bits, act_quant=q.act_quant)
    if isinstance(q, QuantLinear):
        return MultipointLinear(q.in_features, q.out_features, **kw)
    if isinstance(q, QuantConv2d):
        return MultipointConv2d(q.in_channels, q.out_channels, q.kernel_size, q.stride, q.padding, q.dilation,
                                q.groups, **kw)
    raise TypeError(f"cannot add points to {type(q).__name__}")


def layer_grams(ctx: QuantContext, names: list[str], num_samples: int | None) -> dict[str, np.ndarray]:
    """Gram matrices (groups, K, K) of each layer's float inputs on the calibration data,
    gathered in as few passes as fit GRAM_BYTES_PER_PASS."""
    shapes = {}
    for n in names:
        mod = ctx.fp_layer(n)
        K = float_weight_2d(mod).shape[1]
        shapes[n] = (getattr(mod, "groups", 1), K, K)
    passes: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for n in names:
        nbytes = 4 * int(np.prod(shapes[n]))
        if cur and size + nbytes > GRAM_BYTES_PER_PASS:
            passes.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += nbytes
    if cur:
        passes.append(cur)
    grams: dict[str, np.ndarray] = {}
    for group in passes:
        H = {n: np.zeros(shapes[n], np.float32) for n in group}
        modules = {n: ctx.fp_layer(n) for n in group}

        def on_input(name: str, x: torch.Tensor, H=H, modules=modules) -> None:
            mod = modules[name]
            calib.accumulate_gram(mod, x, H[name] if isinstance(mod, nn.Conv2d) else H[name][0])

        with torch.no_grad(), calib.capture(modules, on_input=on_input):
            for b in calib.chunks(ctx.batches, num_samples):
                calib.run_model(ctx.fp_model, b)
        grams.update(H)
    return grams


class _Captured(Exception):
    """Ends a forward pass once the wanted layer's input is seen."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.x = x


def input_of(model: nn.Module, module: nn.Module, batch: calib.Batch) -> torch.Tensor:
    """The input `module` receives when `model` runs `batch`; the pass stops right there."""

    def stop(_m, args):
        raise _Captured(args[0])

    handle = module.register_forward_pre_hook(stop)
    try:
        model(*batch.args, **batch.kwargs)
    except _Captured as got:
        return got.x
    finally:
        handle.remove()
    raise RuntimeError(f"the calibration pass never reached layer {type(module).__name__}")


def _layer_out(mod: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's product with weight w (its own shape), no bias."""
    import torch.nn.functional as F

    if isinstance(mod, nn.Conv2d):
        return F.conv2d(x, w, None, mod.stride, mod.padding, mod.dilation, mod.groups)
    return F.linear(x, w)


def asymmetric_start(ctx: QuantContext, name: str, q: QuantLayer, W: torch.Tensor, base: torch.Tensor,
                     num_samples: int | None):
    """For layer `name` with float inputs x (float network) and quantized inputs xq (the
    quantized network, after the layer's input quantizer), over the calibration samples:

      H  = sum xq xq^T (Gram, C++), the curvature of every point update;
      g0 = Xq^T (Y - Yq) per channel, Y = X w^T the float target and Yq = Xq w~^T the base
           output (the weight gradient of <Yq, Y - Yq>, by autograd: no d x d cross-Gram);
      e0 = ||Y - Yq||^2 per channel,

    multipoint_build's asymmetric start, and a function giving the errors of any w~ from them:
    e(w~) = e0 - 2 D^T g0 + D^T H D with D = w~ - base (exact expansion, no float-input Gram).
    Two passes per batch (float and quantized model), each stopped at the layer."""
    fp_mod = ctx.fp_layer(name)
    groups = getattr(fp_mod, "groups", 1)
    C, K = W.shape
    Hqq = np.zeros((groups, K, K), np.float32)
    conv = isinstance(fp_mod, nn.Conv2d)
    wshape = fp_mod.weight.shape
    w4, b4 = W.reshape(wshape), base.reshape(wshape)
    g0 = torch.zeros(C, K, dtype=torch.float64)
    e0 = torch.zeros(C, dtype=torch.float64)
    for b in calib.chunks(ctx.batches, num_samples):
        with torch.no_grad():
            x = input_of(ctx.fp_model, fp_mod, b)
            xq = q.quantize_input(input_of(ctx.qmodel, q, b))
            calib.accumulate_gram(fp_mod, xq, Hqq if conv else Hqq[0])
            r = _layer_out(fp_mod, x, w4)
        with torch.enable_grad():
            wv = b4.detach().clone().requires_grad_(True)
            yq = _layer_out(fp_mod, xq.detach(), wv)
            r = r - yq.detach()
            yq.backward(r)
        grad = wv.grad
        assert grad is not None  # yq.backward() reached wv
        g0 += grad.reshape(C, K).double()
        r = r.double()
        e0 += (r.pow(2).sum(dim=[0, 2, 3]) if conv else r.reshape(-1, C).pow(2).sum(0))
    per = C // groups
    hs = [torch.from_numpy(Hqq[g]).double() for g in range(groups)]

    def errors(w_tilde: torch.Tensor) -> torch.Tensor:
        D = w_tilde.double() - base.double()
        e = e0 - 2 * (D * g0).sum(1)
        for g, h in enumerate(hs):
            r_ = slice(g * per, (g + 1) * per)
            e[r_] += ((D[r_] @ h) * D[r_]).sum(1)
        return e.clamp_min(0)

    return Hqq, g0.float().numpy(), e0.float().numpy(), errors


def apportion(total: float, sizes: list[int]) -> list[int]:
    """Integer budgets proportional to sizes summing to round(total) (largest remainder; ties
    to the earlier layer)."""
    whole = sum(sizes)
    if whole == 0:
        return [0] * len(sizes)
    quotas = [total * s / whole for s in sizes]
    out = [int(np.floor(q)) for q in quotas]
    left = int(round(total)) - sum(out)
    order = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - out[i]), i))
    for i in order[:max(left, 0)]:
        out[i] += 1
    return out


@register_method("multipoint", MultipointConfig, "extra low-bit points on the channels with the largest output error")
def run(ctx: QuantContext, config: MultipointConfig) -> None:
    """Extra low-bit points on the channels with the largest output error."""
    names = [s.name for s in ctx.layers if ctx.qlayer(s.name).w_bits < 8]
    skipped = [s.name for s in ctx.layers if s.name not in names]
    for n in skipped:
        ctx.note(n, multipoint="skipped: 8-bit layer")
    if not names:
        return
    grams = layer_grams(ctx, names, config.num_samples) if config.inputs == "float" else {}
    rows = {n: ctx.qlayer(n).codes.shape[0] for n in names}
    if config.overhead is not None:
        budgets = dict(zip(names, apportion(config.overhead * sum(rows.values()), [rows[n] for n in names])))
    else:
        budgets = {n: rows[n] * (config.max_points - 1) for n in names}

    for i, name in enumerate(ctx.progress(names, desc="multipoint", leave=False)):
        q = ctx.qlayer(name)
        bits = config.bits or q.w_bits
        W = float_weight_2d(ctx.fp_layer(name))
        base = dequantize_codes(q.codes, q.scale, q.zero)
        C = W.shape[0]
        order = None
        if config.placement == "random":
            rng = np.random.default_rng([ctx.settings.seed, i])
            order = np.concatenate([rng.permutation(C) for _ in range(config.max_points - 1)]).astype(np.int32)
        g0 = e0 = None
        if config.inputs == "quantized":
            grams[name], g0, e0, errors = asymmetric_start(ctx, name, q, W, base, config.num_samples)
        else:
            H = grams[name]

            def errors(w_tilde: torch.Tensor, H=H, W=W) -> torch.Tensor:
                return torch.from_numpy(_grouped_loss(W - w_tilde, H))
        res = _native.multipoint_build(
            W, base, grams[name], bits, budget=budgets[name], tolerance=config.tolerance,
            max_points=config.max_points, output_scale=config.scale_fit == "output", order=order,
            g0=g0, e0=e0)
        new = to_multipoint(q)
        if config.represent == "points":
            new.set_points(res["channel"], res["codes"], res["scale"], res["zero"], bits)
            err_after = float(res["err_after"].sum())
        else:
            chosen = torch.from_numpy(np.unique(res["channel"]).astype(np.int64))
            if chosen.numel():
                spec = ctx.spec(name)
                wb = q.w_bits + 1
                rows_w = W if spec.granularity == "tensor" else W[chosen]
                scale, zero = weight_grid(rows_w, wb, spec.granularity, spec.group_size, spec.symmetric)
                new.set_wide(chosen, round_nearest(W[chosen], scale, zero, wb), scale, zero, wb)
            wq = new.weight.detach().reshape(C, -1)
            err_after = float(errors(wq).sum())
        graph.set_module(ctx.qmodel, name, new)
        err_before = float(res["err_before"].sum())
        ctx.report[name].method = "multipoint"
        ctx.note(name, points=new.num_points, point_overhead=round(new.num_points / C, 4), effective_bits=round(new.effective_bits, 4),
                 wide_channels=int(new.wide_channel.numel()),
                 output_error_drop=round(1 - err_after / err_before, 4) if err_before > 0 else 0.0)

    mp = [cast(MultipointMixin, ctx.qlayer(n)) for n in names]  # each was swapped for to_multipoint(q)
    points = sum(m.num_points for m in mp)
    wide = sum(int(m.wide_channel.numel()) for m in mp)
    total_rows = sum(rows.values())
    eff = sum(m.code_bits() for m in mp) / sum(m.codes.numel() for m in mp)
    wb = ctx.settings.w_bits
    what = f"{100 * points / total_rows:.1f} % points" if config.represent == "points" else \
        f"{100 * wide / total_rows:.1f} % channels at W{wb + 1}"
    ctx.report.meta["multipoint"] = {
        "layers": len(names), "rows": total_rows, "points": points, "wide_channels": wide,
        "overhead": round(points / total_rows, 4), "effective_bits": round(eff, 4),
        "summary": f"W{wb} + {what} = {eff:.2f} effective bits",
    }


def _grouped_loss(dW: torch.Tensor, H: np.ndarray) -> np.ndarray:
    """Per channel dW_c^T H_g dW_c with channel c in group g = c / (C / groups)."""
    groups = H.shape[0]
    per = dW.shape[0] // groups
    return np.concatenate([_native.hessian_loss(dW[g * per:(g + 1) * per], H[g]) for g in range(groups)])


# -- packed inference -------------------------------------------------------------------------
#
# The point rows are stacked under the N base rows into one packed matrix of N + P rows (every
# row with its own scale and zero, the per-tensor base scale repeated per row), so the ordinary
# packed kernels (lowbit.pack) compute y_ext = x W_ext^T with each row already scaled; the
# segmented sum multipoint_fold (C++) adds each point's column into its channel, fused with the
# product in one native call (_native.multipoint_qmatmul).


def _packed_classes():
    from lowbit.pack import PackedConv2d, PackedLinear

    class PackedMultipointMixin(_PackedBase):
        """A packed layer whose matrix holds the base rows and then the point rows."""

        point_channel: torch.Tensor  # buffer registered in _setup_points

        def _setup_points(self, channel: torch.Tensor, n_out: int) -> None:
            self.rows_ext = self.out_features  # the packed matrix: N + P rows
            self.register_buffer("point_channel", channel.to(torch.int32).contiguous())
            self.out_features = int(n_out)

        @property
        def num_points(self) -> int:
            return int(self.point_channel.numel())

        def packed(self):
            return _native.packed_from_arrays(self.codes, self.scales, self.zeros, self.bits, self.rows_ext,
                                              self.K, self.group_size)

        def _matmul(self, x2: torch.Tensor, part: tuple | None = None,
                    channel: np.ndarray | None = None) -> torch.Tensor:
            # one native call: the product of the N + P rows and the fold (multipoint.h);
            # the fold channels are this layer's points unless given.
            if channel is None:
                channel = self.point_channel.numpy()
            return super()._matmul(x2, part, channel=channel)

        def weight_2d(self) -> torch.Tensor:
            w = super().weight_2d()
            N = self.out_features
            return w[:N].index_add(0, self.point_channel.long(), w[N:])

    class PackedMultipointLinear(PackedMultipointMixin, PackedLinear):
        """PackedLinear over base + point rows, folded back per channel (inference only)."""

        def extra_repr(self) -> str:
            return super().extra_repr() + f", points={self.num_points}"

    class PackedMultipointConv2d(PackedMultipointMixin, PackedConv2d):
        """PackedConv2d over base + point rows. groups == 1 runs im2col + the packed product +
        the fold; grouped convs (whose points break the equal row slices per group) run torch's
        convolution on the folded weight decoded once from the packed bytes."""

        def _setup_points(self, channel: torch.Tensor, n_out: int) -> None:
            super()._setup_points(channel, n_out)
            self.out_channels = int(n_out)

        @property
        def uses_kernel(self) -> bool:
            return self.groups == 1

        def _forward_decoded(self, x: torch.Tensor) -> torch.Tensor:
            import torch.nn.functional as F

            if self._weight_cache is None:
                self._weight_cache = self.weight
            if self.act_quant is not None:
                x = self.act_quant(x)
            bias = None if self.bias is None else self.bias[: self.out_channels]  # base rows' bias
            return F.conv2d(x, self._weight_cache, bias, self.stride, self.padding, self.dilation, self.groups)

        def extra_repr(self) -> str:
            return super().extra_repr() + f", points={self.num_points}"

    return PackedMultipointLinear, PackedMultipointConv2d


_PACKED: tuple | None = None


def packed_multipoint_classes() -> tuple:
    """(PackedMultipointLinear, PackedMultipointConv2d), built once lowbit.pack is imported."""
    global _PACKED
    if _PACKED is None:
        _PACKED = _packed_classes()
    return _PACKED


def _rows_of(p: torch.Tensor, rows: int, G: int) -> torch.Tensor:
    """(R, G') unit parameters as (rows, G): per-tensor repeated per row, one per row per group."""
    return p.float().expand(rows, p.shape[1]).repeat_interleave(G // p.shape[1], dim=1)


def packed_twin(layer: MultipointMixin, name: str = "", dynamic_act: bool = False) -> nn.Module:
    """The packed equivalent of a multipoint layer (``lowbit.pack`` calls it)."""
    import copy

    from lowbit import pack as P

    if layer.wide_channel.numel():
        raise ValueError(f"layer '{name}': rows at {layer.wide_bits} bits beside {layer.w_bits}-bit rows "
                         "(represent='wider', the mixed-precision baseline) are fake-quant only: one packed "
                         "matrix has one bit width")
    if layer.num_points and layer.point_bits != layer.w_bits:
        raise ValueError(f"layer '{name}': {layer.point_bits}-bit points on a {layer.w_bits}-bit base cannot "
                         "share a packed matrix; quantize with MultipointConfig(bits=None)")
    N, K = layer.codes.shape
    Pn = layer.num_points
    G = layer.scale.shape[1]
    codes = torch.cat([layer.codes, layer.point_codes])
    scale = torch.cat([_rows_of(layer.scale, N, G), layer.point_scale.expand(Pn, G)])
    zero = torch.cat([_rows_of(layer.zero, N, G), layer.point_zero.expand(Pn, G)])
    bias = None
    if layer.bias is not None:
        bias = torch.cat([layer.bias, torch.zeros(Pn)])
    kw = dict(codes=codes, scale=scale, zero=zero, bias=bias, w_bits=layer.w_bits, act_quant=None)
    ext: QuantLayer
    if isinstance(layer, QuantLinear):
        ext = QuantLinear(layer.in_features, N + Pn, **kw)
    else:
        conv = cast(QuantConv2d, layer)  # a multipoint layer is a MultipointLinear or a MultipointConv2d
        ext = QuantConv2d(conv.in_channels, N + Pn, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups if Pn == 0 else 1, **kw)
    w_bits, group_size, p = P._pack_arrays(ext, name)
    cls_lin, cls_conv = packed_multipoint_classes()
    pkw = dict(w_bits=w_bits, group_size=group_size, codes=torch.from_numpy(p.codes),
               scales=torch.from_numpy(p.scales), zeros=torch.from_numpy(p.zeros), bias=bias,
               act_quant=copy.deepcopy(layer.act_quant), dynamic_act=dynamic_act)
    if isinstance(layer, QuantLinear):
        out = cls_lin(layer.in_features, N + Pn, **pkw)
    else:
        conv = cast(QuantConv2d, layer)
        out = cls_conv(conv.in_channels, N + Pn, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                       conv.groups, **pkw)
    out._setup_points(layer.point_channel, N)
    return out

