"""N2UQ as post-training quantization: learned input thresholds with uniform integer outputs
(Liu et al., CVPR 2022; methods.md section 4.5, "N2UQ-PTQ").

N2UQ itself is quantization-aware training; this stage is lowbit's post-training variant, and
``lowbit.finetune`` is the short-QAT one. Numbers from the two must be quoted as such.

What the stage does, in execution order of the model's blocks (BRECQ / QDrop units, as AdaRound's
block mode; a quantized layer outside every block is a unit of its own):

1. every low-bit input quantizer (a_bits < 8) becomes an ``LTQActQuantizer`` on the calibrated
   uniform grid (equal intervals, i.e. the data's Lp-optimal uniform grid: methods.md 4.6);
2. every low-bit weight (w_bits < 8) moves to N2UQ's grid (section 4.2): per output channel
   sf_c = gamma_b mean|W_c|, mid-rise levels over [-alpha/2, alpha/2] sf_c, alpha per layer from
   an Lp (p = 2.4) search (the reference learns alpha by QAT; here it is searched once, then
   fixed, because AdaRound's rounding variables live on a fixed grid);
3. each unit is reconstructed with AdaRound's block loop: rounding V on that grid, QDrop input
   mixing, and the LTQ parameters (offset, interval lengths, input scale, output step) learned
   with G-STE through the ``BlockExtension`` hook.

Stored form: ordinary uint8 codes, a per-channel scale sf_c alpha / (2^b - 1) and the half-integer
zero (2^b - 1) / 2; ``lowbit.pack`` stores it exactly as (b + 1)-bit codes 2q with scale / 2 and
zero 2^b - 1 (the packed formats hold integer zero points), so the packed kernels run it
unchanged; activations keep LTQ thresholds with uniform integer outputs
(``LTQActQuantizer.export``).

Report (``ctx.note`` per layer): weight and activation level occupancy (2^b fractions each),
dead levels, the threshold spread (largest / smallest interval between consecutive thresholds;
1 on a uniform grid) and the mean / max threshold shift from the uniform midpoints, in steps.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Iterable, cast

import torch
import torch.nn as nn

from lowbit import calib
from lowbit.config import QuantConfig, check_range
from lowbit.methods import adaround
from lowbit.quantizers import QuantLayer, UniformActQuantizer, dequantize_codes, float_weight_2d
from lowbit.registry import register_method
from lowbit.threshold import LTQActQuantizer, N2UQWeightQuantizer, threshold_act_quantizer

if TYPE_CHECKING:
    from lowbit.api import QuantContext

WEIGHT_GRIDS = ("n2uq", "uniform")
ALPHA_CANDIDATES = tuple(0.25 + 0.05 * i for i in range(76))  # alpha search: 0.25 .. 4.0
STATS_SAMPLES = 256  # calibration samples behind the occupancy figures


@dataclasses.dataclass(frozen=True, kw_only=True)
class N2UQConfig(QuantConfig):
    """Options of N2UQ-PTQ (block reconstruction with learned LTQ thresholds).

    iters: optimisation steps per block (methods.md 4.5 suggests 5k-20k; fewer on small models).
    reg_lambda, beta, warmup, lr, batch, num_samples, drop_prob: AdaRound / QDrop's, as in
        ``AdaRoundConfig`` (rounding V on the N2UQ weight grid, QDrop mixing with drop_prob).
    threshold_lr: Adam learning rate of the LTQ offset, interval lengths and input scale (stored
        in units of the initial step, so one rate fits every layer); the output step learns at
        the same rate relative to its initial value. Cosine decay to 0 over each block.
    per_channel: one LTQ per input channel instead of per tensor (N2UQ is per tensor).
    weight_grid: "n2uq" (L1-normalised mid-rise grid, alpha searched per layer) or "uniform"
        (keep lowbit's Lp-searched asymmetric grid: thresholds are then the only N2UQ part).
    learn_rounding: learn AdaRound's V (False keeps nearest rounding on the grid and learns only
        the thresholds).
    keep_better: keep a unit's starting state when the learned one reconstructs worse.
    seed_offset: added to lowbit.quantize's seed for minibatches and QDrop draws.
    """

    iters: int = 5000
    reg_lambda: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    lr: float = 1e-3
    batch: int = 32
    num_samples: int = 1024
    drop_prob: float = 0.5
    threshold_lr: float = 2e-3
    per_channel: bool = False
    weight_grid: str = "n2uq"
    learn_rounding: bool = True
    keep_better: bool = True
    seed_offset: int = 0

    def validate(self) -> None:
        if self.weight_grid not in WEIGHT_GRIDS:
            raise ValueError(f"weight_grid must be one of {WEIGHT_GRIDS}, got {self.weight_grid!r}")
        for name in ("per_channel", "learn_rounding", "keep_better"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_range("threshold_lr", self.threshold_lr, 0.0, 10.0)
        # The AdaRound fields are checked by AdaRoundConfig itself (same names and ranges).
        self.adaround()

    def adaround(self) -> adaround.AdaRoundConfig:
        """The AdaRound block-mode config that drives the reconstruction loop."""
        return adaround.AdaRoundConfig(
            iters=self.iters, reg_lambda=self.reg_lambda if self.learn_rounding else 0.0,
            beta=self.beta, warmup=self.warmup, lr=self.lr if self.learn_rounding else 1e-12,
            batch=self.batch, num_samples=self.num_samples, mode="block", drop_prob=self.drop_prob,
            learn_act_scale=False, keep_better=self.keep_better, seed_offset=self.seed_offset)


# --- weight grid ----------------------------------------------------------------------------


def n2uq_weight_grid(w2d: torch.Tensor, bits: int, p: float = 2.4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """N2UQ's grid for a (out, K) weight with the clip alpha minimising sum |W - Q(W)|^p over
    ALPHA_CANDIDATES: (codes, scale (out, 1), zero (out, 1), alpha)."""
    best = None
    for alpha in ALPHA_CANDIDATES:
        codes, scale, zero = N2UQWeightQuantizer(bits, alpha).quantize(w2d)
        err = float((dequantize_codes(codes, scale, zero) - w2d).abs().double().pow(p).sum())
        if best is None or err < best[0]:
            best = (err, codes, scale, zero, alpha)
    assert best is not None  # ALPHA_CANDIDATES is not empty
    _, codes, scale, zero, alpha = best
    return codes, scale, zero, float(alpha)


# --- QDrop for LTQ inside the block loop ----------------------------------------------------


class _DroppingLTQ(nn.Module):
    """An LTQ with QDrop: while gradients are on (the block loop's training steps) each element
    keeps its float value with probability drop_prob, from a seeded generator. Evaluations run
    under no_grad and never drop."""

    def __init__(self, ltq: LTQActQuantizer, drop_prob: float, gen: torch.Generator):
        super().__init__()
        self.ltq = ltq
        self.drop_prob = float(drop_prob)
        self.gen = gen

    @property
    def bits(self) -> int:
        return self.ltq.bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.ltq(x)
        if self.drop_prob > 0 and torch.is_grad_enabled():
            xq = torch.where(torch.rand(x.shape, generator=self.gen) < self.drop_prob, x, xq)
        return xq


class LTQExtension(adaround.BlockExtension):
    """Learns the LTQ parameters of a block's layers jointly with AdaRound's V."""

    def __init__(self, threshold_lr: float, drop_prob: float):
        self.lr = float(threshold_lr)
        self.drop_prob = float(drop_prob)
        self.swapped: list[tuple[QuantLayer, LTQActQuantizer, dict]] = []

    def setup(self, ctx: QuantContext, unit, config, seed):
        gen = torch.Generator().manual_seed(seed)
        groups = []
        for name in unit.layers:
            q = ctx.qlayer(name)
            if not isinstance(q.act_quant, LTQActQuantizer):
                continue
            ltq = q.act_quant
            self.swapped.append((q, ltq, copy.deepcopy(ltq.state_dict())))
            q.act_quant = _DroppingLTQ(ltq, self.drop_prob, gen)
            if self.lr > 0:
                groups.append({"params": ltq.threshold_parameters(), "lr": self.lr})
                groups.append({"params": [ltq.scale], "lr": self.lr * float(ltq.unit)})
        return groups

    def finish(self, ctx: QuantContext, unit, keep):
        for q, ltq, state in self.swapped:
            if not keep:
                ltq.load_state_dict(state)
            q.act_quant = ltq
        self.swapped = []


# --- report figures -------------------------------------------------------------------------


def occupancy(codes: torch.Tensor, bits: int) -> list[float]:
    """Fraction of codes at each of the 2^b levels."""
    c = codes.reshape(-1).long()
    occ = torch.bincount(c, minlength=1 << bits).double() / max(c.numel(), 1)
    return [round(float(v), 6) for v in occ]


def threshold_spread(ltq: LTQActQuantizer) -> float:
    """Largest over smallest gap between consecutive thresholds (over channels); 1 = uniform.
    Infinite when the grid has a single threshold (1 bit) is impossible here (bits >= 2)."""
    t = ltq.thresholds().double()
    if t.shape[-1] < 2:
        return 1.0
    gaps = t[:, 1:] - t[:, :-1]
    return float(gaps.max() / gaps.min().clamp_min(1e-30))


@torch.no_grad()
def level_figures(qmodel: nn.Module, names: Iterable[str], batches: list[calib.Batch],
                  max_samples: int = STATS_SAMPLES) -> dict[str, dict]:
    """Per layer: weight occupancy and dead levels; for LTQ inputs also activation occupancy
    (on up to max_samples samples of batches), dead levels, threshold spread and shift."""
    names = list(names)
    layers = {n: cast(QuantLayer, qmodel.get_submodule(n)) for n in names}  # names: quantized layers
    counts: dict[str, torch.Tensor] = {}
    ltqs = {n: q.act_quant for n, q in layers.items() if isinstance(q.act_quant, LTQActQuantizer)}

    def on_input(name: str, x: torch.Tensor) -> None:
        if name in ltqs:
            c = ltqs[name].codes(x.float()).reshape(-1).long()
            n = torch.bincount(c, minlength=ltqs[name].qmax + 1)
            counts[name] = counts[name] + n if name in counts else n

    was_training = qmodel.training
    qmodel.eval()
    try:
        with calib.capture({n: layers[n] for n in ltqs}, on_input=on_input):
            for b in calib.chunks(batches, max_samples):
                calib.run_model(qmodel, b)
    finally:
        qmodel.train(was_training)
    out = {}
    for n, q in layers.items():
        w_occ = occupancy(q.codes, q.w_bits)
        fig = {"weight_occupancy": w_occ, "weight_dead_levels": sum(v == 0 for v in w_occ)}
        if n in ltqs and n in counts:
            ltq = ltqs[n]
            occ = counts[n].double() / max(int(counts[n].sum()), 1)
            a_occ = [round(float(v), 6) for v in occ]
            s = ltq.output_scale()
            k = torch.arange(ltq.qmax, dtype=torch.float64)
            shift = (ltq.thresholds().double() / s - (k + 0.5 - float(ltq.zero.item()))).abs()
            fig.update(act_occupancy=a_occ, act_dead_levels=sum(v == 0 for v in a_occ),
                       threshold_spread=round(threshold_spread(ltq), 4),
                       threshold_shift_mean=round(float(shift.mean()), 4),
                       threshold_shift_max=round(float(shift.max()), 4))
        out[n] = fig
    return out


def note_levels(report, figures: dict[str, dict], prefix: str = "") -> dict:
    """Write level figures into report rows (keys prefixed) and return a model-wide summary."""
    dead_w = dead_a = 0
    spreads = []
    for n, fig in figures.items():
        report[n].extra.update({prefix + k: v for k, v in fig.items()})
        dead_w += fig["weight_dead_levels"]
        dead_a += fig.get("act_dead_levels", 0)
        if "threshold_spread" in fig:
            spreads.append(fig["threshold_spread"])
    return {"weight_dead_levels": dead_w, "act_dead_levels": dead_a,
            "threshold_spread_max": max(spreads) if spreads else None,
            "threshold_spread_mean": sum(spreads) / len(spreads) if spreads else None}


# --- the method -----------------------------------------------------------------------------


def _units(ctx: QuantContext, names: list[str], batch: calib.Batch) -> list[adaround.BlockUnit]:
    """Blocks (as AdaRound's block mode) and, for layers outside every block, one-layer units."""
    units = adaround.find_blocks(ctx.qmodel, names, batch)
    inside = {n for u in units for n in u.layers}
    units += [adaround.BlockUnit(n, [n]) for n in names if n not in inside]
    order = {n: i for i, n in enumerate(names)}
    return sorted(units, key=lambda u: order[u.layers[0]])


@register_method("n2uq", N2UQConfig, "learned input thresholds with uniform integer outputs (N2UQ, post-training)")
def run(ctx: QuantContext, config: N2UQConfig) -> None:
    """Learned input thresholds with uniform integer outputs (N2UQ, post-training)."""
    names = [s.name for s in ctx.layers if s.w_bits < 8 or (s.a_bits is not None and s.a_bits < 8)]
    if not names:
        return
    per_layer_alpha = {}
    for name in names:
        q = ctx.qlayer(name)
        if isinstance(q.act_quant, UniformActQuantizer) and q.act_quant.bits < 8:
            q.act_quant = threshold_act_quantizer(q, "ltq", per_channel=config.per_channel)
        if config.weight_grid == "n2uq" and q.w_bits < 8:
            codes, scale, zero, alpha = n2uq_weight_grid(float_weight_2d(ctx.fp_layer(name)).float(), q.w_bits)
            q.set_codes(codes, scale, zero, q.w_bits)
            per_layer_alpha[name] = alpha
    ada = config.adaround()
    batches = adaround._samples(ctx, config.num_samples)
    units = _units(ctx, names, batches[0].head(2))
    for i, unit in enumerate(units):
        ext = LTQExtension(config.threshold_lr, config.drop_prob)
        adaround.reconstruct_block(ctx, unit, ada, i, batches, [ext])
        for n in unit.layers:
            row = ctx.report[n]
            kept = row.extra.get("kept_nearest", False)
            row.method = "n2uq (start kept)" if kept else "n2uq"
            extra = row.extra
            # reconstruct_block notes AdaRound's names; give the N2UQ ones too
            extra["recon_start"] = extra.get("recon_nearest")
            extra["recon_n2uq"] = extra.get("recon_adaround")
            extra["weight_grid"] = config.weight_grid if n in per_layer_alpha else "uniform"
            if n in per_layer_alpha:
                extra["alpha"] = per_layer_alpha[n]
            q = ctx.qlayer(n)
            extra["act_quantizer"] = "ltq" if isinstance(q.act_quant, LTQActQuantizer) else (
                None if q.act_quant is None else "uniform")
    figures = level_figures(ctx.qmodel, names, ctx.batches)
    ctx.report.meta["n2uq"] = note_levels(ctx.report, figures)
