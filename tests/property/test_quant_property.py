"""Properties of the C++ quant entries that must hold for any input (hypothesis).

Inputs are finite float32 matrices with |x| <= 1e4 (no subnormals: a weight or activation of
1e-40 is not a real input, and a grid fitted to one has a subnormal scale whose products lose
the relative precision these exact properties rely on).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lowbit import _native

SETTINGS = settings(deadline=None, max_examples=50)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32)


@st.composite
def matrices(draw, max_rows=6, max_cols=24):
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    return draw(hnp.arrays(np.float32, (rows, cols), elements=finite))


@st.composite
def case(draw):
    """(x, bits, symmetric, rows, groups): a matrix and a granularity that fits it."""
    x = draw(matrices())
    bits = draw(st.integers(2, 8))
    symmetric = draw(st.booleans())
    gran = draw(st.sampled_from(["tensor", "channel", "group"]))
    rows = 1 if gran == "tensor" else x.shape[0]
    divisors = [g for g in range(1, x.shape[1] + 1) if x.shape[1] % g == 0]
    groups = draw(st.sampled_from(divisors)) if gran == "group" else 1
    return x, bits, symmetric, rows, groups


def lp_error(x, s, z, bits, p=2.4):
    fq = _native.fake_quantize(x, s, z, bits)
    return float(np.sum(np.abs(x.astype(np.float64) - fq.astype(np.float64)) ** p))


def expand(p, shape):
    R, G = p.shape
    return np.broadcast_to(np.repeat(p, shape[1] // G, axis=1), shape)


@SETTINGS
@given(case())
def test_fake_quantize_is_idempotent(c):
    x, bits, symmetric, rows, groups = c
    s, z = _native.lp_range_search(x, bits, symmetric=symmetric, rows=rows, groups=groups)
    fq = _native.fake_quantize(x, s, z, bits)
    np.testing.assert_array_equal(_native.fake_quantize(fq, s, z, bits), fq)
    # and the codes of a grid point are the codes it came from
    q = _native.quantize(x, s, z, bits)
    np.testing.assert_array_equal(_native.quantize(fq, s, z, bits), q)
    np.testing.assert_array_equal(_native.dequantize(q, s, z, bits), fq)


@SETTINGS
@given(matrices(), st.integers(2, 8), st.data())
def test_codes_within_range_for_any_grid(x, bits, data):
    """Whatever the (positive) scale and the zero point in 0..2^b-1: codes in 0..2^b-1."""
    R = data.draw(st.sampled_from([1, x.shape[0]]))
    s = data.draw(hnp.arrays(np.float32, (R, 1), elements=st.floats(2.0**-10, 2.0**10, width=32)))
    z = data.draw(hnp.arrays(np.float32, (R, 1), elements=st.integers(0, 2**bits - 1).map(float)))
    q = _native.quantize(x, s, z, bits)
    assert q.dtype == np.uint8 and q.shape == x.shape
    assert int(q.max()) <= 2**bits - 1


@SETTINGS
@given(case())
def test_range_search_never_worse_than_minmax(c):
    """The search's first candidate is min-max, so in its own norm (Lp, p = 2.4) it can only
    improve on it. The kernel compares powf(e, 2.4f) sums, this test double pow: a relative
    slack of 1e-6 covers that difference (see tests/unit/test_quant.py)."""
    x, bits, symmetric, rows, groups = c
    s, z = _native.lp_range_search(x, bits, symmetric=symmetric, rows=rows, groups=groups)
    s0, z0 = _native.lp_range_search(x, bits, symmetric=symmetric, rows=rows, groups=groups, p=0)
    # unit by unit: each unit's search is independent
    fq, fq0 = _native.fake_quantize(x, s, z, bits), _native.fake_quantize(x, s0, z0, bits)
    e = np.abs(x.astype(np.float64) - fq) ** 2.4
    e0 = np.abs(x.astype(np.float64) - fq0) ** 2.4
    G = groups
    per = e.reshape(x.shape[0], G, -1).sum(2)
    per0 = e0.reshape(x.shape[0], G, -1).sum(2)
    if rows == 1:
        per, per0 = per.sum(0), per0.sum(0)
    assert np.all(per <= per0 * (1 + 1e-6) + 1e-30), (per, per0)


@SETTINGS
@given(case())
def test_fake_quant_error_at_most_half_a_step_inside_the_range(c):
    """Inside the grid's range [(0 - z) s, (2^b - 1 - z) s], rounding to nearest moves a value by
    at most s/2. Float slack: x / s and (q - z) * s are each rounded once (relative 2^-24 of a
    value at most max(|x|, 2^b s)), so 1e-6 of that magnitude on top of s/2 is ample."""
    x, bits, symmetric, rows, groups = c
    s, z = _native.lp_range_search(x, bits, symmetric=symmetric, rows=rows, groups=groups)
    fq = _native.fake_quantize(x, s, z, bits)
    S, Z = expand(s, x.shape).astype(np.float64), expand(z, x.shape).astype(np.float64)
    lo, hi = (0 - Z) * S, (2**bits - 1 - Z) * S
    inside = (x >= lo) & (x <= hi)
    err = np.abs(x.astype(np.float64) - fq.astype(np.float64))
    slack = 1e-6 * np.maximum(np.abs(x), 2**bits * S)
    assert np.all(err[inside] <= (S / 2 + slack)[inside])
    # outside it, the value lands on the nearest end of the grid
    qmax = 2**bits - 1
    q = _native.quantize(x, s, z, bits)
    assert np.all(q[x < lo] == 0) and np.all(q[x > hi] == qmax)


@SETTINGS
@given(case())
def test_minmax_grid_covers_the_data(c):
    """With p <= 0 the range is [min(x, 0), max(x, 0)] and no value is clipped by more than half
    a step: asymmetric, the rounded zero point shifts the grid by at most s/2; symmetric, the top
    level is (2^(b-1) - 1) s = amax - s/2. So every value is within s/2 of the grid."""
    x, bits, symmetric, rows, groups = c
    s, z = _native.lp_range_search(x, bits, symmetric=symmetric, rows=rows, groups=groups, p=0)
    fq = _native.fake_quantize(x, s, z, bits)
    S = expand(s, x.shape).astype(np.float64)
    slack = 1e-6 * np.maximum(np.abs(x), 2**bits * S)
    assert np.all(np.abs(x.astype(np.float64) - fq) <= S / 2 + slack)


@SETTINGS
@given(case())
def test_thread_count_invariance(threads, c):
    x, bits, symmetric, rows, groups = c
    x = np.tile(x, (8, 4))  # enough units and rows for several parallel chunks
    rows = 1 if rows == 1 else x.shape[0]

    def run():
        s, z = _native.lp_range_search(x, bits, symmetric=symmetric, rows=rows, groups=groups)
        return s, z, _native.quantize(x, s, z, bits), _native.fake_quantize(x, s, z, bits)

    res = threads(run)
    for a, b in zip(res[1], res[2]):
        np.testing.assert_array_equal(a, b)
