"""nearest(preserve_sums=True): each unit's code sum is the integer nearest its float sum, by the
least change to the nearest codes (checked against brute force on short rows)."""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.methods.nearest import NearestConfig, sum_preserving_codes
from lowbit.quantizers import expand_units, round_nearest, weight_grid


@st.composite
def rows(draw, max_cols=8):
    """(w, bits, granularity, group size): a small weight and a grid that fits it."""
    R = draw(st.integers(1, 4))
    K = draw(st.sampled_from([k for k in range(1, max_cols + 1)]))
    seed = draw(st.integers(0, 2**31))
    w = torch.from_numpy(np.random.default_rng(seed).normal(size=(R, K)).astype(np.float32))
    if draw(st.booleans()):
        w = w + 2.0  # one-signed rows: the grid's zero point sits at an end
    bits = draw(st.integers(2, 8))
    gran = draw(st.sampled_from(["tensor", "channel", "group"]))
    gs = draw(st.sampled_from([g for g in range(1, K + 1) if K % g == 0])) if gran == "group" else None
    return w, bits, gran, gs


def targets(w, scale, zero, bits):
    R, K = w.shape
    return (w / expand_units(scale, R, K) + expand_units(zero, R, K)).clamp(0, (1 << bits) - 1)


@settings(deadline=None, max_examples=200)
@given(rows())
def test_sums_are_restored_by_the_least_change(case):
    w, bits, gran, gs = case
    scale, zero = weight_grid(w, bits, gran, gs, symmetric=False)
    near = round_nearest(w, scale, zero, bits)
    got = sum_preserving_codes(w, scale, zero, bits, near)
    t = targets(w, scale, zero, bits).double()
    R, K = w.shape
    G = scale.shape[1]
    assert got.dtype == torch.uint8 and int(got.max()) <= (1 << bits) - 1
    assert ((got.double() - t).abs() < 1 + 1e-6).all()  # every code stays a neighbour of its target
    for r, g in itertools.product(range(R), range(G)):
        cols = slice(g * (K // G), (g + 1) * (K // G))
        tr, gr = t[r, cols], got[r, cols].double()
        want = torch.round(tr.sum())
        assert gr.sum() == want
        # Brute force: of the codes with neighbours floor/ceil of each target and the wanted
        # sum, none is closer (squared distance) to the targets than the returned one.
        options = [sorted({float(np.floor(v)), float(np.ceil(v))}) for v in tr.tolist()]
        best = min(sum((c - v) ** 2 for c, v in zip(combo, tr.tolist()))
                   for combo in itertools.product(*options) if sum(combo) == float(want))
        assert float(((gr - tr) ** 2).sum()) <= best + 1e-6


def test_long_rows_reach_the_nearest_integer_sum():
    """K = 3x3x512 at 8 bits, one-signed rows: float32 sums of that length lose the fraction
    that decides the deficit; the sums are checked in float64."""
    w = torch.from_numpy(np.random.default_rng(0).normal(2.0, 1.0, size=(64, 4608)).astype(np.float32))
    scale, zero = weight_grid(w, 8, "channel", None, symmetric=False)
    got = sum_preserving_codes(w, scale, zero, 8, round_nearest(w, scale, zero, 8)).double()
    t = targets(w, scale, zero, 8).double()
    assert ((got.sum(1) - t.sum(1)).abs() <= 0.5 + 1e-9).all()


def test_preserve_sums_keeps_filter_responses_to_constant_inputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, groups=16), nn.ReLU(),
                        nn.Flatten(), nn.LazyLinear(4)).eval()
    x = torch.rand(32, 3, 8, 8)
    net(x)
    calib = [x[i:i + 8] for i in range(0, 32, 8)]
    kw = dict(w_bits=3, num_samples=32, progress=False, keep_first_last=None)
    plain = lowbit.quantize(net, calib, "nearest", **kw)
    kept = lowbit.quantize(net, calib, NearestConfig(preserve_sums=True), **kw)
    fp = plain.lowbit_fp.model
    for name in ("0", "2"):
        q = kept.get_submodule(name)
        w = fp.get_submodule(name).weight.detach().flatten(1)
        R, K = w.shape
        s, z = expand_units(q.scale, R, K), expand_units(q.zero, R, K)
        clipped = (targets(w, q.scale, q.zero, q.w_bits) - z) * s  # the float weight within the grid's range
        drift = {k: (m.get_submodule(name).weight.detach().flatten(1).sum(1) - clipped.sum(1)).abs()
                 for k, m in (("plain", plain), ("kept", kept))}
        assert (drift["kept"] <= q.scale.flatten() / 2 + 1e-5).all()
        assert drift["kept"].sum() < drift["plain"].sum() / 2
    with torch.no_grad():  # nothing else changed: the grid and the report
        assert torch.equal(kept.get_submodule("2").scale, plain.get_submodule("2").scale)
    assert kept.lowbit_report.meta["configs"][0]["preserve_sums"] is True
