"""Calibration data: batches from the user's loader, and what methods capture from them.

A calibration batch is normalised once into a ``Batch`` (positional args + keyword args of
the model call). Loaders may yield tensors, tuples/lists whose first item is the input, dicts
of keyword arguments, or anything an ``input_fn`` turns into one of those.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lowbit import _native


@dataclasses.dataclass
class Batch:
    """One calibration batch as the model call it stands for: ``model(*args, **kwargs)``,
    ``size`` samples along dim 0, and the loader's labels when it gave (input, label) pairs."""

    args: tuple
    kwargs: dict
    size: int
    labels: torch.Tensor | None = None  # a loader's (input, label) pair keeps its labels (CLADO's CE)

    def tensors(self) -> list[torch.Tensor]:
        """The tensor arguments, positional then keyword."""
        return [t for t in (*self.args, *self.kwargs.values()) if isinstance(t, torch.Tensor)]

    def describe(self) -> str:
        """A short description of the arguments (types and shapes) for error messages."""
        parts = [f"{type(a).__name__}{tuple(a.shape) if isinstance(a, torch.Tensor) else ''}" for a in self.args]
        parts += [f"{k}={tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}" for k, v in self.kwargs.items()]
        return ", ".join(parts)

    def head(self, n: int) -> Batch:
        """The first n samples (every tensor sliced along dim 0)."""
        cut = lambda t: t[:n] if isinstance(t, torch.Tensor) and t.dim() > 0 else t  # noqa: E731
        return Batch(tuple(cut(a) for a in self.args), {k: cut(v) for k, v in self.kwargs.items()}, min(n, self.size),
                     None if self.labels is None else self.labels[:n])


def to_batch(raw: Any, input_fn: Callable[[Any], Any] | None = None) -> Batch:
    """Normalise one loader item into the model call it stands for."""
    item = input_fn(raw) if input_fn is not None else raw
    labels = None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    if isinstance(item, torch.Tensor):
        args, kwargs = (item,), {}
    elif isinstance(item, dict):
        args, kwargs = (), dict(item)
    elif isinstance(item, (tuple, list)) and item:
        # A loader's (input, label) pair: the first item is the input. With input_fn, a tuple
        # is the positional arguments themselves.
        args, kwargs = ((item[0],) if input_fn is None else tuple(item)), {}
        if input_fn is None and len(item) >= 2 and isinstance(item[1], torch.Tensor) and item[1].dim() > 0:
            labels = item[1]
    else:
        raise TypeError(
            f"calibration batch of type {type(raw).__name__} is not a tensor, a tuple/list whose first "
            "item is the input, or a dict of model keyword arguments; pass input_fn=lambda batch: ... "
            "to say how to get the model input from it"
        )
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    if not tensors:
        raise TypeError(f"calibration batch has no tensor input: {type(item).__name__}")
    size = tensors[0].shape[0] if tensors[0].dim() > 0 else 1
    for t in tensors:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"calibration batch contains NaN or Inf (input of shape {tuple(t.shape)})")
    if labels is not None and labels.shape[0] != size:
        labels = None
    return Batch(args, kwargs, int(size), labels)


def collect_batches(
    loader: Iterable,
    *,
    num_samples: int,
    seed: int,
    input_fn: Callable[[Any], Any] | None = None,
    progress: bool = True,
) -> list[Batch]:
    """Up to num_samples calibration samples, in the loader's order under a fixed torch seed.

    The global torch RNG is forked, so a shuffling loader gives the same samples for the same
    seed and the caller's RNG state is left as it was.
    """
    if num_samples is None or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if isinstance(loader, (torch.Tensor, dict)) or not hasattr(loader, "__iter__"):
        raise TypeError(f"calib_loader must be an iterable of batches (e.g. a DataLoader), got {type(loader).__name__}")
    batches: list[Batch] = []
    total = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bar = tqdm(total=num_samples, desc="calibration data", unit="sample", disable=not progress, leave=False)
        for raw in loader:
            b = to_batch(raw, input_fn)
            if total + b.size > num_samples:
                b = b.head(num_samples - total)
            batches.append(b)
            total += b.size
            bar.update(b.size)
            if total >= num_samples:
                break
        bar.close()
    if not batches:
        raise ValueError("calib_loader produced no batches: quantization needs calibration data")
    return batches


def run_model(model: nn.Module, batch: Batch) -> Any:
    """model(*args, **kwargs), with the batch's shape in the error when the model rejects it."""
    try:
        return model(*batch.args, **batch.kwargs)
    except Exception as e:
        raise RuntimeError(f"the model rejected a calibration batch ({batch.describe()}): {e}") from e


def chunks(batches: list[Batch], max_samples: int | None) -> Iterator[Batch]:
    """The first max_samples samples of batches (all of them for None)."""
    left = math.inf if max_samples is None else max_samples
    for b in batches:
        if left <= 0:
            return
        yield b if b.size <= left else b.head(int(left))
        left -= b.size


@contextmanager
def capture(modules: Mapping[str, nn.Module], on_input: Callable | None = None,
            on_output: Callable | None = None) -> Iterator[None]:
    """Hooks calling on_input(name, x) / on_output(name, y) for each module's first input / output."""
    hooks = []
    for name, mod in modules.items():
        if on_input is not None:
            hooks.append(mod.register_forward_pre_hook(lambda m, args, name=name: on_input(name, args[0])))
        if on_output is not None:
            hooks.append(mod.register_forward_hook(lambda m, args, out, name=name: on_output(name, out)))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def accumulate_gram(module: nn.Module, x: torch.Tensor, H: np.ndarray, x2: torch.Tensor | None = None) -> None:
    """H += Gram of the layer's input rows (cross-Gram rows(x)^T rows(x2) when x2 is given).

    Linear: H (K, K). Conv2d: H (groups, K, K) with K = in/groups * kh * kw.
    """
    if isinstance(module, nn.Conv2d) or hasattr(module, "kernel_size"):
        # An nn.Conv2d or a QuantConv2d: duck-typed, both carry the conv geometry attributes.
        conv: Any = module
        _native.conv_gram_accumulate(
            x, H, kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, x2=x2)
    elif x2 is None:
        _native.gram_accumulate(x.reshape(-1, x.shape[-1]), H)
    else:
        _native.cross_gram_accumulate(x.reshape(-1, x.shape[-1]), x2.reshape(-1, x2.shape[-1]), H)


class Reservoir:
    """A seeded, bounded sample of the values a tensor takes over calibration (for ranges)."""

    def __init__(self, capacity: int = 1 << 17, per_batch: int = 1 << 13, seed: int = 0):
        self.capacity, self.per_batch = capacity, per_batch
        self.gen = torch.Generator().manual_seed(seed)
        self.parts: list[torch.Tensor] = []
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: torch.Tensor) -> None:
        """Sample x's values into the pool (ValueError on NaN / Inf); track its min and max."""
        flat = x.detach().reshape(-1).float()
        if not torch.isfinite(flat).all():
            raise ValueError("non-finite activation")
        self.min = min(self.min, float(flat.min()))
        self.max = max(self.max, float(flat.max()))
        if self.count >= self.capacity:
            return
        if flat.numel() > self.per_batch:
            idx = torch.randint(flat.numel(), (self.per_batch,), generator=self.gen)
            flat = flat[idx]
        self.parts.append(flat.clone())
        self.count += flat.numel()

    def values(self) -> torch.Tensor:
        """The pooled values (at most ``capacity``), 1-d float32."""
        return torch.cat(self.parts)[: self.capacity]
