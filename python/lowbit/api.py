"""``lowbit.quantize``: the data flow of DESIGN.md section 1, with nothing method-specific.

copy -> calibration batches -> trace -> fold BN -> plan layers -> calibrate activation
quantizers -> swap in nearest-rounded QuantLayers -> run the method stages -> measure -> report.
Every method starts from that nearest-rounded model and refines it through the QuantContext.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from typing import Any, Callable, Iterable, Union, cast

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lowbit import calib, graph
from lowbit.config import QuantConfig, check_bits
from lowbit.quantizers import (
    QuantLayer,
    act_quantizer_from_samples,
    float_weight_2d,
    quant_layer_from_float,
    round_nearest,
    weight_grid,
)
from lowbit.registry import MethodSpec, get_method, spec_for_config
from lowbit.reporting import LayerReport, QuantReport

log = logging.getLogger("lowbit")

MethodArg = Union[str, QuantConfig, Iterable[Union[str, QuantConfig]]]
GRANULARITIES = ("tensor", "channel", "group")
ACT_CALIB_SAMPLES = 256  # activation ranges: as QDrop, a few hundred samples suffice
MEASURE_SAMPLES = 256  # samples behind the report's per-layer reconstruction error


@dataclasses.dataclass(frozen=True)
class QuantSettings:
    """The options every method shares; recorded in the report."""

    w_bits: int
    a_bits: int | None
    granularity: str
    group_size: int | None
    symmetric: bool
    keep_first_last: int | None
    embedding_bits: int | None
    num_samples: int
    seed: int
    progress: bool


class FloatReference:
    """The BN-folded float model a quantized model came from (``qmodel.lowbit_fp.model``): the
    default teacher and latent-weight start of ``lowbit.finetune``. Copies of the quantized model
    (deepcopy, pack) share it instead of duplicating it; save/load do not store it."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __deepcopy__(self, memo: dict) -> FloatReference:
        return self


class QuantContext:
    """What a method stage reads and writes.

    fp_model: the BN-folded float model (the reconstruction target; never modified).
    qmodel: the model being quantized, its layers already QuantLayers (nearest-rounded).
    layers: the LayerSpecs in execution order. batches: the calibration inputs.
    """

    def __init__(self, fp_model: nn.Module, qmodel: nn.Module, layers: list[graph.LayerSpec],
                 batches: list[calib.Batch], settings: QuantSettings, report: QuantReport):
        self.fp_model = fp_model
        self.qmodel = qmodel
        self.layers = layers
        self.batches = batches
        self.settings = settings
        self.report = report
        self.stage = ""

    def spec(self, name: str) -> graph.LayerSpec:
        """The LayerSpec (planned bits, granularity, ...) of layer ``name``."""
        return next(s for s in self.layers if s.name == name)

    def fp_layer(self, name: str) -> nn.Linear | nn.Conv2d:
        """The float (BN-folded) layer ``name`` of the reconstruction target."""
        # Planned layers are graph.QUANTIZABLE: nn.Linear or nn.Conv2d.
        return cast("nn.Linear | nn.Conv2d", self.fp_model.get_submodule(name))

    def qlayer(self, name: str) -> QuantLayer:
        """The QuantLayer standing in for layer ``name`` in the model being quantized."""
        # Every planned layer was swapped for a QuantLayer before any method runs.
        return cast(QuantLayer, self.qmodel.get_submodule(name))

    def progress(self, iterable: Iterable, **kw: Any) -> Iterable:
        """``iterable`` behind a tqdm progress bar (silent unless settings.progress)."""
        return tqdm(iterable, disable=not self.settings.progress, **kw)

    def requantize(self, name: str, w_bits: int | None = None) -> None:
        """Nearest rounding of layer `name` at w_bits (default: its planned bits), range by the
        Lp search: the starting point of every method, and how CLADO changes a layer's bits."""
        spec = self.spec(name)
        if w_bits is not None:
            spec.w_bits = w_bits
        w = float_weight_2d(self.fp_layer(name))
        scale, zero = weight_grid(w, spec.w_bits, spec.granularity, spec.group_size, spec.symmetric)
        self.qlayer(name).set_codes(round_nearest(w, scale, zero, spec.w_bits), scale, zero, spec.w_bits)
        self.report[name].w_bits = spec.w_bits

    def note(self, name: str, **figures: Any) -> None:
        """Record method-specific figures for a layer in the report."""
        self.report[name].extra.update(figures)


def _resolve_stages(method: MethodArg, config: Any) -> list[tuple[MethodSpec, QuantConfig]]:
    items = [method] if isinstance(method, (str, QuantConfig)) else list(method)
    if not items:
        raise ValueError("method must name at least one method")
    if config is not None and len(items) > 1:
        raise ValueError("config applies to a single method; for a pipeline pass config instances in the method list")
    stages = []
    for item in items:
        if isinstance(item, QuantConfig):
            stages.append((spec_for_config(item), item))
        elif isinstance(item, str):
            spec = get_method(item)
            if isinstance(config, QuantConfig):
                if type(config) is not spec.config_cls:
                    raise TypeError(f"config is a {type(config).__name__}, but method '{item}' takes {spec.config_cls.__name__}")
                cfg = config
            elif isinstance(config, dict) or config is None:
                cfg = spec.config_cls.from_dict(config or {})
            else:
                raise TypeError(f"config must be a {spec.config_cls.__name__} or a dict, got {type(config).__name__}")
            stages.append((spec, cfg))
        else:
            raise TypeError(f"method must be a name, a config or a list of them, got {type(item).__name__}")
    return stages


def _check_args(model, w_bits, a_bits, granularity, group_size, keep_first_last, seed) -> int | None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_bits("w_bits", w_bits)
    check_bits("a_bits", a_bits, allow_none=True)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"group_size must be a positive integer or None, got {group_size!r}")
    if granularity == "group" and group_size is None:
        raise ValueError("granularity='group' needs a group_size")
    if granularity == "tensor" and group_size is not None:
        raise ValueError("group_size is set but granularity='tensor'")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if keep_first_last is False:
        return None
    check_bits("keep_first_last", keep_first_last, allow_none=True)
    return keep_first_last


def _calibrate_activations(ctx: QuantContext) -> None:
    """Per-tensor input quantizers for the layers with a_bits, from the FP model's activations."""
    wanted = {s.name: s.a_bits for s in ctx.layers if s.a_bits is not None}
    if not wanted:
        return
    pools = {name: calib.Reservoir(seed=ctx.settings.seed + i) for i, name in enumerate(wanted)}

    def on_input(name: str, x: torch.Tensor) -> None:
        try:
            pools[name].add(x)
        except ValueError as e:
            raise ValueError(f"layer '{name}': NaN or Inf in its calibration input activations") from e

    modules = {n: ctx.fp_layer(n) for n in wanted}
    with torch.no_grad(), calib.capture(modules, on_input=on_input):
        for b in ctx.progress(list(calib.chunks(ctx.batches, ACT_CALIB_SAMPLES)), desc="activation ranges", leave=False):
            calib.run_model(ctx.fp_model, b)
    for name, a_bits in wanted.items():
        pool = pools[name]
        ctx.qlayer(name).act_quant = act_quantizer_from_samples(pool.values(), a_bits, pool.min)


def measure(ctx: QuantContext, names: list[str] | None = None, max_samples: int = MEASURE_SAMPLES) -> dict[str, float]:
    """Relative output error ||y_q - y||^2 / ||y||^2 of each layer on calibration data, with the
    quantized layer fed by the quantized network and y from the FP network (asymmetric)."""
    names = names or [s.name for s in ctx.layers]
    err = dict.fromkeys(names, 0.0)
    ref = dict.fromkeys(names, 0.0)
    fp_out: dict[str, torch.Tensor] = {}

    def keep(name: str, y: torch.Tensor) -> None:
        fp_out[name] = y

    def compare(name: str, y: torch.Tensor) -> None:
        y0 = fp_out.pop(name)
        err[name] += float((y - y0).double().pow(2).sum())
        ref[name] += float(y0.double().pow(2).sum())

    with torch.no_grad():
        for b in calib.chunks(ctx.batches, max_samples):
            with calib.capture({n: ctx.fp_layer(n) for n in names}, on_output=keep):
                calib.run_model(ctx.fp_model, b)
            with calib.capture({n: ctx.qlayer(n) for n in names}, on_output=compare):
                calib.run_model(ctx.qmodel, b)
    return {n: err[n] / ref[n] if ref[n] > 0 else 0.0 for n in names}


def quantize(
    model: nn.Module,
    calib_loader: Iterable,
    method: MethodArg = "nearest",
    *,
    w_bits: int = 4,
    a_bits: int | None = None,
    granularity: str = "channel",
    group_size: int | None = None,
    symmetric: bool = False,
    ignore: Iterable[Any] = (),
    overrides: dict[Any, dict[str, Any]] | None = None,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    keep_first_last: int | None = 8,
    embedding_bits: int | None = None,
    num_samples: int = 1024,
    input_fn: Callable[[Any], Any] | None = None,
    seed: int = 0,
    progress: bool = True,
    inplace: bool = False,
    config: Union[QuantConfig, dict[str, Any]] | None = None,
) -> nn.Module:
    """Quantize a model after training; returns a fake-quant copy with ``lowbit_report`` attached.

    Parameters
    ----------
    model : nn.Module
        The float model. Left untouched unless ``inplace=True``.
    calib_loader : iterable
        Calibration batches: tensors, (input, label) tuples/lists, dicts of model keyword
        arguments, or anything ``input_fn`` maps to one of those.
    method : str, QuantConfig or list of them
        ``"nearest"``, ``"adaround"``, ... (``lowbit.list_methods()``); a list is a pipeline,
        e.g. ``["clado", "adaround"]``: CLADO picks the bits, AdaRound rounds them.
    w_bits, a_bits : int
        Weight bits (2..8) and input-activation bits (2..8, or None for float activations).
    granularity : "tensor" | "channel" | "group"
        Weight scale granularity; "group" uses ``group_size`` input elements per scale.
    symmetric : bool
        Symmetric weight grid (zero point fixed at mid-range) instead of asymmetric.
    ignore : names, "re:<regex>" or module types
        Layers left in float.
    overrides : dict
        ``{key: {"w_bits": 8, "a_bits": None, ...}}`` with keys as for ``ignore``.
    filter_fn : callable(name, module) -> bool
        Only layers for which it returns True are quantized (torchao convention).
    keep_first_last : int or None
        Bits for the first and last quantized layer's weights and the last layer's input
        (8 by default, as in every paper's tables); None or False disables.
    embedding_bits : int or None
        Bits (2..8) for the nn.Embedding tables that run on the calibration batch (a language
        model's vocabulary is often half its weights): nearest rounding on the same grid
        (``granularity`` per token row by default), weight-only; no method refines a lookup.
        None (the default) leaves embeddings in float. ``ignore`` / ``overrides`` /
        ``filter_fn`` apply to them by name or type like to any layer.
    num_samples : int
        Calibration samples taken from the loader (1024 by default).
    seed : int
        Fixes the calibration order and every random choice; recorded in the report.
    config : QuantConfig or dict
        Options of the (single) method, e.g. ``{"iters": 2000}``.
    """
    t_start = time.perf_counter()
    keep_first_last = _check_args(model, w_bits, a_bits, granularity, group_size, keep_first_last, seed)
    check_bits("embedding_bits", embedding_bits, allow_none=True)
    if group_size is not None and granularity == "channel":
        granularity = "group"
    stages = _resolve_stages(method, config)
    settings = QuantSettings(w_bits, a_bits, granularity, group_size, symmetric, keep_first_last,
                             embedding_bits, num_samples, seed, progress)

    work = model if inplace else copy.deepcopy(model)
    work.eval()
    batches = calib.collect_batches(calib_loader, num_samples=num_samples, seed=seed, input_fn=input_fn,
                                    progress=progress)
    probe = batches[0].head(min(batches[0].size, 8))
    tr = graph.trace(work, lambda: calib.run_model(work, probe), probe.tensors())
    folded = graph.fold_bn(work, tr)
    planned = graph.plan_layers(work, tr, w_bits=w_bits, a_bits=a_bits, granularity=granularity,
                                group_size=group_size, symmetric=symmetric, ignore=ignore, overrides=overrides,
                                filter_fn=filter_fn, keep_first_last=keep_first_last, embedding_bits=embedding_bits)
    # Lookups are rounded to nearest below and then left alone: the methods see Linear / Conv2d only.
    layers = [s for s in planned if s.kind != "embedding"]
    for s in planned:
        w = cast(torch.Tensor, work.get_submodule(s.name).weight)  # Linear / Conv2d / Embedding
        if not torch.isfinite(w).all():
            raise ValueError(f"layer '{s.name}': its weight contains NaN or Inf")
    fp_model = copy.deepcopy(work)

    rows = []
    for s in planned:
        mod = work.get_submodule(s.name)
        w_shape = cast(torch.Tensor, mod.weight).shape  # Linear / Conv2d / Embedding
        rows.append(LayerReport(s.name, type(mod).__name__, tuple(w_shape), s.w_bits, s.a_bits,
                                s.granularity, notes=list(s.notes)))
    stage_names = [spec.name for spec, _ in stages]
    report = QuantReport(rows, meta={
        "method": "+".join(stage_names), "configs": [cfg.to_dict() for _, cfg in stages],
        **{k: v for k, v in dataclasses.asdict(settings).items() if k != "progress"},
        "folded_bn": folded, "num_calib_samples": sum(b.size for b in batches),
    })
    ctx = QuantContext(fp_model, work, layers, batches, settings, report)

    # The common starting point: nearest rounding with Lp-searched grids.
    for s in ctx.progress(planned, desc="nearest rounding", leave=False):
        t0 = time.perf_counter()
        mod = work.get_submodule(s.name)
        w = float_weight_2d(mod)
        scale, zero = weight_grid(w, s.w_bits, s.granularity, s.group_size, s.symmetric)
        graph.set_module(work, s.name, quant_layer_from_float(mod, round_nearest(w, scale, zero, s.w_bits),
                                                              scale, zero, s.w_bits))
        report[s.name].seconds += time.perf_counter() - t0
    _calibrate_activations(ctx)

    for spec, cfg in stages:
        ctx.stage = spec.name
        t0 = time.perf_counter()
        log.info("lowbit: running %s", spec.name)
        spec.run(ctx, cfg)
        report.meta.setdefault("stage_seconds", {})[spec.name] = time.perf_counter() - t0

    recon = measure(ctx)
    for s in planned:
        row = report[s.name]
        q = ctx.qlayer(s.name)
        row.w_bits, row.a_bits = q.w_bits, q.a_bits
        w_fp = cast(torch.Tensor, fp_model.get_submodule(s.name).weight).detach()  # Linear / Conv2d / Embedding
        row.weight_mse = float((q.weight.detach() - w_fp).pow(2).mean())
        # A lookup's output is its weight rows: weight_mse says it all.
        row.recon_error = recon.get(s.name, float("nan"))
    report.meta["seconds"] = round(time.perf_counter() - t_start, 3)
    # setattr: nn.Module's __setattr__ is typed for Tensors and Modules only; same call at run time.
    setattr(work, "lowbit_report", report)  # noqa: B010
    setattr(work, "lowbit_fp", FloatReference(fp_model))  # noqa: B010
    return work
