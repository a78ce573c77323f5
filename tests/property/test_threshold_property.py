"""The N2UQ LTQ backward (C++) against its autograd twin in reference.py, for any layout and bit
width (hypothesis): channels, rows and row lengths up to a few 256-element blocks, inputs on
both sides of the segments, floored interval lengths."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit import _native, reference

A_MIN, S1_MIN = 1e-4, 1e-3


@st.composite
def ltq_case(draw):
    bits = draw(st.integers(2, 8))
    C, outer, inner = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 600))
    zero = float(draw(st.integers(0, 2)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = 2**bits - 1
    x = rng.uniform(-0.5, 1.5, (outer * C, inner)).astype(np.float32)
    x[:, :: draw(st.integers(2, 7))] = 0.0  # post-ReLU zeros: runs of one segment
    start = rng.normal(0, 0.05, C).astype(np.float32)
    a = (rng.uniform(0.2, 1.8, (C, n)) / n).astype(np.float32)
    a[rng.random((C, n)) < 0.1] = A_MIN / 10  # floored intervals
    s1 = rng.uniform(0.8, 1.2, C).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)
    return x, gy, start, a, s1, bits, zero


@settings(deadline=None, max_examples=40)
@given(ltq_case())
def test_ltq_backward_matches_reference_autograd(c):
    x, gy, start, a, s1, bits, zero = c
    out_scale = 1.1 / (2**bits - 1)
    kw = dict(zero=zero, a_min=A_MIN, s1_min=S1_MIN)
    grads = _native.ltq_backward(x, gy, start, a, s1, bits, out_scale=out_scale, **kw)
    ts = [torch.tensor(v, requires_grad=True) for v in (x, start, a, s1, np.float32([out_scale]))]
    reference.ltq_torch(*ts, bits, **kw).backward(torch.from_numpy(gy))
    for name, mine, t in zip(("x", "start", "a", "in_scale"), grads, ts):
        ref = t.grad.numpy()
        np.testing.assert_allclose(mine, ref, rtol=2e-4, atol=2e-4 * (np.abs(ref).max() + 1), err_msg=name)
    ref = ts[4].grad.item()
    np.testing.assert_allclose(grads[4], ref, rtol=1e-4, atol=1e-5 * (abs(ref) + np.abs(gy).sum()))
