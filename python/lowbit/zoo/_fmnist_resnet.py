"""A small residual CNN for Fashion-MNIST, trained once on first use and cached.

Architecture (data.md, "Reference points"): conv 1->16, three stages of two basic blocks with
widths 16/32/64 (stride 2 and a 1x1 downsample entering stages 2 and 3), global average pool,
linear 64->10. 15 convolutions + 1 linear, 175k parameters, BatchNorm after every conv.

Training is deterministic (seed, fixed data order, 2 threads) and its recipe is hashed into the
cache file name, so changing the recipe or the architecture retrains instead of loading stale
weights.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import fashion_mnist
from ..data._common import atomic_write, cache_dir, recipe_key

log = logging.getLogger("lowbit")
ARCH_VERSION = 1  # bump when the module below changes shape or names


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN; the skip is the identity, or a 1x1 conv+BN when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + skip)


class FmnistResNet(nn.Module):
    """(N, 1, 28, 28) images in [0, 1] -> (N, 10) logits."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w)))
            cin = w
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@dataclass(frozen=True)
class Recipe:
    """How the cached weights were trained; every field goes into the cache key."""

    epochs: int = 2
    batch_size: int = 128
    max_lr: float = 4e-3
    weight_decay: float = 5e-4
    pct_start: float = 0.25
    seed: int = 0
    arch_version: int = ARCH_VERSION


def weights_file(recipe: Recipe = Recipe()) -> Path:
    return cache_dir() / f"fmnist_resnet-{recipe_key(asdict(recipe))}.safetensors"


def train(recipe: Recipe = Recipe(), progress: bool = True) -> tuple[FmnistResNet, dict]:
    """Train from scratch, deterministically: AdamW + OneCycle, no augmentation.

    Returns the model (eval mode) and ``{"test_accuracy": percent, "train_seconds": s}``.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(recipe.seed)
    # Module.to(memory_format=...) works at run time; torch's typed overloads leave it out.
    model = FmnistResNet().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x, y = fashion_mnist("train")
    steps_per_epoch = math.ceil(len(x) / recipe.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.max_lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, recipe.max_lr, epochs=recipe.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=recipe.pct_start,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(recipe.seed)  # the data order, independent of init
    start = time.perf_counter()
    model.train()
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(x), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"fmnist-resnet epoch {epoch + 1}/{recipe.epochs}",
                   disable=not progress, leave=False)  # fmt: skip
        for step in bar:
            idx = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            loss = F.cross_entropy(model(x[idx].contiguous(memory_format=torch.channels_last)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        log.info("fmnist-resnet epoch %d/%d: last loss %.3f, %.0f s", epoch + 1, recipe.epochs,
                 loss.item(), time.perf_counter() - start)  # fmt: skip
    seconds = time.perf_counter() - start
    model = model.to(memory_format=torch.contiguous_format).eval()
    acc = test_accuracy(model)
    log.info("fmnist-resnet trained in %.0f s: %.2f %% test accuracy", seconds, acc)
    return model, {"test_accuracy": acc, "train_seconds": seconds}


@torch.inference_mode()
def test_accuracy(model: nn.Module, batch_size: int = 1000) -> float:
    """Top-1 accuracy in percent over the 10,000 Fashion-MNIST test images."""
    x, y = fashion_mnist("test")
    correct = sum(int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))  # fmt: skip
    return 100.0 * correct / len(x)


def fmnist_resnet(pretrained: bool = True, progress: bool = True) -> FmnistResNet:
    """The Fashion-MNIST ResNet in eval mode; with ``pretrained``, trained weights from the cache.

    The first call trains the model (about 2 minutes on 2 cores) and writes
    ``<cache>/fmnist_resnet-<recipe hash>.safetensors`` atomically; later calls load it.
    Set ``LOWBIT_CACHE`` to move the cache.
    """
    if not pretrained:
        return FmnistResNet().eval()
    from safetensors.torch import load_file, save_file

    path = weights_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # One process trains, the others wait and load its weights: two trainings of the recipe
        # differ in the last bits (thread count, ISA), and every run should measure one model.
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                log.info("fmnist-resnet: no cached weights at %s, training (once)", path)
                trained, info = train(progress=progress and not os.environ.get("LOWBIT_NO_PROGRESS"))
                meta = {k: f"{v:.2f}" for k, v in info.items()} | {"recipe": str(asdict(Recipe()))}
                state = {k: v.contiguous() for k, v in trained.state_dict().items()}
                atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
    model = FmnistResNet()
    model.load_state_dict(load_file(path))
    return model.eval()
