"""Bundled real tasks: a model, its calibration data and how to score it, all offline.

``load_task(name)`` returns a :class:`Task`; ``task.evaluate(model)`` scores any model of the
task (FP32, fake-quant or packed) and reports its agreement with the FP32 model:

==============  ========================================  ==================================
name            metric                                    agreement
==============  ========================================  ==================================
fmnist-resnet   Fashion-MNIST test accuracy (%)            top-1 agreement with FP32 (%)
mobilenet_v2    Fashion-MNIST linear-probe accuracy (%)    top-1 agreement on real photos (%)
minilm          WordNet gloss retrieval Recall@1 (%)       mean cosine to FP32 embeddings x 100
==============  ========================================  ==================================

``quick=True`` shrinks calibration and evaluation sets for tests and notebooks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import fashion_mnist, photos, wordnet_retrieval
from ._fmnist_resnet import FmnistResNet, fmnist_resnet
from ._minilm import SentenceEncoder, minilm, tokenize
from ._mobilenet_v2 import MobileNetV2, mobilenet_v2

__all__ = ["FmnistResNet", "MobileNetV2", "SentenceEncoder", "Task", "fmnist_resnet", "list_models",
           "load_task", "minilm", "mobilenet_v2"]  # fmt: skip


@dataclasses.dataclass
class Task:
    """A model with its calibration data and scorer.

    ``evaluate(model)`` returns at least ``{"metric": float, "agreement": float}``, both in
    percent; ``quantize_kwargs`` are the options ``lowbit.quantize`` needs for this model.
    """

    name: str
    model: nn.Module
    calib_loader: list
    metric_name: str
    evaluate: Callable[[nn.Module], dict[str, float]]
    example_inputs: tuple
    quantize_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def list_models() -> list[str]:
    """Names accepted by :func:`load_task`."""
    return list(_TASKS)


def load_task(name: str, *, seed: int = 0, num_calib: int = 1024, batch_size: int = 32, quick: bool = False) -> Task:
    """Load a bundled task; ``seed`` picks the calibration samples (the model is fixed).

    Raises ``lowbit.data.AssetMissing`` (with the install command) when a model or data set
    is not installed.
    """
    key = name.lower().replace("_", "-")
    builders = {k.replace("_", "-"): v for k, v in _TASKS.items()}
    if key not in builders:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    if num_calib < 1 or batch_size < 1:
        raise ValueError(f"num_calib and batch_size must be positive, got {num_calib} and {batch_size}")
    return builders[key](seed=seed, num_calib=num_calib, batch_size=batch_size, quick=quick)


def _batched(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@torch.inference_mode()
def _outputs(model: Callable[..., torch.Tensor], inputs: list) -> torch.Tensor:
    """Concatenated outputs over a list of positional inputs or keyword dicts."""
    outs = [model(**x) if isinstance(x, dict) else model(x) for x in inputs]
    return torch.cat(outs)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return 100.0 * float((a.argmax(1) == b.argmax(1)).float().mean())


# --- fmnist-resnet ------------------------------------------------------------------------------


def _fmnist_task(*, seed: int, num_calib: int, batch_size: int, quick: bool) -> Task:
    model = fmnist_resnet()
    x, y = fashion_mnist("train")
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: min(num_calib, 256) if quick else num_calib]
    calib = [(x[pick[s]], y[pick[s]]) for s in _batched(len(pick), batch_size)]
    xt, yt = fashion_mnist("test")
    if quick:
        xt, yt = xt[:2000], yt[:2000]
    chunks = [xt[s] for s in _batched(len(xt), 500)]
    fp_logits = _outputs(model, chunks)

    def evaluate(m: nn.Module) -> dict[str, float]:
        logits = _outputs(m.eval(), chunks)
        return {"metric": 100.0 * float((logits.argmax(1) == yt).float().mean()),
                "agreement": _agreement(logits, fp_logits)}  # fmt: skip

    return Task("fmnist-resnet", model, calib, "accuracy", evaluate, (xt[:1],))


# --- mobilenet_v2 -------------------------------------------------------------------------------

PROBE_SIZE = 64  # Fashion-MNIST upsampled to 64x64 RGB for the linear probe


def _probe_images(x: torch.Tensor) -> torch.Tensor:
    """Fashion-MNIST (N, 1, 28, 28) in [0, 1] -> ImageNet-normalised (N, 3, 64, 64)."""
    from ..data import IMAGENET_MEAN, IMAGENET_STD

    up = F.interpolate(x, size=(PROBE_SIZE, PROBE_SIZE), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (up - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _mobilenet_task(*, seed: int, num_calib: int, batch_size: int, quick: bool) -> Task:
    """Photos have no ImageNet labels, so two scores: top-1 agreement with FP32 on real photos,
    and the accuracy of a logistic-regression probe fitted once on FP32 features of Fashion-MNIST.
    ``logit_error`` is ||logits - FP32 logits|| / ||FP32 logits|| on the photos: continuous,
    so it ranks two quantizations where 128 crops of agreement are too coarse."""
    from sklearn.linear_model import LogisticRegression

    model = mobilenet_v2()
    size = 160 if quick else 224
    calib_x = photos("calib", size=size, seed=seed, n=min(num_calib, 64) if quick else num_calib)
    calib = [calib_x[s] for s in _batched(len(calib_x), batch_size)]
    eval_x = photos("eval", size=size, seed=0, n=128 if quick else 512)
    eval_chunks = [eval_x[s] for s in _batched(len(eval_x), 64)]
    fp_logits = _outputs(model, eval_chunks)

    n_probe = 1000 if quick else 4000
    xtr, ytr = fashion_mnist("train")
    xte, yte = fashion_mnist("test")
    g = torch.Generator().manual_seed(0)
    tr_idx = torch.randperm(len(xtr), generator=g)[:n_probe]
    train_chunks = [_probe_images(xtr[tr_idx[s]]) for s in _batched(n_probe, 250)]
    test_chunks = [_probe_images(xte[s]) for s in _batched(n_probe // 2, 250)]
    features = lambda m, chunks: _outputs(lambda t: m.forward_features(t), chunks)  # noqa: E731
    probe = LogisticRegression(max_iter=2000, C=0.5)
    probe.fit(features(model, train_chunks).numpy(), ytr[tr_idx].numpy())

    def evaluate(m: nn.Module) -> dict[str, float]:
        m.eval()
        pred = probe.predict(features(m, test_chunks).numpy())
        acc = 100.0 * float((torch.from_numpy(pred) == yte[: n_probe // 2]).float().mean())
        logits = _outputs(m, eval_chunks)
        return {"metric": acc, "agreement": _agreement(logits, fp_logits),
                "logit_error": float((logits - fp_logits).norm() / fp_logits.norm())}  # fmt: skip

    return Task("mobilenet_v2", model, calib, "probe accuracy", evaluate, (eval_x[:1],))


# --- minilm -------------------------------------------------------------------------------------


def _minilm_task(*, seed: int, num_calib: int, batch_size: int, quick: bool) -> Task:
    model = minilm()
    n_calib = min(num_calib, 128) if quick else num_calib
    sentences, glosses = wordnet_retrieval(n=(n_calib + 1) // 2, seed=seed, split="calib")
    texts = [t for pair in zip(sentences, glosses) for t in pair][:n_calib]
    calib = [tokenize(texts[s]) for s in _batched(len(texts), batch_size)]
    n_eval = 200 if quick else 1000
    sentences, glosses = wordnet_retrieval(n=n_eval, seed=0, split="eval")
    inputs = [tokenize(sentences[s]) for s in _batched(n_eval, 100)] + [tokenize(glosses[s]) for s in _batched(n_eval, 100)]
    fp_emb = _outputs(model, inputs)

    def evaluate(m: nn.Module) -> dict[str, float]:
        emb = _outputs(m.eval(), inputs)
        sims = emb[:n_eval] @ emb[n_eval:].T  # sentence i belongs to gloss i
        rank = (sims > sims.diagonal().unsqueeze(1)).sum(1)  # how many glosses score higher
        return {"metric": 100.0 * float((rank == 0).float().mean()),
                "mrr": float((1.0 / (rank + 1).float()).mean()),
                "agreement": 100.0 * float(F.cosine_similarity(emb, fp_emb, dim=1).mean())}  # fmt: skip

    example = tokenize(["a quantized sentence encoder"])
    return Task("minilm", model, calib, "Recall@1", evaluate, (example["input_ids"], example["attention_mask"]),
                {"filter_fn": lambda name, mod: isinstance(mod, (nn.Linear, nn.Embedding))})


_TASKS: dict[str, Callable[..., Task]] = {
    "fmnist-resnet": _fmnist_task,
    "mobilenet_v2": _mobilenet_task,
    "minilm": _minilm_task,
}
