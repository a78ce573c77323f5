"""Round to nearest: the baseline every other method starts from and is measured against.

``lowbit.quantize`` already rounds every layer to its nearest grid point (ranges from the Lp
search, p = 2.4) before any method stage runs, so by default this stage only records itself.

``bias_correction=True`` adds empirical bias correction (Nagel et al. 2019, "Data-Free
Quantization", section 4.2, here with calibration data): each layer's bias absorbs the typical
output shift of ``q(x) - f(x)`` per output channel, where ``f`` is the float layer, ``q`` the
quantized one (weight grid and input quantizer) and ``x`` the float model's input to that layer
on the calibration batches. Rounding a kernel with few taps (a 3x3 depthwise filter, K = 9)
shifts its DC gain; the shifts are systematic and accumulate through the network, which is
what costs MobileNetV2 most of its agreement at W8.

``preserve_sums=True`` fixes the cause rather than the symptom: each unit's codes are moved
(by the fewest, smallest re-roundings) to the integer nearest the unit's float sum, so a
filter's DC gain is kept to half a step. Runs before bias correction.

"Typical" is the mean over batches of each batch's per-channel median, not the plain mean:
where the error sits on a few rows (BERT's outlier tokens, whose activations the input
quantizer clips), their mean would shift every other row too; on minilm that turned a cosine
to FP of 0.99 into 0.12.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from lowbit import calib
from lowbit.config import QuantConfig
from lowbit.quantizers import expand_units, float_weight_2d
from lowbit.registry import register_method

if TYPE_CHECKING:
    from lowbit.api import QuantContext


@dataclasses.dataclass(frozen=True, kw_only=True)
class NearestConfig(QuantConfig):
    """bias_correction: fold the typical per-channel output shift of each quantized layer into
    its bias (measured on the calibration batches with float inputs). preserve_sums: re-round
    the fewest weights of each unit (row or group) so that its code sum is the nearest integer
    to its float sum (for convolutions: depthwise 3x3 filters on post-ReLU inputs)."""

    bias_correction: bool = False
    preserve_sums: bool = False


ROWS_PER_MEDIAN = 16384  # a batch's error rows (samples x positions) its median is taken over


def bias_correct(ctx: QuantContext) -> None:
    """Subtract from every quantized layer's bias its typical per-output-channel error: the
    mean over calibration batches of each batch's median (over a seeded sample of rows)."""
    names = [s.name for s in ctx.layers]
    medians: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    rows = torch.Generator().manual_seed(ctx.settings.seed)

    def on_input(name: str, x: torch.Tensor) -> None:
        f, q = ctx.fp_layer(name), ctx.qlayer(name)
        e = q(x) - f.forward(x)  # forward(): this hook sits on f
        e = e.movedim(1, -1) if hasattr(f, "kernel_size") else e  # conv: channels last
        e = e.reshape(-1, e.shape[-1])
        if e.shape[0] > ROWS_PER_MEDIAN:
            e = e[torch.randperm(e.shape[0], generator=rows)[:ROWS_PER_MEDIAN]]
        medians[name].append(e.median(0).values.double())

    with torch.no_grad(), calib.capture({n: ctx.fp_layer(n) for n in names}, on_input=on_input):
        for b in ctx.batches:
            calib.run_model(ctx.fp_model, b)
    with torch.no_grad():
        for name in names:
            if not medians[name]:
                continue
            q = ctx.qlayer(name)
            shift = torch.stack(medians[name]).mean(0).float()
            if q.bias is None:
                del q.bias
                q.register_buffer("bias", -shift)
            else:
                q.bias = q.bias - shift
            ctx.note(name, bias_shift=float(shift.abs().max()))


def sum_preserving_codes(w2d: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                         codes: torch.Tensor) -> torch.Tensor:
    """Nearest codes with each unit's sum (a row, or a row's group) moved to the integer nearest
    its float sum: the d elements whose rounding went furthest the other way are re-rounded
    (d = the row's deficit in steps), the least total change that restores the sum. The unit sum
    is the filter's response to a constant input, which nearest rounding lets drift by a random
    walk of sqrt(K) half-steps."""
    R, K = w2d.shape
    G = scale.shape[1]
    t = (w2d / expand_units(scale, R, K) + expand_units(zero, R, K)).reshape(R, G, K // G)
    c = codes.reshape(R, G, K // G).float()
    resid = t - c  # in [-0.5, 0.5] where not clipped
    # (R, G) steps, summed in float64: long float32 sums lose the fraction that decides it
    deficit = torch.round((t.clamp(0, (1 << bits) - 1) - c).double().sum(-1)).float()
    up = resid.masked_fill(c >= (1 << bits) - 1, float("-inf"))
    down = (-resid).masked_fill(c <= 0, float("-inf"))
    # Stable sorts: ties go to the first column, whatever the thread count.
    # rank 0 = the first to round up (or down)
    rank_up = up.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1, stable=True)
    rank_down = down.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1, stable=True)
    d = deficit.unsqueeze(-1)
    c = c + ((rank_up < d) & (up > float("-inf"))).float() - ((rank_down < -d) & (down > float("-inf"))).float()
    return c.reshape(R, K).to(torch.uint8)


@register_method("nearest", NearestConfig, "round each weight to the nearest grid point (baseline)")
def run(ctx: QuantContext, config: NearestConfig) -> None:
    """Round each weight to the nearest grid point (baseline), optionally bias-corrected."""
    # The context arrives nearest-rounded, and report rows default to "nearest".
    if config.preserve_sums:
        for spec in ctx.layers:
            if ctx.report[spec.name].method != "nearest":  # an earlier stage chose these codes
                continue
            q = ctx.qlayer(spec.name)
            w = float_weight_2d(ctx.fp_layer(spec.name))
            codes = sum_preserving_codes(w, q.scale, q.zero, q.w_bits, q.codes.reshape(w.shape))
            q.set_codes(codes.reshape(q.codes.shape), q.scale, q.zero, q.w_bits)
    if config.bias_correction:
        bias_correct(ctx)
