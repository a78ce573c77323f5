"""CLADO: mixed precision from measured single-layer and pairwise loss terms (methods.md section 3).

For every searched layer l and candidate bit width s the engine measures
``Lt_l(s) = L(only l quantized at s) - L(FP)``, and for every searched pair (l, m)
``Lt_lm(s, t) = L(l at s and m at t) - L(FP)``. The IQP matrix is the reference's:

    G[(l,s),(l,s)] = 2 Lt_l(s);  G[(l,s),(m,t)] = Lt_lm(s,t) - Lt_l(s) - Lt_m(t);  0 within a layer

so that ``x^T G x = 2 dL`` for a one-hot x; pairs not measured (``pairs="neighbors"`` or a
window) count as independent (0). lowbit's exact solver (C++, ``_native.solve_iqp``) minimises
it under the budget(s), on the raw G or on its PSD projection, and the chosen bits are set with
``ctx.requantize`` so a following stage (``method=["clado", "adaround"]``) rounds them.

Measurement protocol: every other layer stays FP (weights and activations), each perturbed
weight is the nearest rounding on the grid lowbit itself uses at that bit width (quantized once
per (layer, bits) and swapped in by pointer), and the loss is the cross entropy to the labels
("ce"), the KL divergence from the FP outputs ("kl", no labels needed) or the squared error to
the FP outputs ("mse"). The float run's values live at each searched layer are cached (torch.fx
cut points, see :class:`Engine`), so an evaluation runs only from the first perturbed layer on.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Union, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from lowbit import _native, calib
from lowbit.config import QuantConfig, check_bits, check_range
from lowbit.quantizers import dequantize_codes, float_weight_2d, round_nearest, weight_grid
from lowbit.registry import register_method

if TYPE_CHECKING:
    from lowbit.api import QuantContext

log = logging.getLogger("lowbit")

LOSSES = ("auto", "ce", "kl", "mse")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CladoConfig(QuantConfig):
    """Options of CLADO.

    bits: candidate weight bit widths. Budgets (any combination; none = no budget):
    avg_bits (parameter-weighted average weight bits of the searched layers), bytes (weight-code
    bytes of all quantized layers; layers not searched count at their planned bits), bitops
    (sum over quantized layers of MACs per sample x weight bits x activation bits, 32 for float
    activations). num_samples: size of the sensitivity set. pairs: "all", "neighbors" (adjacent
    layers in execution order), or an int window (0: no pair terms, the diagonal-only search).
    loss: "auto" (ce when every calibration batch has labels, else kl), "ce", "kl" or "mse".
    psd: solve the "raw" G or its PSD "project"ion. time_limit: solver seconds. layers: names to
    search (default: every quantized layer not pinned by keep_first_last or overrides).
    cache_mb: memory for the prefix activation cache.
    """

    bits: tuple[int, ...] = (2, 4, 8)
    avg_bits: float | None = None
    bytes: float | None = None
    bitops: float | None = None
    num_samples: int = 256
    pairs: Union[str, int] = "all"
    loss: str = "auto"
    psd: str = "raw"
    time_limit: float = 30.0
    layers: tuple[str, ...] | None = None
    cache_mb: float = 512.0

    def __post_init__(self) -> None:
        if isinstance(self.bits, (list, tuple)):
            object.__setattr__(self, "bits", tuple(sorted(self.bits)))
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        super().__post_init__()

    def validate(self) -> None:
        if not isinstance(self.bits, tuple) or not self.bits:
            raise ValueError(f"bits must be a non-empty list of bit widths, got {self.bits!r}")
        for b in self.bits:
            check_bits("bits", b)
        if len(set(self.bits)) != len(self.bits):
            raise ValueError(f"bits must not repeat a width, got {self.bits!r}")
        if self.avg_bits is not None:
            check_range("avg_bits", self.avg_bits, 1.0, 32.0)
        if self.bytes is not None:
            check_range("bytes", self.bytes, 0.0, math.inf)
        if self.bitops is not None:
            check_range("bitops", self.bitops, 0.0, math.inf)
        check_range("num_samples", self.num_samples, 1, 1 << 30, integer=True)
        if isinstance(self.pairs, bool) or not (self.pairs in ("all", "neighbors") or
                                                (isinstance(self.pairs, int) and self.pairs >= 0)):
            raise ValueError(f"pairs must be 'all', 'neighbors' or a window size >= 0, got {self.pairs!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.psd not in ("raw", "project"):
            raise ValueError(f"psd must be 'raw' or 'project', got {self.psd!r}")
        check_range("time_limit", self.time_limit, 1e-3, 1e6)
        check_range("cache_mb", self.cache_mb, 0.0, 1e7)
        if self.layers is not None and (not isinstance(self.layers, tuple) or not self.layers or
                                        not all(isinstance(n, str) for n in self.layers)):
            raise ValueError(f"layers must be a non-empty list of layer names or None, got {self.layers!r}")


# --- measurement engine ------------------------------------------------------------------


def _clone(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, (tuple, list)):
        return type(x)(_clone(v) for v in x)
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    return x


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(v) for v in x)
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    return 0


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"CLADO needs the model output as a tensor (or .logits / first item), got {type(out).__name__}")


class _Graph:
    """A torch.fx trace of the model, run from any cut: the values live at node ``k`` (computed
    before it, used at or after it) are all a run starting at ``k`` needs."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.nodes = list(gm.graph.nodes)
        self.inputs = [n for n in self.nodes if n.op == "placeholder"]
        index = {node: i for i, node in enumerate(self.nodes)}
        self.last_use = [max((index[u] for u in node.users), default=i) for i, node in enumerate(self.nodes)]
        self.free_after: list[list[torch.fx.Node]] = [[] for _ in self.nodes]
        for node, last in zip(self.nodes, self.last_use):
            self.free_after[last].append(node)
        self.interp = torch.fx.Interpreter(gm, garbage_collect_values=False)

    def first_call(self, name: str) -> int | None:
        return next((i for i, n in enumerate(self.nodes) if n.op == "call_module" and n.target == name), None)

    def live(self, k: int) -> list[torch.fx.Node]:
        return [n for n, last in zip(self.nodes[:k], self.last_use[:k]) if last >= k]

    def bind(self, batch: calib.Batch) -> dict:
        """The values live at the start of the graph: the batch's inputs."""
        return dict(zip(self.inputs, batch.args))

    def run(self, env: dict, start: int, stop: int | None = None, save: Any = ()) -> tuple[Any, dict[int, dict]]:
        """Runs nodes ``start`` to ``stop`` (the end: the output) from ``env``, the values live at
        ``start``; returns the output (None when stopped early) and, for each cut in ``save``
        passed on the way, clones of its live values (later in-place ops cannot reach them)."""
        env, saved = dict(env), {}
        self.interp.env = env
        stop = len(self.nodes) if stop is None else stop
        for i in range(max(start, len(self.inputs)), stop):
            if i in save:
                saved[i] = {n: _clone(env[n]) for n in self.live(i)}
            node = self.nodes[i]
            value = self.interp.run_node(node)
            if node.op == "output":
                return value, saved
            env[node] = value
            for dead in self.free_after[i]:
                env.pop(dead, None)
        if stop in save:
            saved[stop] = {n: _clone(env[n]) for n in self.live(stop)}
        return None, saved


def _trace(model: nn.Module, batches: list[calib.Batch], names: list[str]) -> _Graph | None:
    """The model's fx graph, or None when it cannot serve (untraceable, keyword inputs, a
    searched layer not called as a module): the engine then runs the whole model each time."""
    if any(b.kwargs for b in batches):
        return None
    try:
        graph = _Graph(torch.fx.symbolic_trace(model))
    except Exception as e:  # data-dependent control flow and the like: fx's own limits
        log.debug("CLADO: torch.fx cannot trace the model (%s); every evaluation runs it whole", e)
        return None
    if any(graph.first_call(n) is None for n in names) or any(len(b.args) != len(graph.inputs) for b in batches):
        return None
    return graph


class Engine:
    """Loss of a float model with some layers' weights swapped for given tensors.

    ``loss({name: weight, ...})`` runs the sensitivity set from the first swapped layer on:
    the model is traced once with torch.fx, and the float run's values live at each searched
    layer (for a ResNet block: its input and skip) are cached within ``cache_bytes``, the latest
    layers first. A model fx cannot trace runs whole for every loss.
    """

    def __init__(self, model: nn.Module, batches: list[calib.Batch], names: list[str], loss: str,
                 cache_bytes: float = 512 * 2**20):
        self.model = model
        self.batches = batches
        self.kind = loss
        self.n = sum(b.size for b in batches)
        self.mods = {n: model.get_submodule(n) for n in names}
        self.fp_weight = {n: m.weight.data for n, m in self.mods.items()}
        self.count = 0
        self.seconds = 0.0
        # The quantized weight of each (layer, bits), set by measure() for the final check.
        self.qw: dict[tuple[str, int], torch.Tensor] = {}
        self.graph = _trace(model, batches, names)
        self.pos = self._positions(names)
        self._prepare(cache_bytes)

    def _positions(self, names: list[str]) -> dict[str, int]:
        """Where each searched layer first runs: its fx node, or its call order among them."""
        if self.graph is not None:
            return {n: cast(int, self.graph.first_call(n)) for n in names}
        order: list[str] = []
        hooks = [m.register_forward_pre_hook(lambda *_, n=n: order.append(n)) for n, m in self.mods.items()]
        try:
            with torch.no_grad():
                calib.run_model(self.model, self.batches[0])
        finally:
            for h in hooks:
                h.remove()
        missing = [n for n in names if n not in order]
        if missing:
            raise ValueError(f"CLADO layers {missing} never ran on a calibration batch")
        return {n: order.index(n) for n in names}

    @torch.no_grad()
    def _prepare(self, cache_bytes: float) -> None:
        # The float run of every batch: its reference outputs, and the cuts' live values that fit.
        self.cuts: list[dict[int, dict]] = [{} for _ in self.batches]
        save: set[int] = set()
        if self.graph is not None:
            _, sizes = self.graph.run(self.graph.bind(self.batches[0]), 0, save=set(self.pos.values()))
            left = cache_bytes
            for k in sorted(sizes, reverse=True):  # later cuts save the most work and are smaller
                need = _nbytes(list(sizes[k].values())) / self.batches[0].size * self.n
                if need <= left:
                    save.add(k)
                    left -= need
        self.ref = []
        base = 0.0
        for bi, b in enumerate(self.batches):
            if self.graph is not None:
                out, self.cuts[bi] = self.graph.run(self.graph.bind(b), 0, save=save)
            else:
                out = calib.run_model(self.model, b)
            out = _logits(out)
            if self.kind == "kl":
                self.ref.append(F.log_softmax(out.double(), dim=-1))
            elif self.kind == "mse":
                self.ref.append(out.double())
            else:
                if b.labels is None:
                    raise ValueError("loss='ce' needs labels: pass (input, label) batches or use loss='kl'")
                self.ref.append(b.labels)
            base += self._batch_loss(out, bi)
        self.fp_loss = base / self.n

    def close(self) -> None:
        """Drops the caches; the model's weights are already its own again after every call."""
        self.cuts = [{} for _ in self.batches]

    def _batch_loss(self, out: torch.Tensor, bi: int) -> float:
        n = out.shape[0]
        if self.kind == "ce":
            c = out.shape[-1]
            labels = self.ref[bi].reshape(-1).long()
            return float(F.cross_entropy(out.double().reshape(-1, c), labels, reduction="sum")) * n / labels.numel()
        if self.kind == "kl":
            ref = self.ref[bi]
            kl = (ref.exp() * (ref - F.log_softmax(out.double(), dim=-1))).sum(-1)
            return float(kl.reshape(n, -1).mean(1).sum())
        return float((out.double() - self.ref[bi]).pow(2).reshape(n, -1).mean(1).sum())

    def _start(self, bi: int, first: int, prefix: Prefix | None) -> tuple[dict, int]:
        """The values a run can start from, and where: the prefix's cut, else the latest cached
        float cut at or before node ``first`` (the first swapped layer), else the inputs."""
        assert self.graph is not None
        if prefix is not None:
            return {n: _clone(v) for n, v in prefix.values[bi].items()}, prefix.end
        k = max((c for c in self.cuts[bi] if c <= first), default=None)
        if k is None:
            return self.graph.bind(self.batches[bi]), 0
        return {n: _clone(v) for n, v in self.cuts[bi][k].items()}, k

    def _first(self, weights: dict[str, torch.Tensor], end: int | None = None) -> int:
        assert self.graph is not None
        return min([self.pos[n] for n in weights] + [len(self.graph.nodes) if end is None else end])

    @torch.no_grad()
    def loss(self, weights: dict[str, torch.Tensor], use_cache: bool = True, prefix: Prefix | None = None) -> float:
        """Mean loss with ``weights`` swapped in. ``prefix`` (from :meth:`prefix`, made with the
        same weights for the layers before it ends) starts later than the float cuts can.
        ``use_cache=False`` runs the model itself, whole (the reference for the cuts)."""
        t0 = time.perf_counter()
        if prefix is not None:
            self._check_prefix(weights, prefix)
        total = 0.0
        with self._swapped(weights):
            for bi, b in enumerate(self.batches):
                if self.graph is None or not use_cache:
                    out = calib.run_model(self.model, b)
                else:
                    out, _ = self.graph.run(*self._start(bi, self._first(weights), prefix))
                total += self._batch_loss(_logits(out), bi)
        self.count += 1
        self.seconds += time.perf_counter() - t0
        return total / self.n

    @torch.no_grad()
    def prefix(self, weights: dict[str, torch.Tensor], end: int, base: Prefix | None = None) -> Prefix:
        """The values live at ``end`` with ``weights`` swapped in, for :meth:`loss` of any
        allocation that agrees with ``weights`` on the layers before ``end`` (a depth-first
        search over allocations runs each layer once per prefix). ``base``: a shorter prefix
        to extend. Without an fx graph the prefix holds nothing and losses run whole."""
        if base is not None:
            self._check_prefix(weights, base)
        values: list[dict] = []
        with self._swapped(weights):
            for bi in range(len(self.batches)):
                if self.graph is None:
                    values.append({})
                    continue
                env, k = self._start(bi, self._first(weights, end), base)
                if k > end:
                    raise ValueError(f"a prefix ending at {end} cannot extend one ending at {k}")
                _, saved = self.graph.run(env, k, end, save={end})
                values.append(saved[end])
        return Prefix(values, end, {n: w for n, w in weights.items() if self.pos[n] < end})

    def _check_prefix(self, weights: dict[str, torch.Tensor], prefix: Prefix) -> None:
        before = {n: w for n, w in weights.items() if self.pos[n] < prefix.end}
        if before.keys() != prefix.weights.keys() or any(before[n] is not prefix.weights[n] for n in before):
            raise ValueError("the prefix was made with other weights for the layers it covers")

    @contextlib.contextmanager
    def _swapped(self, weights: dict[str, torch.Tensor]):
        for n, w in weights.items():
            self.mods[n].weight.data = w
        try:
            yield
        finally:
            for n in weights:
                self.mods[n].weight.data = self.fp_weight[n]


@dataclasses.dataclass
class Prefix:
    """The values live at node ``end`` of the fx graph, per calibration batch, and the swapped
    weights of the layers before it."""

    values: list[dict]
    end: int
    weights: dict


# --- the search --------------------------------------------------------------------------


@dataclasses.dataclass
class Terms:
    """Measured CLADO terms of the searched layers (execution order)."""

    names: list[str]
    bits: tuple[int, ...]
    single: np.ndarray  # (L, S): Lt_l(s)
    pairs: dict[tuple[int, int], np.ndarray]  # (l, m) -> (S, S): Lt_lm(s, t)
    fp_loss: float
    loss: str

    def matrix(self, with_pairs: bool = True) -> np.ndarray:
        """The reference G (L*S, L*S) in float64 (``with_pairs=False``: the diagonal-only search)."""
        L, S = self.single.shape
        G = np.zeros((L * S, L * S))
        G[np.arange(L * S), np.arange(L * S)] = 2 * self.single.reshape(-1)
        if with_pairs:
            for (a, b), t in self.pairs.items():
                block = t - self.single[a][:, None] - self.single[b][None, :]
                G[a * S : (a + 1) * S, b * S : (b + 1) * S] = block
                G[b * S : (b + 1) * S, a * S : (a + 1) * S] = block.T
        return G


def pair_list(L: int, pairs: Union[str, int]) -> list[tuple[int, int]]:
    if pairs == "all":
        return list(itertools.combinations(range(L), 2))
    window = 1 if pairs == "neighbors" else int(pairs)
    return [(a, b) for a in range(L) for b in range(a + 1, min(L, a + window + 1))]


def quantized_weights(ctx: QuantContext, names: list[str], bits: tuple[int, ...]) -> dict[tuple[str, int], torch.Tensor]:
    """Each (layer, bits): the nearest rounding on lowbit's grid for that layer, as a float weight."""
    out = {}
    for name in names:
        spec = ctx.spec(name)
        mod = ctx.fp_layer(name)
        w = float_weight_2d(mod)
        for b in bits:
            scale, zero = weight_grid(w, b, spec.granularity, spec.group_size, spec.symmetric)
            codes = round_nearest(w, scale, zero, b)
            out[(name, b)] = dequantize_codes(codes, scale, zero).reshape(mod.weight.shape).to(
                device=mod.weight.device, dtype=mod.weight.dtype)
    return out


def searched_layers(ctx: QuantContext, config: CladoConfig) -> list[str]:
    names = [s.name for s in ctx.layers]
    if config.layers is not None:
        unknown = [n for n in config.layers if n not in names]
        if unknown:
            raise ValueError(f"CLADO layers {unknown} are not quantized layers; quantized: {names}")
        return [n for n in names if n in config.layers]
    # keep_first_last pins the first and last quantized layers; overrides pin what they name.
    ends = {ctx.layers[0].name, ctx.layers[-1].name} if ctx.settings.keep_first_last is not None else set()
    return [s.name for s in ctx.layers
            if s.name not in ends and not any(note.startswith("override") for note in s.notes)]


def measure(ctx: QuantContext, config: CladoConfig, names: list[str]) -> tuple[Terms, Engine]:
    batches = list(calib.chunks(ctx.batches, config.num_samples))
    kind = config.loss
    if kind == "auto":
        kind = "ce" if all(b.labels is not None for b in batches) else "kl"
    model = copy.deepcopy(ctx.fp_model).eval()
    engine = Engine(model, batches, names, kind, config.cache_mb * 2**20)
    try:
        qw = quantized_weights(ctx, names, config.bits)
        L, S = len(names), len(config.bits)
        plist = pair_list(L, config.pairs)
        jobs = [(a,) for a in range(L)] + plist
        single = np.zeros((L, S))
        pairs = {p: np.zeros((S, S)) for p in plist}
        bar = tqdm(total=L * S + len(plist) * S * S, desc="clado measurements", unit="eval", leave=False,
                   disable=not ctx.settings.progress)
        try:
            for job in jobs:
                for combo in itertools.product(range(S), repeat=len(job)):
                    w = {names[layer]: qw[(names[layer], config.bits[s])] for layer, s in zip(job, combo)}
                    d = engine.loss(w) - engine.fp_loss
                    if len(job) == 1:
                        single[job[0], combo[0]] = d
                    else:
                        pairs[job][combo] = d
                    bar.update(1)
        finally:
            bar.close()
    except BaseException:
        engine.close()
        raise
    engine.qw = qw
    return Terms(names, config.bits, single, pairs, engine.fp_loss, kind), engine


def layer_macs(ctx: QuantContext, names: list[str]) -> dict[str, float]:
    """Multiply-accumulates per sample of each layer, from one forward of the FP model."""
    macs: dict[str, float] = {}
    mods = {n: ctx.fp_layer(n) for n in names}
    batch = ctx.batches[0]

    def on_out(name: str, y: torch.Tensor) -> None:
        m = mods[name]
        per_out = m.weight[0].numel()  # in/groups*kh*kw or in_features
        macs.setdefault(name, y.numel() / batch.size * per_out)

    with torch.no_grad(), calib.capture(mods, on_output=on_out):
        calib.run_model(ctx.fp_model, batch)
    return macs


def budget_rows(ctx: QuantContext, config: CladoConfig, names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A (m, L*S) and b (m,) in float64 for the budgets the config sets."""
    S = len(config.bits)
    bits = np.array(config.bits, np.float64)
    params = np.array([ctx.fp_layer(n).weight.numel() for n in names], np.float64)
    others = [s for s in ctx.layers if s.name not in names]
    rows, rhs, labels = [], [], []
    if config.avg_bits is not None:
        rows.append(np.outer(params, bits).reshape(-1))
        rhs.append(config.avg_bits * params.sum())
        labels.append("avg_bits")
    if config.bytes is not None:
        fixed = sum(ctx.fp_layer(s.name).weight.numel() * s.w_bits / 8 for s in others)
        rows.append(np.outer(params, bits / 8).reshape(-1))
        rhs.append(config.bytes - fixed)
        labels.append("bytes")
    if config.bitops is not None:
        macs = layer_macs(ctx, [s.name for s in ctx.layers])
        abits = {s.name: 32 if s.a_bits is None else s.a_bits for s in ctx.layers}
        fixed = sum(macs[s.name] * s.w_bits * abits[s.name] for s in others)
        m = np.array([macs[n] * abits[n] for n in names])
        rows.append(np.outer(m, bits).reshape(-1))
        rhs.append(config.bitops - fixed)
        labels.append("bitops")
    if not rows:
        return np.zeros((0, len(names) * S)), np.zeros(0), []
    return np.array(rows), np.array(rhs, np.float64), labels


def negative_mass(G: np.ndarray) -> tuple[float, float]:
    """Clipped negative eigen-mass of G and its share of the spectrum's absolute mass."""
    lam = np.linalg.eigvalsh((G + G.T) / 2)
    neg = float(-lam[lam < 0].sum())
    total = float(np.abs(lam).sum())
    return neg, neg / total if total > 0 else 0.0


def solve(G: np.ndarray, S: int, A: np.ndarray, b: np.ndarray, time_limit: float, seed: int = 0):
    L = G.shape[0] // S
    return _native.solve_iqp(G.astype(np.float32), np.full(L, S, np.int32), A if len(b) else None,
                             b if len(b) else None, time_limit=time_limit, seed=seed)


@register_method("clado", CladoConfig, "cross-layer mixed precision: measured pairwise terms, exact IQP")
def run(ctx: QuantContext, config: CladoConfig) -> None:
    """Cross-layer mixed precision: measured pairwise terms, exact IQP."""
    names = searched_layers(ctx, config)
    if not names:
        raise ValueError("CLADO has no layer to search: every quantized layer is pinned (keep_first_last / "
                         "overrides); pass layers=[...] or keep_first_last=None")
    t0 = time.perf_counter()
    terms, engine = measure(ctx, config, names)
    try:
        t_measure = time.perf_counter() - t0
        S = len(config.bits)
        G = terms.matrix()
        neg, share = negative_mass(G)
        Gs = G
        if config.psd == "project":
            Gp, neg = _native.project_psd(G.astype(np.float32))
            Gs = Gp.astype(np.float64)
        A, b, labels = budget_rows(ctx, config, names)
        choice, info = solve(Gs, S, A, b, config.time_limit, ctx.settings.seed)
        if info["status"] == "infeasible" or choice[0] < 0:
            cheapest = A.reshape(len(labels), len(names), S).min(2).sum(1) if labels else []
            need = {lab: float(c) for lab, c in zip(labels, cheapest)}
            if "avg_bits" in need:
                need["avg_bits"] /= float(sum(ctx.fp_layer(n).weight.numel() for n in names))
            raise ValueError(f"CLADO budget cannot be met ({info['status']}): the smallest configuration of the "
                             f"searched layers needs {need} against {dict(zip(labels, b.tolist()))}")
        # Sanity: with no budget the measured model should want the highest bits everywhere.
        free_choice, free_info = solve(Gs, S, np.zeros((0, G.shape[0])), np.zeros(0), min(config.time_limit, 5.0),
                                       ctx.settings.seed)
        below = [names[i] for i in range(len(names)) if free_choice[i] != S - 1]
        if below:
            log.warning("CLADO: with no budget the measured G prefers fewer than %d bits for %s "
                        "(negative or non-additive loss terms)", config.bits[-1], below)
        chosen = {n: config.bits[c] for n, c in zip(names, choice)}
        measured = engine.loss({n: engine.qw[(n, chosen[n])] for n in names}) - engine.fp_loss
    finally:
        engine.close()
    for i, n in enumerate(names):
        ctx.requantize(n, chosen[n])
        ctx.note(n, clado_bits=chosen[n], clado_single={str(bb): float(v) for bb, v in zip(config.bits, terms.single[i])})
    params = np.array([ctx.fp_layer(n).weight.numel() for n in names], np.float64)
    avg = float((params * np.array([chosen[n] for n in names])).sum() / params.sum())
    x = np.zeros(G.shape[0])
    x[np.arange(len(names)) * S + choice] = 1
    ctx.report.meta["clado"] = {
        "searched_layers": names,
        "bits": list(config.bits),
        "chosen_bits": chosen,
        "avg_bits": avg,
        "budget": {lab: {"limit": float(bb), "used": float(A[k] @ x)} for k, (lab, bb) in enumerate(zip(labels, b))},
        "loss": terms.loss,
        "fp_loss": terms.fp_loss,
        "num_samples": engine.n,
        "pairs": config.pairs,
        "num_pairs": len(terms.pairs),
        "psd": config.psd,
        "negative_eigen_mass": float(neg),
        "negative_eigen_share": float(share),
        "predicted_delta_loss": float(x @ G @ x / 2),
        "predicted_delta_loss_solved": float(info["objective"] / 2),
        "measured_delta_loss": float(measured),
        "solver": {k: info[k] for k in ("status", "objective", "bound", "gap", "nodes", "seconds", "relaxation")},
        "evaluations": engine.count,
        "measure_seconds": round(t_measure, 3),
        "sanity": {"unconstrained_all_max_bits": not below, "layers_below_max": below,
                   "unconstrained_status": free_info["status"]},
        "problem": {"G": G.tolist(), "params": params.tolist()},
    }
