"""AQuant: learned activation rounding borders (Li et al., arXiv 2208.11945), EXPERIMENTAL.

There is no public code for AQuant; this is the reconstruction of methods.md section 2 (see
docs/threshold.md and docs/aquant.md for what is derived rather than published). Each layer's
input quantizer rounds up when the fractional part of x/s reaches a learned border B_{c,k}
(per input channel c and level k) instead of 1/2; at inference that is a per-channel
multi-threshold compare t_{c,k} = s (k + B_{c,k} - z) with uniform integer outputs
(``lowbit.threshold.BorderActQuantizer``).

Learning is AdaRound's block reconstruction in QDrop mode (``lowbit.methods.adaround``) with
one ``BlockExtension``: inside each block the borders, the LSQ activation steps and AdaRound's V
learn jointly against the FP block output, with QDrop's dropping of activation quantization and
of block-input elements. Borders are therefore always learned with the weight rounding they
will meet, and relearned from 1/2 by every AQuant run (never reused across weight
quantizations; ``lowbit.pack`` refuses borders whose layer's weights changed after learning).

Paper / methods.md symbols -> AQuantConfig fields (AdaRoundConfig's fields as in adaround.py):

    tau annealed 0.2 -> 0.01                 tau         ((0.2, 0.01), geometric)
    hard decisions in the last 10 %          hard_phase  (0.1)
    border learning rate                     border_lr   (5e-3, Adam, cosine to 0)
    table (<= 3 bits) / affine (> 3 bits)    parameterization ("auto" | "table" | "affine")
    coarse-grained: one border per input channel          per_channel (True; False: per tensor)
    lambda_g, KL(p_FP || p_Q) of the network outputs      kl_weight   (0: off, the default)

Layers outside every block that have an input quantizer are reconstructed as one-layer units
(the same loop); layers without one go through AdaRound's layer mode. After learning the
borders are hard; the report gets per-layer border figures (threshold shift in steps, level
occupancy, dead levels, border range).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from lowbit import calib
from lowbit.config import check_range
from lowbit.methods import adaround as A
from lowbit.quantizers import QuantConv2d, QuantLayer, QuantLinear, UniformActQuantizer
from lowbit.registry import register_method
from lowbit.threshold import PARAMETERIZATIONS, BorderActQuantizer

if TYPE_CHECKING:
    from lowbit.api import QuantContext

STATS_SAMPLES = 256  # calibration samples behind the per-layer border figures


@dataclasses.dataclass(frozen=True, kw_only=True)
class AQuantConfig(A.AdaRoundConfig):
    """Options of AQuant: every AdaRoundConfig field (block mode and QDrop dropping by default)
    plus the border's.

    tau: (start, end) temperature of the soft border sigmoid((f - B) / tau), annealed
        geometrically over the soft phase. hard_phase: share of the last steps with hard border
        decisions (the border still learns through the sigmoid at the final tau).
    border_lr: Adam learning rate of the border parameters (cosine decay to 0, as the steps).
    parameterization: "table" (a free border per channel and level), "affine" (alpha, beta per
        channel, methods.md 2.3) or "auto" (table at <= 3 activation bits, affine above).
    per_channel: one border function per input channel (the coarse-grained AQuant); False
        shares one per tensor. eps: borders are kept in [eps, 1 - eps].
    kl_weight: lambda_g of the global term KL(p_FP || p_Q) of the network outputs, the block's
        output pushed through the rest of the FP network; 0 (off) by default. Needs calibration
        batches with a single tensor input.
    """

    mode: str = "block"
    tau: tuple[float, float] = (0.2, 0.01)
    hard_phase: float = 0.1
    border_lr: float = 5e-3
    parameterization: str = "auto"
    per_channel: bool = True
    eps: float = 1e-3
    kl_weight: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.mode != "block":
            raise ValueError(f"mode must be 'block' for AQuant (borders learn in the block loop), got {self.mode!r}")
        tau = self.tau
        if not isinstance(tau, (tuple, list)) or len(tau) != 2:
            raise ValueError(f"tau must be a pair (start, end), got {tau!r}")
        for i, v in enumerate(tau):
            check_range(f"tau[{i}]", v, 1e-4, 10.0)
        if tau[1] > tau[0]:
            raise ValueError(f"tau must anneal downwards (start >= end), got {tuple(tau)!r}")
        object.__setattr__(self, "tau", (float(tau[0]), float(tau[1])))
        check_range("hard_phase", self.hard_phase, 0.0, 1.0)
        check_range("border_lr", self.border_lr, 0.0, 10.0)
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}")
        if not isinstance(self.per_channel, bool):
            raise ValueError(f"per_channel must be True or False, got {self.per_channel!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0 < self.eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {self.eps!r}")
        check_range("kl_weight", self.kl_weight, 0.0, 1e6)

    def tau_at(self, t: int, iters: int) -> tuple[float, bool]:
        """(tau, hard) at step t of 1..iters: geometric from tau[0] to tau[1] over the soft
        phase, then hard decisions at tau[1]."""
        soft_steps = iters * (1.0 - self.hard_phase)
        frac = (t - 1) / max(soft_steps - 1, 1)
        if t > soft_steps:
            return self.tau[1], True
        frac = min(max(frac, 0.0), 1.0)
        return self.tau[0] * (self.tau[1] / self.tau[0]) ** frac, False


def codes_digest(layer: QuantLayer) -> str:
    """A digest of a layer's weight codes, scale and zero: what its borders were learned for."""
    h = hashlib.sha256()
    for t in (layer.codes, layer.scale, layer.zero):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def uniform_grid(aq: nn.Module | None) -> UniformActQuantizer | None:
    """The uniform grid to start borders from: the quantizer itself, or a fresh uniform
    quantizer on an earlier AQuant run's step (its borders are dropped, never reused)."""
    if isinstance(aq, UniformActQuantizer):
        return aq
    if isinstance(aq, BorderActQuantizer):
        return UniformActQuantizer(aq.bits, float(aq.scale.detach().item()), float(aq.zero.item()), aq.signed)
    return None


def make_border_quantizer(layer: QuantLayer, base: UniformActQuantizer, config: AQuantConfig) -> BorderActQuantizer:
    if config.per_channel:
        # A QuantLayer is a QuantConv2d or a QuantLinear.
        channels, axis = ((layer.in_channels, 1) if isinstance(layer, QuantConv2d)
                          else (cast(QuantLinear, layer).in_features, -1))
    else:
        channels, axis = 1, 1
    return BorderActQuantizer.from_uniform(base, channels=channels, channel_axis=axis,
                                           parameterization=config.parameterization, eps=config.eps,
                                           tau=config.tau[0])


class _DroppingBorder(nn.Module):
    """The block-loop stand-in of a layer's input quantizer: a soft/hard BorderActQuantizer and
    QDrop dropping (FP value with probability drop_prob per element) from a seeded generator."""

    def __init__(self, quant: BorderActQuantizer, drop_prob: float, gen: torch.Generator):
        super().__init__()
        self.quant = quant
        self.drop_prob = float(drop_prob)
        self.gen = gen

    @property
    def bits(self) -> int:
        return self.quant.bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.quant(x)
        if self.drop_prob > 0:
            drop = torch.rand(x.shape, generator=self.gen) < self.drop_prob
            xq = torch.where(drop, x, xq)
        return xq


class BorderExtension(A.BlockExtension):
    """Learns borders and steps of the block's input quantizers jointly with V (and optionally
    the global KL term)."""

    replaces_act_steps = True

    def __init__(self, config: AQuantConfig, batches: list[calib.Batch] | None = None):
        self.config = config
        self.batches = batches
        self.swapped: list[tuple[QuantLayer, nn.Module | None, _DroppingBorder]] = []
        self._kl: dict | None = None
        self._fp_block: nn.Module | None = None

    # -- the global term ------------------------------------------------------------------
    def _kl_data(self, ctx: QuantContext) -> dict:
        if self._kl is None:
            assert self.batches is not None, "kl_weight > 0 needs BorderExtension(config, batches)"
            inputs = []
            for b in self.batches:
                if b.kwargs or len(b.args) != 1 or not isinstance(b.args[0], torch.Tensor):
                    raise ValueError("kl_weight > 0 needs calibration batches with a single tensor input, "
                                     f"got ({b.describe()})")
                inputs.append(b.args[0])
            x = torch.cat(inputs)
            with torch.no_grad():
                logits = torch.cat([ctx.fp_model(x[i:i + 256]) for i in range(0, len(x), 256)])
            self._kl = {"x": x, "logp": F.log_softmax(logits.float(), dim=-1), "model": ctx.fp_model}
        return self._kl

    def extra_loss(self, out, idx):
        if self.config.kl_weight == 0 or self._fp_block is None:
            return None
        kl = self._kl
        assert kl is not None  # _kl_data() ran before _fp_block was set
        hook = self._fp_block.register_forward_hook(lambda m, args, o: out)
        try:
            logits = kl["model"](kl["x"][idx])
        finally:
            hook.remove()
        term = F.kl_div(F.log_softmax(logits.float(), dim=-1), kl["logp"][idx], log_target=True,
                        reduction="batchmean")
        return self.config.kl_weight * term

    # -- the block loop hooks ---------------------------------------------------------------
    def setup(self, ctx: QuantContext, unit, config, seed):
        cfg = self.config
        gen = torch.Generator().manual_seed(seed)
        borders, steps = [], []
        for name in unit.layers:
            q = ctx.qlayer(name)
            base = uniform_grid(q.act_quant)
            if base is None:
                continue
            bq = make_border_quantizer(q, base, cfg)
            bq.scale.requires_grad_(cfg.learn_act_scale)
            wrap = _DroppingBorder(bq, cfg.drop_prob, gen).train()
            self.swapped.append((q, q.act_quant, wrap))
            q.act_quant = wrap
            borders.append(bq.border_param)
            if cfg.learn_act_scale:
                steps.append(bq.scale)
        groups = []
        if borders and cfg.border_lr > 0:
            groups.append({"params": borders, "lr": cfg.border_lr})
        if steps and cfg.act_lr > 0:
            groups.append({"params": steps, "lr": cfg.act_lr})
        if cfg.kl_weight > 0:
            self._kl_data(ctx)
            self._fp_block = ctx.fp_model.get_submodule(unit.name)
            self._fp_params = [p for p in ctx.fp_model.parameters() if p.requires_grad]
            for p in self._fp_params:
                p.requires_grad_(False)
        return groups

    def begin_step(self, t, iters):
        tau, hard = self.config.tau_at(t, iters)
        for _, _, wrap in self.swapped:
            wrap.quant.tau = tau
            wrap.quant.hard = hard

    def before_eval(self):
        for _, _, wrap in self.swapped:
            wrap.drop_prob = 0.0
            wrap.quant.hard = True
            wrap.quant.eval()

    def finish(self, ctx: QuantContext, unit, keep):
        for q, old, wrap in self.swapped:
            if keep:
                bq = wrap.quant
                bq.hard = True
                bq.tau = self.config.tau[1]
                bq.eval()
                for p in bq.parameters():
                    p.requires_grad_(False)
                with torch.no_grad():
                    bq.scale.clamp_(min=1e-12)
                q.act_quant = bq
            else:
                q.act_quant = old if isinstance(old, UniformActQuantizer) else uniform_grid(old)
        self.swapped = []
        if self._fp_block is not None:
            for p in self._fp_params:
                p.requires_grad_(True)
            self._fp_block = None


# --- driver and report ------------------------------------------------------------------------


def _units(ctx: QuantContext, config: AQuantConfig, names: list[str], batches: list[calib.Batch]) -> list:
    """Blocks, then one-layer units for the layers outside blocks that have an input quantizer,
    and plain layer names for the rest (AdaRound's layer mode), in execution order."""
    units: list = []
    in_block: set[str] = set()
    for u in A.find_blocks(ctx.qmodel, names, batches[0].head(2)):
        units.append(u)
        in_block.update(u.layers)
    for n in names:
        if n not in in_block:
            units.append(A.BlockUnit(n, [n]) if uniform_grid(ctx.qlayer(n).act_quant) is not None else n)
    order = {n: i for i, n in enumerate(names)}
    units.sort(key=lambda u: order[u.layers[0]] if isinstance(u, A.BlockUnit) else order[u])
    return units


@torch.no_grad()
def border_stats(ctx: QuantContext, names: list[str], batches: list[calib.Batch]) -> dict[str, dict]:
    """Per layer with learned borders: the quantizer's figures on the quantized network's
    inputs (``BorderActQuantizer.stats``: occupancy, dead levels, threshold shift in steps)
    plus the range of the borders."""
    layers = {n: ctx.qlayer(n) for n in names if isinstance(ctx.qlayer(n).act_quant, BorderActQuantizer)}
    if not layers:
        return {}
    xs: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    with calib.capture(layers, on_input=lambda n, x: xs[n].append(x.detach())):
        for b in calib.chunks(batches, STATS_SAMPLES):
            calib.run_model(ctx.qmodel, b)
    out = {}
    for n, q in layers.items():
        bq = cast(BorderActQuantizer, q.act_quant)  # the layers were chosen for it
        st = bq.stats(torch.cat(xs[n]))
        B = bq.borders()
        st.update(border_mean=float(B.mean()), border_min=float(B.min()), border_max=float(B.max()),
                  parameterization=bq.parameterization, channels=bq.channels,
                  act_scale=float(bq.scale.item()))
        out[n] = st
    return out


def run_aquant(ctx: QuantContext, config: AQuantConfig) -> None:
    batches = A._samples(ctx, config.num_samples)
    names = [s.name for s in ctx.layers if config.reconstruct_8bit or s.w_bits < 8]
    if not names:
        return
    units = _units(ctx, config, names, batches)
    relu: set[str] = set()
    plain = [u for u in units if isinstance(u, str)]
    if config.include_activation and plain:
        relu = A.relu_followed(ctx.fp_model, {n: ctx.fp_layer(n) for n in plain}, batches[0].head(2))
    ext = BorderExtension(config, batches)
    for i, u in enumerate(units):
        if isinstance(u, A.BlockUnit):
            A.reconstruct_block(ctx, u, config, i, batches, [ext])
            for n in u.layers:
                q = ctx.qlayer(n)
                if isinstance(q.act_quant, BorderActQuantizer):
                    q.act_quant.learned_for = codes_digest(q)
        else:
            A.reconstruct_layer(ctx, u, config, u in relu, i, batches)
    for n, st in border_stats(ctx, names, batches).items():
        row = ctx.report[n]
        if row.method == "adaround":
            row.method = "aquant"
        ctx.note(n, **{f"border_{k}" if not k.startswith("border") else k: v for k, v in st.items()})


@register_method("aquant", AQuantConfig, "learned activation rounding borders with AdaRound + QDrop (AQuant, experimental)")
def run(ctx: QuantContext, config: AQuantConfig) -> None:
    """Learned activation rounding borders with AdaRound + QDrop block reconstruction (AQuant,
    experimental: no public reference code)."""
    run_aquant(ctx, config)


def check_borders(layer: QuantLayer, name: str = "") -> None:
    """ValueError when a layer's learned borders were learned for other weights (the layer was
    re-rounded after AQuant): borders are never reused across weight quantizations."""
    aq = layer.act_quant
    learned_for = getattr(aq, "learned_for", None)
    if isinstance(aq, BorderActQuantizer) and learned_for is not None and learned_for != codes_digest(layer):
        raise ValueError(f"layer '{name}': its activation borders were learned for other weight codes "
                         "(the weights changed after AQuant); rerun method='aquant' on the final weights")


__all__ = ["AQuantConfig", "BorderExtension", "border_stats", "check_borders", "codes_digest"]
