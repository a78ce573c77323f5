"""AdaRound: learned up/down rounding of every weight (Nagel et al., ICML 2020), layer by layer
or block by block (BRECQ, Li et al. 2021; QDrop, Wei et al. 2022).

Paper symbols -> AdaRoundConfig fields:

    T (iterations per layer / block)         iters          (10000, the paper's; BRECQ 20000)
    lambda (rounding regulariser weight)     reg_lambda     (0.01; 0.1 for MobileNetV2)
    beta annealed from 20 to 2               beta           ((20, 2), linear after the warm-up)
    warm-up share with the regulariser off   warmup         (0.2)
    Adam learning rate on V                  lr             (1e-3)
    minibatch (images)                       batch          (32, rows objective and block mode)
    calibration samples                      num_samples    (1024)
    f_a in ||f_a(W x) - f_a(W~ x~)||^2       include_activation (ReLU right after the layer)
    QDrop drop probability p                 drop_prob      (0.5; 0 gives BRECQ)
    LSQ activation steps (QDrop)             learn_act_scale, act_lr (4e-5, cosine to 0)

Layer mode reconstructs each quantized layer in execution order. Its input x~ comes from the
network whose earlier layers are already rounded (asymmetric reconstruction), its target from the
FP network. The whole optimisation loop runs in C++ (``_native.rounding_run_gram`` /
``rounding_run_rows``): the ``gram`` objective sees every calibration row at every step through
H = X~^T X~ and C = X~^T X (memory O(d^2), exact when f_a is the identity); the ``rows``
objective takes minibatches of im2col rows and may include the ReLU. ``auto`` uses rows where the
activation is in the loss and otherwise the objective whose step the engine's cost estimate puts
lower (``auto_objective``): gram on most layers (its cost o d^2 does not grow with the samples),
rows where d outgrows twice a minibatch's rows (ResNet-18's 7x7 layer4, classifiers).

Block mode reconstructs residual blocks (and other sub-modules holding several quantized layers)
jointly: forward and backward of the block run through torch autograd, the rounding math, the
regulariser and the Adam update of V run in C++ (``_native.rounding_apply_grad`` takes dL/dW~).
Extra learnable parameters ride along the same loop through ``BlockExtension`` (the LSQ
activation steps are one; AQuant's activation borders are meant to be another).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from lowbit import _native, calib
from lowbit.config import QuantConfig, check_range
from lowbit.quantizers import QuantConv2d, QuantLayer, UniformActQuantizer, float_weight_2d
from lowbit.registry import register_method

if TYPE_CHECKING:
    from lowbit.api import QuantContext

MODES = ("layer", "block")
OBJECTIVES = ("auto", "gram", "rows")
_PROGRESS_UPDATES = 50  # progress-bar refreshes per layer / block
LAYER_ITERS = 10000  # default iterations per layer (the AdaRound paper's)
BLOCK_ITERS = 2000  # default iterations per block (CPU budget; BRECQ/QDrop use 20000 on a GPU)
CACHE_LIMIT_BYTES = 2 << 30  # rows objective / block mode: cap on the cached calibration tensors
FRONTIER_LIMIT_BYTES = 2 << 30  # per network: cap on the cached restart inputs (_Frontier)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaRoundConfig(QuantConfig):
    """Options of AdaRound (see the module docstring for the paper's symbols).

    iters: optimisation steps per layer or block; None (default) takes LAYER_ITERS (10000, the
        paper's) for a layer and BLOCK_ITERS (2000) for a block, whose steps run torch autograd
        through the whole block and cost far more on a CPU (BRECQ/QDrop use 20000 on a GPU).
    reg_lambda, beta, warmup: the rounding regulariser lambda * sum(1 - |2h - 1|^beta), off for
        the first ``warmup`` share of the steps, beta falling linearly from beta[0] to beta[1].
    lr: Adam learning rate on V. batch: samples per minibatch. num_samples: calibration samples
        used (at most those lowbit.quantize collected).
    mode: "layer" (AdaRound) or "block" (BRECQ / QDrop; layers outside blocks go layer-wise).
    objective: layer-mode loss evaluation, "auto" | "gram" | "rows" (see the module docstring).
    include_activation: put the ReLU that directly follows a layer into its loss (rows objective).
    drop_prob: block mode, QDrop's probability of dropping quantization per activation element
        and of taking the FP value of each block-input element; 0 gives BRECQ.
    learn_act_scale: block mode, learn the activation steps with LSQ (lr act_lr, cosine to 0).
    reconstruct_8bit: also reconstruct layers at 8 bits (keep_first_last's first and last); off
        by default, as BRECQ skips its 8-bit first layer: at 8 bits nearest is within noise.
    keep_better: keep nearest rounding for a layer / block whose learned rounding reconstructs
        worse on the calibration data (recorded in the report).
    seed_offset: added to lowbit.quantize's seed for the minibatch and QDrop draws.
    """

    iters: int | None = None
    reg_lambda: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    lr: float = 1e-3
    batch: int = 32
    num_samples: int = 1024
    mode: str = "layer"
    objective: str = "auto"
    include_activation: bool = False
    drop_prob: float = 0.5
    learn_act_scale: bool = True
    act_lr: float = 4e-5
    reconstruct_8bit: bool = False
    keep_better: bool = True
    seed_offset: int = 0

    def validate(self) -> None:
        if self.iters is not None:
            check_range("iters", self.iters, 1, 10**7, integer=True)
        check_range("reg_lambda", self.reg_lambda, 0.0, 1e6)
        beta = self.beta
        if not isinstance(beta, (tuple, list)) or len(beta) != 2:
            raise ValueError(f"beta must be a pair (start, end), got {beta!r}")
        for i, b in enumerate(beta):
            check_range(f"beta[{i}]", b, 1.0, 1e3)
        if beta[1] > beta[0]:
            raise ValueError(f"beta must anneal downwards (start >= end), got {tuple(beta)!r}")
        object.__setattr__(self, "beta", (float(beta[0]), float(beta[1])))
        check_range("warmup", self.warmup, 0.0, 0.99)
        check_range("lr", self.lr, 1e-12, 10.0)
        check_range("batch", self.batch, 1, 10**6, integer=True)
        check_range("num_samples", self.num_samples, 1, 10**8, integer=True)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("include_activation", "learn_act_scale", "reconstruct_8bit", "keep_better"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.include_activation and self.objective == "gram":
            raise ValueError("include_activation=True needs objective 'rows' or 'auto': the gram "
                             "objective is exact only without the activation in the loss")
        check_range("drop_prob", self.drop_prob, 0.0, 1.0)
        check_range("act_lr", self.act_lr, 0.0, 10.0)
        check_range("seed_offset", self.seed_offset, -(2**62), 2**62, integer=True)

    def steps(self, unit: str) -> int:
        """Iterations for a "layer" or a "block"."""
        if self.iters is not None:
            return self.iters
        return LAYER_ITERS if unit == "layer" else BLOCK_ITERS

    def schedule(self, unit: str):
        return _native.rounding_schedule(self.steps(unit), warmup=self.warmup, beta=self.beta,
                                         reg_lambda=self.reg_lambda, lr=self.lr)


# --- helpers shared by both modes -----------------------------------------------------------


class _Stop(Exception):
    """Raised by a hook once everything needed from a forward pass is captured."""


def _run_until(model: nn.Module, batch: calib.Batch) -> None:
    try:
        model(*batch.args, **batch.kwargs)
    except _Stop:
        pass


class _Frontier:
    """Where one network's forward can restart during a reconstruction run: the input of a child
    of an nn.Sequential on the way to the module asked for, cached per calibration batch.

    Layers and blocks are reconstructed in execution order, so everything before that child is
    final when a later one asks, and the cache only moves forward, child by child: the network
    runs about once over the calibration set instead of once per layer from its start. Modules
    outside any plain nn.Sequential (and a first request) run the whole network as before."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.where: dict[nn.Module, tuple[nn.Sequential, int]] = {}
        for seq in model.modules():  # pre-order: the outermost Sequential claims a module first
            if isinstance(seq, nn.Sequential) and type(seq).forward is nn.Sequential.forward:
                for k, child in enumerate(seq):
                    for m in child.modules():
                        self.where.setdefault(m, (seq, k))
        self.inputs: dict[int, tuple[nn.Sequential, int, torch.Tensor]] = {}  # id(batch): (seq, k, input of seq[k])

    def _store(self, batch: calib.Batch, entry: tuple[nn.Sequential, int, torch.Tensor]) -> None:
        """Caches entry for batch unless the cache would pass FRONTIER_LIMIT_BYTES (that batch
        then runs from the network input)."""
        self.inputs.pop(id(batch), None)  # (its old entry does not count against the cap)
        used = sum(x.numel() * x.element_size() for _, _, x in self.inputs.values())
        if used + entry[2].numel() * entry[2].element_size() <= FRONTIER_LIMIT_BYTES:
            self.inputs[id(batch)] = entry

    def run_until(self, batch: calib.Batch, target: nn.Module) -> None:
        """Runs the network on ``batch`` until a hook on ``target`` raises _Stop."""
        loc = self.where.get(target)
        if loc is None:
            _run_until(self.model, batch)
            return
        seq, k = loc
        cached = self.inputs.get(id(batch))
        if cached is None or cached[0] is not seq or cached[1] > k:
            def keep(m, args):  # (a copy: the child may work in place)
                self._store(batch, (seq, k, args[0].detach().clone()))

            hook = seq[k].register_forward_pre_hook(keep)
            try:
                _run_until(self.model, batch)
            finally:
                hook.remove()
            return
        _, start, x = cached
        for j in range(start, k):
            x = seq[j](x)
        self._store(batch, (seq, k, x))
        try:
            seq[k](x.clone())
        except _Stop:
            pass


class _Calibration(list):
    """The calibration batches of one reconstruction run, with a _Frontier per network."""

    def __init__(self, ctx: QuantContext, batches: Iterable[calib.Batch]):
        super().__init__(batches)
        self.fp, self.q = _Frontier(ctx.fp_model), _Frontier(ctx.qmodel)


def _module_io(ctx: QuantContext, fp_mod: nn.Module, q_mod: nn.Module, batch: calib.Batch,
               q_input: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
               fronts: _Calibration | None = None):
    """(FP input, FP output, quantized-network input mapped by ``q_input``) of one module for
    one batch, in float32 (integer inputs as they are); each network runs only up to that module
    (from ``fronts``' cached inputs where it can)."""
    got: dict[str, torch.Tensor] = {}

    def fp_in(m, args):
        got["x"] = args[0].detach()

    def fp_out(m, args, out):
        got["y"] = out.detach()
        raise _Stop

    def q_in(m, args):
        got["xq"] = q_input(args[0].detach())
        raise _Stop

    def run(model: nn.Module, front: _Frontier | None, target: nn.Module, hooks: list) -> None:
        try:
            if front is None:
                _run_until(model, batch)
            else:
                front.run_until(batch, target)
        finally:
            for h in hooks:
                h.remove()

    run(ctx.fp_model, None if fronts is None else fronts.fp, fp_mod,
        [fp_mod.register_forward_pre_hook(fp_in), fp_mod.register_forward_hook(fp_out)])
    run(ctx.qmodel, None if fronts is None else fronts.q, q_mod, [q_mod.register_forward_pre_hook(q_in)])
    # Integer inputs (token ids into a block that starts with its lookup) stay integers.
    return _as_float(got["x"]), got["y"].float(), _as_float(got["xq"])


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


_RELU_FUNCS = {torch.relu, torch.relu_, F.relu, F.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class _ReluWatch(TorchFunctionMode):
    """Records which watched tensors (by identity) are passed to a ReLU."""

    def __init__(self, watched: dict[int, tuple[str, torch.Tensor]]):
        super().__init__()
        self.watched = watched
        self.found: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELU_FUNCS and args and isinstance(args[0], torch.Tensor):
            hit = self.watched.get(id(args[0]))
            if hit is not None and hit[1] is args[0]:
                self.found.add(hit[0])
        return func(*args, **(kwargs or {}))


def relu_followed(model: nn.Module, modules: dict[str, nn.Module], batch: calib.Batch) -> set[str]:
    """Names of the modules whose output goes straight into a ReLU (nn.ReLU, F.relu, torch.relu,
    Tensor.relu; folded BN in between is an nn.Identity and keeps the tensor)."""
    watched: dict[int, tuple[str, torch.Tensor]] = {}

    def keep(name: str, y: torch.Tensor) -> None:
        if isinstance(y, torch.Tensor):
            watched[id(y)] = (name, y)

    mode = _ReluWatch(watched)
    with torch.no_grad(), calib.capture(modules, on_output=keep), mode:
        calib.run_model(model, batch)
    return mode.found


def _samples(ctx: QuantContext, num_samples: int) -> _Calibration:
    """The first num_samples calibration samples, for one reconstruction run in execution order."""
    return _Calibration(ctx, calib.chunks(ctx.batches, num_samples))


@dataclasses.dataclass
class _Grid:
    """One layer's fixed rounding problem: FP weight (o, d), its grid and bits."""

    W: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    bits: int
    groups: int

    @classmethod
    def of(cls, ctx, name: str) -> _Grid:
        q = ctx.qlayer(name)
        W = float_weight_2d(ctx.fp_layer(name)).float().contiguous().numpy()
        return cls(W, q.scale.numpy(), q.zero.numpy(), q.w_bits, int(getattr(q, "groups", 1)))

    def init_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        V = _native.rounding_init(self.W, self.scale, self.zero, self.bits)
        return V, np.zeros_like(V), np.zeros_like(V)

    def hard_codes(self, V: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(_native.rounding_hard_codes(self.W, self.scale, self.zero, self.bits, V))

    def soft_share(self, V: np.ndarray) -> float:
        _, h = _native.rounding_soft_weight(self.W, self.scale, self.zero, self.bits, V)
        return float(np.mean((h > 0.01) & (h < 0.99)))


def _conv_geometry(q: QuantLayer) -> dict | None:
    if not hasattr(q, "kernel_size"):
        return None
    if isinstance(q.padding, str):
        raise NotImplementedError(f"padding={q.padding!r} (string padding) is not supported by AdaRound's engine")
    return dict(kernel_size=q.kernel_size, stride=q.stride, padding=q.padding, dilation=q.dilation)


def _progress(ctx: QuantContext, total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, leave=False, disable=not ctx.settings.progress, unit="it")


# --- layer mode -----------------------------------------------------------------------------


@dataclasses.dataclass
class _LayerData:
    """What one layer's reconstruction needs from the calibration set."""

    objective: str
    relu: bool
    n_rows: int  # rows the loss averages over (samples x output positions)
    y_sq: float  # sum of squared targets (for relative errors)
    H: np.ndarray | None = None  # gram: (G, d, d)
    C: np.ndarray | None = None
    c0: float = 0.0
    X: torch.Tensor | None = None  # rows: quantized-network inputs (after the input quantizer)
    Y: torch.Tensor | None = None  # rows: FP targets (after f)
    batch: int = 0  # rows: entries of X per minibatch (samples; tokens for a Linear layer)

    def gram(self) -> tuple[np.ndarray, np.ndarray]:
        """(H, C) of the gram objective."""
        if self.H is None or self.C is None:
            raise RuntimeError(f"no Gram matrices: the objective is {self.objective!r}")
        return self.H, self.C

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(X, Y) of the rows objective."""
        if self.X is None or self.Y is None:
            raise RuntimeError(f"no cached rows: the objective is {self.objective!r}")
        return self.X, self.Y


def _pick_objective(config: AdaRoundConfig, relu: bool, grid: _Grid, rows_per_sample: int) -> str:
    if config.objective != "auto":
        return config.objective
    if relu:
        return "rows"
    o, d = grid.W.shape
    return auto_objective(o, d, grid.groups, config.batch * rows_per_sample)


def auto_objective(out_channels: int, in_features: int, groups: int, rows_per_batch: int) -> str:
    """``objective="auto"``'s pick for a layer without its activation in the loss: the objective
    whose step costs less by the engine's estimate (gram on ties: its step sees every row)."""
    gram_cost, rows_cost = _native.rounding_cost(out_channels, in_features, groups, rows_per_batch)
    return "gram" if gram_cost <= rows_cost else "rows"


def _collect_layer(ctx: QuantContext, name: str, config: AdaRoundConfig, relu: bool, grid: _Grid,
                   batches: list[calib.Batch]) -> _LayerData:
    """Stream the calibration set through both networks up to layer `name` (and no further)."""
    q, fp = ctx.qlayer(name), ctx.fp_layer(name)
    fronts = batches if isinstance(batches, _Calibration) else None
    o, d = grid.W.shape
    G = grid.groups
    bias = None if q.bias is None else q.bias.detach()
    data: _LayerData | None = None
    xs, ys = [], []
    n_samples = sum(bt.size for bt in batches)
    conv = _conv_geometry(q) is not None
    with torch.no_grad():
        for b in batches:
            x, y, xq = _module_io(ctx, fp, q, b, q.quantize_input, fronts)
            if not (torch.isfinite(xq).all() and torch.isfinite(y).all()):
                raise ValueError(f"layer '{name}': NaN or Inf in its calibration inputs or outputs")
            rows_per_sample = y[0].numel() // o
            if data is None:
                objective = _pick_objective(config, relu, grid, rows_per_sample)
                need = n_samples * (xq[0].numel() + y[0].numel()) * 4
                if objective == "rows" and need > CACHE_LIMIT_BYTES:
                    if config.objective == "rows":
                        raise ValueError(
                            f"layer '{name}': the rows objective would cache {need / 2**30:.1f} GiB of "
                            f"calibration tensors (limit {CACHE_LIMIT_BYTES / 2**30:.1f} GiB); lower "
                            "num_samples or use objective='gram'")
                    objective, relu = "gram", False  # auto: exact gram, activation left out
                data = _LayerData(objective, relu, 0, 0.0)
                if objective == "gram":
                    data.H = np.zeros((G, d, d), np.float32)
                    data.C = np.zeros((G, d, d), np.float32)
            target = torch.relu(y) if data.relu else y
            data.n_rows += y.shape[0] * rows_per_sample
            data.y_sq += float(target.double().pow(2).sum())
            if data.objective == "gram":
                xq_c, x_c = xq.contiguous(), x.contiguous()
                H, C = data.gram()
                calib.accumulate_gram(q, xq_c, H if conv else H[0])
                calib.accumulate_gram(q, xq_c, C if conv else C[0], x2=x_c)
                yb = y if bias is None else y - _bias_shape(bias, y)
                data.c0 += float(yb.double().pow(2).sum())
            elif not conv:  # a Linear layer: each token is an entry (lengths vary by batch)
                xs.append(xq.reshape(-1, 1, d))
                ys.append(target.reshape(-1, 1, o))
            else:
                xs.append(xq)
                ys.append(target)
    if data is None:
        raise ValueError(f"layer '{name}': no calibration batches")
    if data.objective == "rows":
        data.X = torch.cat(xs).contiguous()
        data.Y = torch.cat(ys).contiguous()
        # a minibatch holds config.batch samples' worth of entries (their mean token count)
        data.batch = max(1, round(config.batch * data.X.shape[0] / n_samples))
    return data


def _bias_shape(bias: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """bias broadcast against a layer output (channels on dim 1 for conv, last dim for Linear)."""
    return bias.reshape(1, -1, *([1] * (y.dim() - 2))) if y.dim() == 4 else bias


def _layer_loss(ctx: QuantContext, name: str, grid: _Grid, data: _LayerData, Wt: np.ndarray) -> float:
    """The reconstruction loss (mean over rows of the sum over channels) at weight Wt (o, d),
    over all calibration rows."""
    q = ctx.qlayer(name)
    if data.objective == "gram":
        H, C = data.gram()
        loss, _ = _native.rounding_gram_loss_grad(grid.W, grid.scale, grid.zero, grid.bits, Wt, H,
                                                  C, data.c0, data.n_rows, groups=grid.groups)
        return loss
    w = torch.from_numpy(Wt).reshape(q.weight_shape)
    total = 0.0
    geo = _conv_geometry(q)
    X, Y = data.rows()
    with torch.no_grad():
        for i in range(0, X.shape[0], 256):
            x, y = X[i:i + 256], Y[i:i + 256]
            if geo is None:
                out = F.linear(x, w, q.bias)
            else:
                groups = cast(QuantConv2d, q).groups  # a layer with a conv geometry is a QuantConv2d
                out = F.conv2d(x, w, q.bias, geo["stride"], geo["padding"], geo["dilation"], groups)
            if data.relu:
                out = torch.relu(out)
            total += float((out - y).double().pow(2).sum())
    return total / data.n_rows


def _dequant(grid: _Grid, codes: torch.Tensor) -> np.ndarray:
    return _native.dequantize(codes, grid.scale, grid.zero, grid.bits)


def _seed(ctx: QuantContext, config: AdaRoundConfig, unit: int) -> int:
    return (int(ctx.settings.seed) + int(config.seed_offset)) * 1_000_003 + unit


def reconstruct_layer(ctx: QuantContext, name: str, config: AdaRoundConfig, relu: bool, unit: int,
                      batches: list[calib.Batch]) -> None:
    """AdaRound on one layer: collect, optimise in C++, set the learned codes, note figures."""
    t0 = time.perf_counter()
    q = ctx.qlayer(name)
    grid = _Grid.of(ctx, name)
    data = _collect_layer(ctx, name, config, relu, grid, batches)
    near_codes = q.codes.clone()
    before = _layer_loss(ctx, name, grid, data, _dequant(grid, near_codes))

    V, m, v = grid.init_state()
    iters = config.steps("layer")
    sched = config.schedule("layer")
    geo = _conv_geometry(q)
    bar = _progress(ctx, iters, f"adaround {name} ({data.objective})")
    chunk = max(1, math.ceil(iters / _PROGRESS_UPDATES))
    step, soft = 0, 1.0
    try:
        while step < iters:
            k = min(chunk, iters - step)
            if data.objective == "gram":
                H, C = data.gram()
                rec, reg, soft = _native.rounding_run_gram(
                    grid.W, grid.scale, grid.zero, grid.bits, V, m, v, H, C, data.c0,
                    data.n_rows, sched, step, k, groups=grid.groups)
            else:
                bias = None if q.bias is None else q.bias.detach()
                X, Y = data.rows()
                rec, reg, soft = _native.rounding_run_rows(
                    grid.W, grid.scale, grid.zero, grid.bits, V, m, v, X, Y, sched, step, k,
                    bias=bias, conv=geo, relu=data.relu, batch=data.batch, seed=_seed(ctx, config, unit),
                    groups=grid.groups)
            step += k
            bar.update(k)
            bar.set_postfix(rec=f"{float(rec[-1]):.4g}", reg=f"{float(reg[-1]):.4g}", soft=f"{soft:.2f}")
    finally:
        bar.close()

    codes = grid.hard_codes(V)
    after = _layer_loss(ctx, name, grid, data, _dequant(grid, codes))
    kept = config.keep_better and after > before
    q.set_codes(near_codes if kept else codes, q.scale, q.zero, q.w_bits)
    seconds = time.perf_counter() - t0
    row = ctx.report[name]
    row.method = "nearest (kept)" if kept else "adaround"
    row.seconds += seconds
    y_ref = data.y_sq / max(data.n_rows, 1)
    ctx.note(name, adaround_mode="layer", objective=data.objective, relu_in_loss=data.relu,
             recon_nearest=before / y_ref if y_ref > 0 else 0.0,
             recon_adaround=after / y_ref if y_ref > 0 else 0.0,
             soft_share=grid.soft_share(V), iters=iters, kept_nearest=kept,
             adaround_seconds=round(seconds, 3))


# --- block mode -----------------------------------------------------------------------------


@dataclasses.dataclass
class BlockUnit:
    """A sub-module reconstructed as one unit, with the quantized layers inside it."""

    name: str
    layers: list[str]


def find_blocks(model: nn.Module, layer_names: list[str], batch: calib.Batch) -> list[BlockUnit]:
    """The smallest sub-modules (not the model itself) that hold at least two of the given layers,
    run exactly once per forward pass, and take and return one tensor: residual blocks, inverted
    residuals, transformer sub-layers. Layers outside every block are left out."""
    names = set(layer_names)
    calls: dict[str, int] = {}
    tensor_io: dict[str, bool] = {}
    hooks = []
    for mod_name, mod in model.named_modules():
        if not mod_name or mod_name in names:
            continue

        def hook(m, args, out, mod_name=mod_name):
            calls[mod_name] = calls.get(mod_name, 0) + 1
            tensor_io[mod_name] = (len(args) == 1 and isinstance(args[0], torch.Tensor)
                                   and isinstance(out, torch.Tensor))

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            calib.run_model(model, batch)
    finally:
        for h in hooks:
            h.remove()
    order = {n: i for i, n in enumerate(layer_names)}
    cands = {}
    for mod_name in calls:
        inside = [n for n in layer_names if n.startswith(mod_name + ".")]
        if len(inside) >= 2 and calls[mod_name] == 1 and tensor_io.get(mod_name, False):
            cands[mod_name] = sorted(inside, key=order.__getitem__)
    minimal = [c for c in cands if not any(o != c and o.startswith(c + ".") for o in cands)]
    return sorted((BlockUnit(c, cands[c]) for c in minimal), key=lambda u: order[u.layers[0]])


class BlockExtension:
    """Extra learnable parameters optimised jointly with V inside the block loop.

    ``setup`` returns torch optimizer parameter groups (each a dict with "params" and "lr");
    the loop steps them with Adam and a cosine learning-rate decay to 0 over the block's
    iterations, after each backward pass. ``finish`` writes the learned values back.
    AQuant adds its activation borders this way; LSQ activation steps are the built-in one.
    ``begin_step``, ``extra_loss`` and ``before_eval`` are optional per-step / end hooks;
    ``replaces_act_steps`` = True leaves the block's activation quantizers to the extension
    (the built-in LSQ extension is then not added).
    """

    replaces_act_steps: bool = False

    def setup(self, ctx: QuantContext, unit: BlockUnit, config: AdaRoundConfig, seed: int) -> list[dict[str, Any]]:
        return []

    def begin_step(self, t: int, iters: int) -> None:
        """Called before the forward pass of step t (1..iters): schedules (temperatures)."""

    def extra_loss(self, out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
        """A term added to step's loss; out: the block output, idx: the minibatch's sample
        indices into the calibration samples (in calibration order)."""
        return None

    def before_eval(self) -> None:
        """Learning is over; called before the block's final evaluation (no dropping, hard)."""

    def finish(self, ctx: QuantContext, unit: BlockUnit, keep: bool) -> None:
        """keep: whether the block's learned state is kept (False when nearest was kept)."""


class _LsqDrop(torch.autograd.Function):
    """Uniform fake quantization with QDrop dropping in one pass, and its LSQ backward.

    Forward: xq = s * (clamp(round(x/s) + z, 0, qmax) - z), replaced by x where ``drop`` (a 0/1
    float mask) is 1.
    Backward (straight-through round): dx = g where the element was dropped or inside the grid,
    0 where clipped; ds = grad_scale * sum(g * t) over kept elements with t = round(x/s) - x/s
    inside the grid and the clipped level (0 or qmax) - z outside (LSQ, Esser et al. 2020).
    """

    @staticmethod
    def forward(ctx, x, scale, zero, qmax, drop, grad_scale, learn):
        with torch.no_grad():
            v = x / scale
            r = torch.round(v).add_(zero)
            inside = (r >= 0) & (r <= qmax)
            lvl = r.clamp_(0, qmax).sub_(zero)  # clipped level - z
            out = lvl * scale
            # Masks as 0/1 floats: lerp and products beat where / masked_fill on CPU, and
            # lerp with weight 0 or 1 returns exactly one of its ends.
            insf = inside.to(x.dtype)
            if drop is not None:
                out = torch.lerp(out, x, drop)
                passthrough = torch.maximum(insf, drop)
            else:
                passthrough = insf
            if learn:
                t = lvl.sub_(v.mul_(insf))
                if drop is not None:
                    t.mul_(1.0 - drop)
                ctx.save_for_backward(passthrough, t)
            else:
                ctx.save_for_backward(passthrough)
        ctx.grad_scale, ctx.learn = grad_scale, learn
        return out

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        gx = g * saved[0]
        gs = None
        if ctx.learn:
            gs = (g * saved[1]).sum().reshape(1) * ctx.grad_scale
        return gx, gs, None, None, None, None, None


class LsqActQuant(nn.Module):
    """A block-loop stand-in for a UniformActQuantizer: learnable step (LSQ gradient scaled by
    1/sqrt(numel * qmax), as QDrop), and QDrop dropping from its own seeded generator."""

    def __init__(self, base: UniformActQuantizer, learn: bool, drop_prob: float, gen: torch.Generator):
        super().__init__()
        self.base = base
        self.scale = nn.Parameter(base.scale.detach().clone(), requires_grad=learn)
        self.drop_prob = float(drop_prob)
        self.gen = gen

    @property
    def bits(self) -> int:
        return self.base.bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qmax = float(self.base.qmax)
        drop = None
        if self.drop_prob > 0:
            drop = (torch.rand(x.shape, generator=self.gen) < self.drop_prob).to(x.dtype)
        learn = self.scale.requires_grad
        return _LsqDrop.apply(x, self.scale, self.base.zero, qmax, drop, 1.0 / math.sqrt(x.numel() * qmax), learn)


class ActStepExtension(BlockExtension):
    """QDrop's activation side: each input quantizer of the block's layers is swapped for an
    LsqActQuant (dropping with drop_prob; step learned when learn_act_scale)."""

    def __init__(self) -> None:
        self.swapped: list[tuple[QuantLayer, UniformActQuantizer, LsqActQuant]] = []

    def setup(self, ctx: QuantContext, unit, config, seed):
        gen = torch.Generator().manual_seed(seed)
        params = []
        for name in unit.layers:
            q = ctx.qlayer(name)
            if not isinstance(q.act_quant, UniformActQuantizer):
                continue
            lsq = LsqActQuant(q.act_quant, config.learn_act_scale, config.drop_prob, gen)
            self.swapped.append((q, q.act_quant, lsq))
            q.act_quant = lsq
            if config.learn_act_scale:
                params.append(lsq.scale)
        return [{"params": params, "lr": config.act_lr}] if params and config.act_lr > 0 else []

    def before_eval(self):
        for _, _, lsq in self.swapped:
            lsq.drop_prob = 0.0

    def finish(self, ctx: QuantContext, unit, keep):
        for q, base, lsq in self.swapped:
            if keep and lsq.scale.requires_grad:
                with torch.no_grad():
                    base.scale.copy_(lsq.scale.detach().clamp_min(1e-12))
            q.act_quant = base
        self.swapped = []


def _collect_block(ctx: QuantContext, unit: BlockUnit, batches: list[calib.Batch]):
    """Block inputs of both networks and the FP block outputs over the calibration set."""
    fp_mod, q_mod = ctx.fp_model.get_submodule(unit.name), ctx.qmodel.get_submodule(unit.name)
    fronts = batches if isinstance(batches, _Calibration) else None
    xs, xqs, ys = [], [], []

    left = None  # samples still to cache: at most CACHE_LIMIT_BYTES of X, Xq and Y together
    with torch.no_grad():
        for b in batches:
            if left is not None and left <= 0:
                break
            x, y, xq = _module_io(ctx, fp_mod, q_mod, b, fronts=fronts)
            if left is None:
                left = max(1, CACHE_LIMIT_BYTES // ((2 * x[0].numel() + y[0].numel()) * 4))
            k = min(left, x.shape[0])
            xs.append(x[:k])
            ys.append(y[:k])
            xqs.append(xq[:k])
            left -= k
    X, Xq, Y = torch.cat(xs), torch.cat(xqs), torch.cat(ys)
    if not (torch.isfinite(Xq).all() and torch.isfinite(Y).all()):
        raise ValueError(f"block '{unit.name}': NaN or Inf in its calibration inputs or outputs")
    return X, Xq, Y


def _rec_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over rows (batch and positions) of the sum over channels of the squared error."""
    channels = out.shape[1] if out.dim() == 4 else out.shape[-1]
    diff = out - y
    return (diff * diff).sum() * (channels / out.numel())


def _block_eval(block: nn.Module, Xq: torch.Tensor, Y: torch.Tensor) -> tuple[float, float]:
    """(loss, sum of squared targets / rows) of the block with its current weights, all samples."""
    total, ysq, rows = 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(0, Xq.shape[0], 256):
            out, y = block(Xq[i:i + 256]), Y[i:i + 256]
            r = out.numel() // (out.shape[1] if out.dim() == 4 else out.shape[-1])
            total += float((out - y).double().pow(2).sum())
            ysq += float(y.double().pow(2).sum())
            rows += r
    return total / rows, ysq / rows


def reconstruct_block(ctx: QuantContext, unit: BlockUnit, config: AdaRoundConfig, index: int,
                      batches: list[calib.Batch], extensions: Iterable[BlockExtension] = ()) -> None:
    """BRECQ / QDrop on one block: torch autograd for the block's forward and backward, the
    rounding math, regulariser and Adam on V in C++ (rounding_apply_grad), extensions' parameters
    by torch Adam with cosine decay."""
    t0 = time.perf_counter()
    block = ctx.qmodel.get_submodule(unit.name)
    X, Xq, Y = _collect_block(ctx, unit, batches)
    grids = {n: _Grid.of(ctx, n) for n in unit.layers}
    near = {n: ctx.qlayer(n).codes.clone() for n in unit.layers}
    was_training = block.training
    block.eval()
    before, y_ref = _block_eval(block, Xq, Y)

    seed = _seed(ctx, config, 10_000 + index)
    gen = torch.Generator().manual_seed(seed)
    extensions = list(extensions)
    exts = [*([] if any(e.replaces_act_steps for e in extensions) else [ActStepExtension()]), *extensions]
    groups = [g for i, e in enumerate(exts) for g in e.setup(ctx, unit, config, seed + 1 + i)]
    opt = torch.optim.Adam(groups) if groups else None
    iters = config.steps("block")
    sched_lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters, eta_min=0.0) if opt else None

    states, wts = {}, {}
    for n, g in grids.items():
        q = ctx.qlayer(n)
        states[n] = g.init_state()
        wt = torch.empty(g.W.shape, dtype=torch.float32)
        _native.rounding_soft_weight(g.W, g.scale, g.zero, g.bits, states[n][0], Wt=wt)
        wt.requires_grad_(True)
        wts[n] = wt
    sched = config.schedule("block")
    bar = _progress(ctx, iters, f"adaround block {unit.name}")
    every = max(1, math.ceil(iters / _PROGRESS_UPDATES))
    N = Xq.shape[0]
    bsz = min(config.batch, N)
    soft = 1.0
    try:
        for t in range(1, iters + 1):
            idx = torch.randperm(N, generator=gen)[:bsz]
            x = Xq[idx]
            if config.drop_prob > 0 and x.is_floating_point():  # token ids: nothing to drop
                mix = (torch.rand(x.shape, generator=gen) < config.drop_prob).to(x.dtype)
                x = torch.lerp(x, X[idx], mix)  # exact ends for weights 0 / 1
            for n, wt in wts.items():
                wt.grad = None
                ctx.qlayer(n).weight_override = wt.view(ctx.qlayer(n).weight_shape)
            if opt is not None:
                opt.zero_grad(set_to_none=True)
            for e in exts:
                e.begin_step(t, iters)
            out = block(x)
            loss = _rec_loss(out, Y[idx])
            for e in exts:
                extra = e.extra_loss(out, idx)
                if extra is not None:
                    loss = loss + extra
            loss.backward()
            reg = 0.0
            soft_n = 0.0
            for n, g in grids.items():
                V, m, v = states[n]
                grad = wts[n].grad
                if grad is None:  # every weight feeds the block output
                    raise RuntimeError(f"layer '{n}': no gradient reached its weight")
                r, s = _native.rounding_apply_grad(g.W, g.scale, g.zero, g.bits, V, m, v, grad, t,
                                                   sched, Wt_next=wts[n].detach())
                reg += r
                soft_n += s * g.W.size
            soft = soft_n / sum(g.W.size for g in grids.values())
            if opt is not None and sched_lr is not None:  # both or neither
                opt.step()
                sched_lr.step()
            if t % every == 0 or t == iters:
                bar.update(t - bar.n)
                bar.set_postfix(rec=f"{loss.detach().item():.4g}", reg=f"{reg:.4g}", soft=f"{soft:.2f}")
    finally:
        bar.close()
        for n in unit.layers:
            ctx.qlayer(n).weight_override = None

    for n, g in grids.items():
        q = ctx.qlayer(n)
        q.set_codes(g.hard_codes(states[n][0]), q.scale, q.zero, q.w_bits)
    # Evaluated with the learned activation steps still in place but without dropping.
    for e in exts:
        e.before_eval()
    after, _ = _block_eval(block, Xq, Y)
    kept = config.keep_better and after > before
    for e in exts:
        e.finish(ctx, unit, keep=not kept)
    if kept:
        for n in unit.layers:
            q = ctx.qlayer(n)
            q.set_codes(near[n], q.scale, q.zero, q.w_bits)
    block.train(was_training)
    seconds = time.perf_counter() - t0
    for n in unit.layers:
        row = ctx.report[n]
        row.method = "nearest (kept)" if kept else "adaround"
        row.seconds += seconds / len(unit.layers)
        ctx.note(n, adaround_mode="block", block=unit.name, objective="block",
                 recon_nearest=before / y_ref if y_ref > 0 else 0.0,
                 recon_adaround=after / y_ref if y_ref > 0 else 0.0,
                 soft_share=grids[n].soft_share(states[n][0]), iters=iters, block_samples=int(N),
                 drop_prob=config.drop_prob, kept_nearest=kept, adaround_seconds=round(seconds, 3))


# --- the method -----------------------------------------------------------------------------


def run_reconstruction(ctx: QuantContext, config: AdaRoundConfig, extensions: Iterable[BlockExtension] = ()) -> None:
    """Layer or block reconstruction over the whole model, in execution order. ``extensions``
    (block mode) add learnable parameters to every block's loop."""
    batches = _samples(ctx, config.num_samples)
    names = [s.name for s in ctx.layers if config.reconstruct_8bit or s.w_bits < 8]
    if not names:
        return
    relu = set()
    if config.include_activation:
        relu = relu_followed(ctx.fp_model, {n: ctx.fp_layer(n) for n in names}, batches[0].head(2))
    units: list[BlockUnit | str] = []
    in_block: set[str] = set()
    if config.mode == "block":
        for blk in find_blocks(ctx.qmodel, names, batches[0].head(2)):
            units.append(blk)
            in_block.update(blk.layers)
    units += [n for n in names if n not in in_block]
    order = {n: i for i, n in enumerate(names)}
    units.sort(key=lambda u: order[u.layers[0]] if isinstance(u, BlockUnit) else order[u])
    extensions = list(extensions)
    for i, u in enumerate(units):
        if isinstance(u, BlockUnit):
            reconstruct_block(ctx, u, config, i, batches, extensions)
        else:
            reconstruct_layer(ctx, u, config, u in relu, i, batches)


@register_method("adaround", AdaRoundConfig, "learned up/down rounding per layer or block (AdaRound, BRECQ, QDrop)")
def run(ctx: QuantContext, config: AdaRoundConfig) -> None:
    """Learned up/down rounding per layer or block (AdaRound, BRECQ, QDrop)."""
    run_reconstruction(ctx, config)
