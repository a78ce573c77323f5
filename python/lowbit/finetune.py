"""``lowbit.finetune``: short quantization-aware finetuning with knowledge distillation.

    qmodel = lowbit.quantize(model, calib, method="n2uq", w_bits=2, a_bits=2)
    qmodel = lowbit.finetune(qmodel, train_loader, epochs=1, lr=1e-3)

N2UQ's recipe (methods.md 4.3, 4.5 "N2UQ-short-QAT"), shortened: Adam, a linear learning-rate decay
to 0, soft cross-entropy against the teacher's softmax and no label loss, quantizer parameters at a
tenth of the learning rate. The teacher defaults to the float model the quantized model came from
(``lowbit.quantize`` keeps a reference to its BN-folded copy). The result is stored exactly as
``lowbit.quantize`` stores it (uint8 codes, scale, zero), so pack / save and the packed kernels
take it unchanged. Numbers after ``finetune`` are QAT numbers, not post-training ones.

What trains, per quantized layer:

- the weight through a latent float copy (straight-through rounding) that starts inside the
  rounding cell of the current code (at the float weight where that lies in the cell, else at the
  cell's centre: ``latent_start``), so step 0 reproduces the quantized model exactly;
- the weight grid: ``"n2uq"`` learns the clip alpha (one per layer) of N2UQ's L1-normalised
  per-channel scales, mid-rise levels kept; ``"lsq"`` learns every scale of the grid (LSQ, per
  channel or group), zero points kept. ``"auto"`` takes ``"n2uq"`` where ``method="n2uq"`` built
  the layer's grid and ``"lsq"`` elsewhere;
- the input quantizer: an ``LTQActQuantizer`` (N2UQ) learns its thresholds (offset, interval
  lengths, input scale) and output step by G-STE; a ``UniformActQuantizer`` learns its step by
  LSQ (the uniform baseline); any other kind stays frozen (noted in the report);
- the bias (float at inference anyway) and any parameter of layers left in float.

Weights and biases learn at ``lr``; quantizer parameters (thresholds, steps, clips; steps and
clips as ratios to their starting value) at ``quantizer_lr`` = lr / 10 by default.
"""

from __future__ import annotations

import copy
import math
import sys
import time
import types
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sized, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from lowbit import calib
from lowbit.config import check_range
from lowbit.quantizers import (
    QuantLayer,
    UniformActQuantizer,
    dequantize_codes,
    expand_units,
    round_ste,
)
from lowbit.threshold import LTQActQuantizer

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from lowbit.methods.adaround import LsqActQuant

WEIGHT_QUANTIZERS = ("auto", "n2uq", "lsq")
LOSSES = ("kd", "mse")
CELL_MARGIN = 0.49  # latent weights start within +-0.49 steps of their code: step 0 re-rounds to it
STATS_SAMPLES = 256


class WeightFakeQuant(nn.Module):
    """Trainable fake quantization of one QuantLayer's weight.

    W^ = s (clamp(round(W / s + z), 0, 2^b - 1) - z), s = scale0 * ratio, straight-through round.
    ``kind="n2uq"``: ratio is one scalar (N2UQ's clip alpha over its starting value, on fixed
    per-channel sf_c); ``"lsq"``: ratio has the grid's (R, G) shape (LSQ steps). z stays fixed.
    """

    # Buffers registered in __init__.
    scale0: torch.Tensor
    zero: torch.Tensor

    def __init__(self, layer: QuantLayer, latent: torch.Tensor, kind: str):
        super().__init__()
        if kind not in ("n2uq", "lsq"):
            raise ValueError(f"kind must be 'n2uq' or 'lsq', got {kind!r}")
        self.kind = kind
        self.bits = layer.w_bits
        self.weight = nn.Parameter(latent.detach().float().clone())
        self.register_buffer("scale0", layer.scale.detach().clone())
        self.register_buffer("zero", layer.zero.detach().clone())
        self.ratio = nn.Parameter(torch.ones((1, 1) if kind == "n2uq" else tuple(layer.scale.shape)))

    @property
    def qmax(self) -> int:
        """The largest code, 2^bits - 1."""
        return (1 << self.bits) - 1

    def scale(self) -> torch.Tensor:
        """The current step (R, G): scale0 * ratio (ratio floored at 1e-3)."""
        return (self.scale0 * self.ratio.clamp_min(1e-3)).expand_as(self.scale0)

    def forward(self) -> torch.Tensor:
        """The fake-quantized weight (out, K), straight-through in the latent weight and the step."""
        rows, cols = self.weight.shape
        s = expand_units(self.scale(), rows, cols)
        z = expand_units(self.zero, rows, cols)
        return (torch.clamp(round_ste(self.weight / s + z), 0, self.qmax) - z) * s

    @torch.no_grad()
    def export(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 codes, scale, zero) for QuantLayer.set_codes."""
        scale = self.scale().detach().clone()
        rows, cols = self.weight.shape
        s, z = expand_units(scale, rows, cols), expand_units(self.zero, rows, cols)
        codes = torch.clamp(torch.round(self.weight / s + z), 0, self.qmax)
        return codes.to(torch.uint8), scale, self.zero.clone()


def latent_start(layer: QuantLayer, w_float: torch.Tensor | None) -> torch.Tensor:
    """Where each latent weight starts: the float weight where it lies in the rounding cell of
    its current code (clamped to +-CELL_MARGIN steps so that step 0 re-rounds to that code), and
    the centre of the code's cell (its dequantized value) where the method that built the model
    rounded it into another cell (AdaRound, N2UQ-PTQ) or no float weight is known.

    Clamping such weights to the edge of their cell instead would leave them 0.01 steps from the
    cell they were rounded away from: Adam's first step moves every weight by about lr whatever
    its gradient, so it would flip them all back at once and undo the method's rounding."""
    codes = layer.codes
    deq = dequantize_codes(codes, layer.scale, layer.zero)
    if w_float is None:
        return deq
    rows, cols = codes.shape
    s = expand_units(layer.scale, rows, cols)
    qmax = (1 << layer.w_bits) - 1
    w = w_float.reshape(rows, cols).float()
    lo = torch.where(codes == 0, torch.full_like(deq, -math.inf), deq - CELL_MARGIN * s)
    hi = torch.where(codes == qmax, torch.full_like(deq, math.inf), deq + CELL_MARGIN * s)
    in_cell = (w >= torch.where(codes == 0, lo, deq - 0.5 * s)) & (w <= torch.where(codes == qmax, hi, deq + 0.5 * s))
    return torch.where(in_cell, torch.minimum(torch.maximum(w, lo), hi), deq)


def _kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft cross-entropy against the teacher's softmax (N2UQ's loss), times T^2."""
    t = temperature
    p = F.softmax(teacher.float() / t, dim=-1)
    return -(p * F.log_softmax(student.float() / t, dim=-1)).sum(-1).mean() * (t * t)


def _output(out: Any, what: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    raise TypeError(f"the {what} returned {type(out).__name__}; finetune needs a model returning one tensor")


class _Swap:
    """What finetune changed in a layer, to write back (or undo) at the end."""

    def __init__(self, name: str, layer: QuantLayer, wfq: WeightFakeQuant):
        self.name = name
        self.layer = layer
        self.wfq = wfq
        self.bias: nn.Parameter | None = None
        self.act_base: UniformActQuantizer | None = None
        self.act_lsq: LsqActQuant | None = None
        self.hook: RemovableHandle | None = None
        self.act_kind = "none"


def _check(epochs, lr, quantizer_lr, temperature, weight_quantizer, loss, steps_per_epoch, seed) -> None:
    check_range("epochs", epochs, 1, 10**6, integer=True)
    check_range("lr", lr, 0.0, 10.0)
    if quantizer_lr is not None:
        check_range("quantizer_lr", quantizer_lr, 0.0, 10.0)
    check_range("temperature", temperature, 1e-3, 1e3)
    if weight_quantizer not in WEIGHT_QUANTIZERS:
        raise ValueError(f"weight_quantizer must be one of {WEIGHT_QUANTIZERS}, got {weight_quantizer!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if steps_per_epoch is not None:
        check_range("steps_per_epoch", steps_per_epoch, 1, 10**9, integer=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")


def finetune(
    qmodel: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int = 1,
    teacher: nn.Module | None = None,
    lr: float = 1e-3,
    quantizer_lr: float | None = None,
    weight_quantizer: str = "auto",
    freeze_thresholds: bool = False,
    loss: str = "kd",
    temperature: float = 1.0,
    steps_per_epoch: int | None = None,
    input_fn: Callable[[Any], Any] | None = None,
    seed: int = 0,
    progress: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Short QAT of a lowbit-quantized model with knowledge distillation; returns the finetuned
    copy (the input model is left untouched unless ``inplace=True``), report updated.

    Parameters
    ----------
    qmodel : nn.Module
        A model returned by ``lowbit.quantize`` (fake-quant, not packed).
    train_loader : iterable
        Training batches, in any form ``lowbit.quantize`` accepts for calibration; labels are
        not used. Needs ``len()`` unless ``steps_per_epoch`` is given (the lr decays linearly
        to 0 over ``epochs * steps``).
    epochs : int
        Passes over the loader (each cut at ``steps_per_epoch`` batches when given).
    teacher : nn.Module, optional
        The model to distil from; default: the float model ``lowbit.quantize`` started from.
    lr, quantizer_lr : float
        Adam learning rates: weights, biases and float layers at ``lr``; thresholds, steps and
        clips at ``quantizer_lr`` (default lr / 10, N2UQ's rule).
    weight_quantizer : "auto" | "n2uq" | "lsq"
        How weight grids learn (module docstring).
    freeze_thresholds : bool
        Keep LTQ thresholds fixed (their output step still learns): the ablation of N2UQ.
    loss : "kd" | "mse"
        Soft cross-entropy against the teacher's softmax over the last axis, or output MSE
        (for models that do not return logits).
    temperature : float
        Softmax temperature of the ``"kd"`` loss (the loss is scaled by T^2).
    seed : int
        Seeds the torch RNG for the run (a shuffling DataLoader's order included); the caller's
        RNG state is restored afterwards.
    """
    _check(epochs, lr, quantizer_lr, temperature, weight_quantizer, loss, steps_per_epoch, seed)
    if not isinstance(qmodel, nn.Module):
        raise TypeError(f"qmodel must be a torch.nn.Module, got {type(qmodel).__name__}")
    if not isinstance(freeze_thresholds, bool):
        raise ValueError(f"freeze_thresholds must be True or False, got {freeze_thresholds!r}")
    if isinstance(train_loader, (torch.Tensor, dict)) or not hasattr(train_loader, "__iter__"):
        raise TypeError(f"train_loader must be an iterable of batches (e.g. a DataLoader), got {type(train_loader).__name__}")
    if steps_per_epoch is None:
        try:
            # Not every Iterable is Sized: a loader without len() raises the TypeError caught here.
            steps = len(cast(Sized, train_loader))
        except TypeError:
            raise ValueError("train_loader has no len(): pass steps_per_epoch") from None
    else:
        steps = steps_per_epoch
        try:
            steps = min(steps, len(cast(Sized, train_loader)))  # TypeError: no len(), see above
        except TypeError:
            pass
    if steps < 1:
        raise ValueError("train_loader is empty")
    layers = {n: m for n, m in qmodel.named_modules() if isinstance(m, QuantLayer)}
    if not layers:
        raise ValueError("qmodel has no lowbit quantized layers: quantize it with lowbit.quantize first "
                         "(a packed model cannot be finetuned)")
    ref = getattr(qmodel, "lowbit_fp", None)
    fp_model = ref.model if ref is not None else None
    if teacher is None:
        if fp_model is None:
            raise ValueError("qmodel carries no float model to distil from: pass teacher=<the float model>")
        teacher = fp_model
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    qlr = lr / 10 if quantizer_lr is None else quantizer_lr

    t_start = time.perf_counter()
    memo = {id(teacher): teacher}
    if ref is not None:
        memo[id(ref)] = ref
    model = qmodel if inplace else copy.deepcopy(qmodel, memo)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    report = getattr(model, "lowbit_report", None)

    from lowbit.methods.adaround import LsqActQuant

    swaps: list[_Swap] = []
    weight_params: list[nn.Parameter] = []
    quant_params: list[dict[str, Any]] = []
    float_params: list[nn.Parameter] = []
    quant_ids: set[int] = set()
    frozen_ids: set[int] = set()
    frozen_modules: list[nn.Module] = []
    gen = torch.Generator().manual_seed(seed)
    for name, q in layers.items():
        kind = weight_quantizer
        if kind == "auto":
            grid = report[name].extra.get("weight_grid") if report is not None and _has_row(report, name) else None
            kind = "n2uq" if grid == "n2uq" else "lsq"
        w_float = None
        if fp_model is not None:
            try:
                fw = fp_model.get_submodule(name).weight.detach()
                w_float = fw if fw.numel() == q.codes.numel() else None
            except AttributeError:
                w_float = None
        sw = _Swap(name, q, WeightFakeQuant(q, latent_start(q, w_float), kind))
        weight_params.append(sw.wfq.weight)
        quant_params.append({"params": [sw.wfq.ratio], "lr": qlr})
        if q.bias is not None:
            sw.bias = nn.Parameter(q.bias.detach().clone())
            q._buffers["bias"] = sw.bias
            weight_params.append(sw.bias)
        aq = q.act_quant
        if isinstance(aq, LTQActQuantizer):
            sw.act_kind = "ltq (thresholds frozen)" if freeze_thresholds else "ltq"
            tparams = aq.threshold_parameters()
            if freeze_thresholds:
                frozen_ids.update(id(p) for p in tparams)
            else:
                quant_params.append({"params": tparams, "lr": qlr})
            quant_params.append({"params": [aq.scale], "lr": qlr * float(aq.unit)})
            quant_ids.update(id(p) for p in aq.parameters())
        elif isinstance(aq, UniformActQuantizer):
            sw.act_kind = "lsq"
            sw.act_base = aq
            sw.act_lsq = LsqActQuant(aq, True, 0.0, gen)
            q.act_quant = sw.act_lsq
            quant_params.append({"params": [sw.act_lsq.scale], "lr": qlr * float(aq.scale.abs().item())})
            quant_ids.add(id(sw.act_lsq.scale))
        elif aq is not None:
            sw.act_kind = f"{type(aq).__name__} (frozen)"
            frozen_modules.append(aq)
            frozen_ids.update(id(p) for p in aq.parameters())
        swaps.append(sw)

    for p in model.parameters():
        if id(p) not in quant_ids and id(p) not in frozen_ids and not any(p is w for w in weight_params):
            float_params.append(p)
    groups: list[dict[str, Any]] = [{"params": weight_params + float_params, "lr": lr}, *quant_params]
    frozen = [p for p in model.parameters() if id(p) in frozen_ids]
    frozen_state = [(p, p.requires_grad) for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    opt = torch.optim.Adam(groups, betas=(0.9, 0.999), weight_decay=0.0)
    total = epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1.0 - t / total))

    def pre_hook(sw: _Swap) -> Callable[[nn.Module, Any], None]:
        def hook(m: nn.Module, args: Any) -> None:
            m.weight_override = sw.wfq().view(m.weight_shape)
        return hook

    for sw in swaps:
        sw.hook = sw.layer.register_forward_pre_hook(pre_hook(sw))

    teacher_was_training = teacher.training
    teacher.eval()
    model.train()
    for m in frozen_modules:
        m.eval()
    kept: list[calib.Batch] = []
    kept_n = 0
    epoch_seconds, epoch_loss = [], []
    first_loss = None
    try:
        # A training loop: gradients on whatever the caller's grad mode (e.g. inside no_grad).
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(seed)
            for epoch in range(epochs):
                t0 = time.perf_counter()
                bar = tqdm(total=steps, desc=f"finetune epoch {epoch + 1}/{epochs}", unit="step",
                           disable=not progress, leave=False)
                run_loss, seen = 0.0, 0
                for i, raw in enumerate(train_loader):
                    if i >= steps:
                        break
                    b = calib.to_batch(raw, input_fn)
                    if kept_n < STATS_SAMPLES:
                        kept.append(b)
                        kept_n += b.size
                    with torch.no_grad():
                        target = _output(calib.run_model(teacher, b), "teacher")
                    out = _output(calib.run_model(model, b), "model")
                    if loss == "kd":
                        value = _kd_loss(out, target, temperature)
                    else:
                        value = F.mse_loss(out.float(), target.float())
                    if not torch.isfinite(value):
                        raise FloatingPointError(f"finetune loss became {float(value)} at epoch {epoch + 1}, "
                                                 f"step {i + 1}: lower lr")
                    opt.zero_grad(set_to_none=True)
                    value.backward()
                    opt.step()
                    sched.step()
                    v = float(value.detach())
                    first_loss = v if first_loss is None else first_loss
                    run_loss += v
                    seen += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{run_loss / seen:.4g}")
                bar.close()
                if seen == 0:
                    raise ValueError(f"train_loader produced no batches in epoch {epoch + 1}")
                epoch_seconds.append(round(time.perf_counter() - t0, 3))
                epoch_loss.append(run_loss / seen)
    finally:
        for sw in swaps:
            if sw.hook is not None:
                sw.hook.remove()
            sw.layer.weight_override = None
        teacher.train(teacher_was_training)
        for p, r in frozen_state:
            p.requires_grad_(r)

    # Write the learned state back in lowbit's stored form.
    with torch.no_grad():
        for sw in swaps:
            q = sw.layer
            codes, scale, zero = sw.wfq.export()
            q.set_codes(codes, scale, zero, q.w_bits)
            if sw.bias is not None:
                q._buffers["bias"] = sw.bias.detach().clone()
            if sw.act_lsq is not None and sw.act_base is not None:  # both set by the same swap
                sw.act_base.scale.copy_(sw.act_lsq.scale.detach().clamp_min(1e-12).reshape(sw.act_base.scale.shape))
                q.act_quant = sw.act_base
    model.eval()

    if report is not None:
        from lowbit.methods.n2uq import level_figures, note_levels

        figures = level_figures(model, [sw.name for sw in swaps if _has_row(report, sw.name)], kept)
        summary = note_levels(report, figures, prefix="finetune_")
        for sw in swaps:
            if not _has_row(report, sw.name):
                continue
            row = report[sw.name]
            if "finetune" not in row.method:
                row.method = f"{row.method} + finetune"
            row.extra.update(finetune_weight=sw.wfq.kind, finetune_act=sw.act_kind,
                             recon_error_ptq=row.recon_error)
            row.recon_error = float("nan")  # a post-training figure; not measured after finetuning
            if fp_model is not None and sw.wfq is not None:
                fw = fp_model.get_submodule(sw.name).weight.detach()
                if fw.shape == sw.layer.weight.shape:
                    row.weight_mse = float((sw.layer.weight.detach() - fw).pow(2).mean())
        report.meta.setdefault("finetune", []).append({
            "epochs": epochs, "steps_per_epoch": steps, "lr": lr, "quantizer_lr": qlr,
            "weight_quantizer": weight_quantizer, "freeze_thresholds": freeze_thresholds,
            "loss": loss, "temperature": temperature, "seed": seed,
            "teacher": "float model" if teacher is fp_model else type(teacher).__name__,
            "epoch_seconds": epoch_seconds, "epoch_loss": [round(v, 6) for v in epoch_loss],
            "first_step_loss": first_loss, "seconds": round(time.perf_counter() - t_start, 3), **summary,
        })
    return model


def _has_row(report, name: str) -> bool:
    try:
        report[name]
    except KeyError:
        return False
    return True


class _CallableModule(types.ModuleType):
    """``lowbit.finetune`` is both this module and the function (as ``lowbit.pack``): importing
    the submodule binds the name on the package to the module, which forwards calls."""

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module:
        return finetune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
