"""Shared fixtures: seeded data, ISA levels, thread counts, tiny deterministic models and loaders.

Everything here is deterministic: models are built under a fixed torch seed inside
``torch.random.fork_rng`` (the caller's RNG state is left alone), data comes from fixed seeds.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn as nn

from lowbit import _native

# --- numbers -------------------------------------------------------------------------------

ALL_BITS = (2, 3, 4, 5, 6, 7, 8)
ISA_LEVELS = ("scalar", "avx2", "avx512", "avx512vnni", "amx")


def supported_isas() -> list[str]:
    """The ISA levels this machine can run, lowest first (every level up to the detected one)."""
    return list(ISA_LEVELS[: ISA_LEVELS.index(_native.detected_isa()) + 1])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20260101)


@pytest.fixture(params=[2, 3, 4, 8])
def bits(request) -> int:
    return request.param


@pytest.fixture(params=supported_isas())
def isa(request):
    """Caps the kernels at each supported ISA level in turn; resets to the default after."""
    _native.set_isa(request.param)
    try:
        assert _native.active_isa() == request.param
        yield request.param
    finally:
        _native.set_isa(None)


def run_with_threads(fn: Callable[[], Any], counts: tuple[int, ...] = (1, 2)) -> dict[int, Any]:
    """fn() under each thread count of lowbit's kernels; the count goes back to the default
    (0 = OpenMP's) afterwards, whatever happens."""
    out = {}
    try:
        for n in counts:
            _native.set_num_threads(n)
            assert _native.get_num_threads() == n
            out[n] = fn()
    finally:
        _native.set_num_threads(0)
    return out


@pytest.fixture(scope="session")
def threads() -> Callable[..., dict[int, Any]]:
    """``threads(fn)`` -> {1: fn() with 1 thread, 2: fn() with 2 threads} (session-scoped so
    hypothesis tests may use it)."""
    return run_with_threads


# --- tiny models -------------------------------------------------------------------------------


class TinyCNN(nn.Module):
    """conv+BN+ReLU stem, a grouped conv+BN, a depthwise conv+BN, a pointwise conv in a residual
    branch, global pooling and a linear head. K (input size per output) of each layer:
    stem 3*9=27, gconv 4*9=36, dw 9, pw 16, head 16."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.gconv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn3 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.stem(x)))
        x = torch.relu(self.bn2(self.gconv(x)))
        y = self.pw(torch.relu(self.bn3(self.dw(x))))
        x = torch.relu(x + y)  # residual add
        return self.head(x.mean((2, 3)))


CNN_LAYERS = ["stem", "gconv", "dw", "pw", "head"]  # execution order
CNN_INPUT = (3, 8, 8)


class TinyMLP(nn.Module):
    """fc1 -> ReLU -> fc2 -> Tanh -> fc3: fc3 reads a signed activation."""

    def __init__(self, d_in: int = 16, hidden: int = 32, d_out: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


MLP_LAYERS = ["fc1", "fc2", "fc3"]
MLP_INPUT = (16,)


def make_cnn(seed: int = 0) -> TinyCNN:
    """A TinyCNN in eval mode with non-trivial BN statistics (so folding changes the weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = TinyCNN()
        for bn in (m.bn1, m.bn2, m.bn3):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.normal_(0, 0.2)
    return m.eval()


def make_mlp(seed: int = 0) -> TinyMLP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = TinyMLP()
    return m.eval()


def make_loader(input_shape: tuple[int, ...], batches: int = 4, batch_size: int = 8, seed: int = 1,
                num_classes: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A calibration loader: a list of (x, y) tuples."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, *input_shape, generator=g), torch.randint(num_classes, (batch_size,), generator=g))
            for _ in range(batches)]


@pytest.fixture
def cnn() -> TinyCNN:
    return make_cnn()


@pytest.fixture
def mlp() -> TinyMLP:
    return make_mlp()


@pytest.fixture
def cnn_loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return make_loader(CNN_INPUT)


@pytest.fixture
def mlp_loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return make_loader(MLP_INPUT)


def model_digest(model: nn.Module) -> tuple[str, list[type], bool]:
    """What "the input model is untouched" compares: a hash of the state dict (names, dtypes,
    shapes, bytes), the module types in order, and the training flag."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str((v.dtype, tuple(v.shape))).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest(), [type(m) for m in model.modules()], model.training


@pytest.fixture(scope="session")
def tiny():
    """The factories and helpers above, for tests (conftest is not importable as a module)."""
    import types

    return types.SimpleNamespace(
        make_cnn=make_cnn, make_mlp=make_mlp, make_loader=make_loader, digest=model_digest,
        TinyCNN=TinyCNN, TinyMLP=TinyMLP, CNN_LAYERS=CNN_LAYERS, MLP_LAYERS=MLP_LAYERS,
        CNN_INPUT=CNN_INPUT, MLP_INPUT=MLP_INPUT,
    )
