"""``lowbit.benchmark(model, example_inputs)``: latency of a packed model against the float
model, measured in the same run, printed side by side.

    qmodel = lowbit.quantize(model, calib_loader, w_bits=4)
    lowbit.benchmark(qmodel, example_inputs)             # packs it, compares with fp32 torch
    lowbit.benchmark(packed, example_inputs, baseline=model)

Timings are medians over ``repeats`` calls after ``warmup`` calls, alternating between the two
models in rounds so that a noisy neighbour slows both alike. Nothing here is asserted anywhere:
speed lives in benchmarks/ and in what this prints.
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from typing import Any, Callable, cast

import torch
import torch.nn as nn

from lowbit import _native

__all__ = ["benchmark", "time_calls", "float_twin", "weight_bytes"]


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> list[float]:
    """Seconds of each of ``repeats`` calls of fn (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


_Pair = tuple[int, int]  # a 2-d conv's kernel_size / stride / padding / dilation


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of a fake-quant or packed model with every quantized layer turned back into a
    plain fp32 nn.Linear / nn.Conv2d / nn.Embedding holding the weight it stands for: the float model torch
    would run, with the same architecture and values."""
    from lowbit.pack import PackedConv2d, PackedEmbedding, PackedLayer, PackedLinear
    from lowbit.quantizers import QuantConv2d, QuantEmbedding, QuantLayer, QuantLinear

    twin = copy.deepcopy(model)
    for name, mod in list(twin.named_modules()):
        if not isinstance(mod, (QuantLayer, PackedLayer)):
            continue
        has_bias = mod.bias is not None
        new: nn.Linear | nn.Conv2d | nn.Embedding
        if isinstance(mod, (QuantLinear, PackedLinear)):
            new = nn.Linear(mod.in_features, mod.out_features, bias=has_bias)
        elif isinstance(mod, (QuantEmbedding, PackedEmbedding)):
            new = nn.Embedding(mod.num_embeddings, mod.embedding_dim, mod.padding_idx)
        elif isinstance(mod, (QuantConv2d, PackedConv2d)):
            # The layers store their geometry as tuple[int, ...]; for a 2-d conv each is a pair.
            new = nn.Conv2d(mod.in_channels, mod.out_channels, cast(_Pair, mod.kernel_size), cast(_Pair, mod.stride),
                            mod.padding if isinstance(mod.padding, str) else cast(_Pair, mod.padding),
                            cast(_Pair, mod.dilation), mod.groups, bias=has_bias)
        else:  # pragma: no cover - only these six layer types exist
            raise TypeError(f"layer '{name}': {type(mod).__name__}")
        with torch.no_grad():
            new.weight.copy_(mod.weight.detach().reshape(new.weight.shape))
            bias = getattr(new, "bias", None)  # nn.Embedding has none
            if bias is not None and mod.bias is not None:  # both or neither (bias=has_bias)
                bias.copy_(mod.bias)
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, new)
    return twin.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (packed codes count as stored)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _call(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    if isinstance(inputs, dict):
        return lambda: model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return lambda: model(*inputs)
    return lambda: model(inputs)


def benchmark(model: nn.Module, example_inputs: Any, *, baseline: nn.Module | None = None, repeats: int = 20,
              warmup: int = 3, threads: int | None = None, verbose: bool = True) -> dict[str, Any]:
    """Median latency of the packed model and of the float model on ``example_inputs``.

    Parameters
    ----------
    model : nn.Module
        A packed model (``lowbit.pack``) or a fake-quant one (``lowbit.quantize``; it is packed
        here first).
    example_inputs : tensor, tuple of positional arguments, or dict of keyword arguments
        One batch, exactly as the model is called.
    baseline : nn.Module, optional
        The float model to compare against; by default the float twin of ``model`` (the same
        layers as plain fp32 nn.Linear / nn.Conv2d).
    repeats, warmup : int
        Timed and untimed calls per model; the two models alternate in rounds.
    threads : int, optional
        Threads for both torch and lowbit's kernels during the measurement (restored after).

    Returns
    -------
    dict
        ``packed_ms``, ``fp_ms`` (medians), ``speedup`` (fp / packed), ``packed_bytes``,
        ``fp_bytes`` (parameters and buffers), ``max_abs_diff`` between the two outputs,
        ``threads``, ``repeats``, ``load_avg``.
    """
    from lowbit.pack import PackedLayer, pack
    from lowbit.quantizers import QuantLayer

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if any(isinstance(m, QuantLayer) for m in model.modules()):
        model = pack(model)
    if not any(isinstance(m, PackedLayer) for m in model.modules()):
        raise ValueError("model has no packed or quantized layer: pass a lowbit.quantize / lowbit.pack result")
    fp = float_twin(model) if baseline is None else baseline
    model.eval()
    fp.eval()
    old_torch, old_lowbit = torch.get_num_threads(), _native.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
        _native.set_num_threads(int(threads))
    try:
        with torch.inference_mode():
            run_p, run_f = _call(model, example_inputs), _call(fp, example_inputs)
            yp, yf = run_p(), run_f()
            diff = float((yp - yf).abs().max()) if isinstance(yp, torch.Tensor) and isinstance(yf, torch.Tensor) \
                else float("nan")
            tp, tf = [], []
            rounds = max(1, min(repeats, 5))
            per = -(-repeats // rounds)
            for r in range(rounds):
                tp += time_calls(run_p, per, warmup if r == 0 else 1)
                tf += time_calls(run_f, per, warmup if r == 0 else 1)
    finally:
        torch.set_num_threads(old_torch)
        _native.set_num_threads(old_lowbit)
    res: dict[str, Any] = {
        "packed_ms": statistics.median(tp) * 1e3, "fp_ms": statistics.median(tf) * 1e3,
        "packed_bytes": weight_bytes(model), "fp_bytes": weight_bytes(fp), "max_abs_diff": diff,
        "threads": threads if threads is not None else _native.get_num_threads() or torch.get_num_threads(),
        "repeats": len(tp), "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    res["speedup"] = res["fp_ms"] / res["packed_ms"]
    if verbose:
        print(f"{'model':<8} {'median ms':>10} {'weights MiB':>12}")
        print(f"{'fp32':<8} {res['fp_ms']:>10.3f} {res['fp_bytes'] / 2**20:>12.2f}")
        print(f"{'packed':<8} {res['packed_ms']:>10.3f} {res['packed_bytes'] / 2**20:>12.2f}")
        print(f"speedup {res['speedup']:.2f}x, weights {res['fp_bytes'] / max(res['packed_bytes'], 1):.1f}x smaller, "
              f"max |diff| {diff:.3g} ({res['repeats']} calls each)")
    return res
