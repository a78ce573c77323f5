"""The reconstruction runs restart each network from the cached input of an nn.Sequential child
(adaround._Frontier) instead of from the network input: the same codes, far fewer forwards."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from _digits import Block, loader, train

import lowbit
from lowbit import calib
from lowbit.methods import adaround


class Halve(nn.Module):
    """In place (in eval mode; training needs the input), and not idempotent: a cached input it
    worked on would show."""

    def forward(self, x):
        return x * 0.5 if self.training else x.mul_(0.5)


class Tap(nn.Identity):
    """Counts the forwards that start at the network input (both networks' copies)."""

    calls = 0

    def forward(self, x):
        Tap.calls += 1
        return x


class SeqNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(Tap(), nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            Block(8),
            nn.Sequential(Halve(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
            Block(16),
        )
        self.fc = nn.Linear(16, 10)  # outside any Sequential: reached by whole-network runs

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def seqnet():
    return train(SeqNet(), epochs=2)


def codes(q):
    return {n: m.codes.clone() for n, m in q.named_modules() if isinstance(getattr(m, "codes", None), torch.Tensor)}


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("method,mode", [("adaround", "layer"), ("adaround", "block"), ("aquant", "block")])
def test_frontier_gives_the_same_codes_with_fewer_forwards(seqnet, monkeypatch, method, mode):
    cfg = {"iters": 40, "mode": mode} if method == "adaround" else {"iters": 40}
    kw = dict(w_bits=3, a_bits=4, num_samples=128, keep_first_last=None, progress=False, seed=1, config=cfg)
    Tap.calls = 0
    fast = lowbit.quantize(seqnet, loader(), method, **kw)
    fast_calls = Tap.calls
    monkeypatch.setattr(adaround, "_samples", lambda ctx, n: list(calib.chunks(ctx.batches, n)))
    Tap.calls = 0
    slow = lowbit.quantize(seqnet, loader(), method, **kw)
    a, b = codes(fast), codes(slow)
    assert a.keys() == b.keys() and len(a) == 7
    for n in a:
        assert torch.equal(a[n], b[n]), n
    assert fast_calls < Tap.calls, (fast_calls, Tap.calls)  # (the saving grows with depth)


@pytest.mark.usefixtures("one_torch_thread")
def test_frontier_without_room_runs_from_the_network_input(seqnet, monkeypatch):
    kw = dict(w_bits=3, a_bits=4, num_samples=128, keep_first_last=None, progress=False, seed=1,
              config={"iters": 20, "mode": "layer"})
    monkeypatch.setattr(adaround, "FRONTIER_LIMIT_BYTES", 0)
    Tap.calls = 0
    capped = codes(lowbit.quantize(seqnet, loader(), "adaround", **kw))
    capped_calls = Tap.calls
    monkeypatch.setattr(adaround, "_samples", lambda ctx, n: list(calib.chunks(ctx.batches, n)))
    Tap.calls = 0
    plain = codes(lowbit.quantize(seqnet, loader(), "adaround", **kw))
    assert capped_calls == Tap.calls
    assert all(torch.equal(capped[n], plain[n]) for n in plain)
