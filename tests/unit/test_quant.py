"""Every quant entry of the C++ core (through ``lowbit._native``) against its NumPy twin in
``lowbit.reference``.

Tolerances, and why:
- quantize (codes): exact. Same float32 division, round-half-to-even and clamp on both sides.
- dequantize / fake_quantize: bit-equal. ``(q - z) * s`` is one float32 subtraction (exact for
  integers < 2^24) and one rounded multiplication on both sides; the build uses
  -ffp-contract=off, so no FMA can change the rounding.
- lp_range_search: the zero point is compared exactly where both pick the same candidate, and
  the candidate itself through its Lp error: the kernel sums ``powf(e, 2.4f)`` (float pow, and
  p rounded to float: 2.4f - 2.4 ~ 1e-7, i.e. a relative change of |ln e| * 1e-7 per term) into
  a double, the reference ``e ** 2.4`` in double. Two candidates whose errors agree to ~1e-6
  may therefore be ordered differently; the chosen one's error (evaluated in double) must equal
  the reference's best to 1e-6 relative.
- hessian_loss: the kernel forms dW @ H in float32 (Eigen) and the final dot in double; the
  reference is all double. |error| <= K * eps32 * (|dW| |H| |dW|) per row (the standard bound
  for a length-K float32 dot product), used with a factor 2 of margin.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch

from lowbit import _native, reference
from lowbit.quantizers import dequantize_codes

ALL_BITS = (2, 3, 4, 5, 6, 7, 8)
EPS32 = float(np.finfo(np.float32).eps)

# ragged shapes: 1x1, a single row, a single column, odd sizes, and one with many groups
SHAPES = [(1, 1), (1, 13), (11, 1), (7, 33), (5, 64)]


def units(shape, gran):
    """(rows, groups) of the scale for a granularity on x of `shape`."""
    r, c = shape
    groups = next(g for g in (4, 3, 13, 1) if c % g == 0 and g <= c)
    return {"tensor": (1, 1), "channel": (r, 1), "group": (r, groups), "tensor_group": (1, groups)}[gran]


GRANS = ["tensor", "channel", "group", "tensor_group"]


def sample(rng, shape, outliers=True):
    """Gaussian values with a few outliers and exact zeros (both matter to the range search)."""
    x = rng.standard_normal(shape).astype(np.float32)
    if outliers and x.size > 4:
        flat = x.reshape(-1)
        flat[rng.integers(0, x.size, 2)] *= 6
        flat[rng.integers(0, x.size, 2)] = 0
    return x


def unit_lp_errors(x, s, z, bits, p):
    """sum |x - fq(x)|^p per (R, G) unit, in double, with the reference's fake-quant."""
    R, G = s.shape
    fq = reference.fake_quantize(x, s, z, bits)
    e = np.abs(x.astype(np.float64) - fq.astype(np.float64)) ** p
    gs = x.shape[1] // G
    per = e.reshape(x.shape[0], G, gs).sum(axis=2)  # (rows, G)
    return per.sum(axis=0, keepdims=True) if R == 1 else per


# --- quantize / dequantize / fake_quantize -------------------------------------------------


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("gran", GRANS)
def test_quant_entries_match_reference(rng, bits, gran):
    for shape in SHAPES:
        for symmetric in (False, True):
            x = sample(rng, shape)
            rows, groups = units(shape, gran)
            s, z = _native.lp_range_search(x, bits, symmetric=symmetric, rows=rows, groups=groups)
            assert s.shape == z.shape == (rows, groups)
            assert np.all(s > 0) and np.all(z == np.round(z)) and np.all((z >= 0) & (z <= 2**bits - 1))
            if symmetric:
                assert np.all(z == 2 ** (bits - 1))

            q = _native.quantize(x, s, z, bits)
            assert q.dtype == np.uint8 and q.shape == shape
            np.testing.assert_array_equal(q, reference.quantize(x, s, z, bits))  # integer path: exact
            assert int(q.max()) <= 2**bits - 1

            d = _native.dequantize(q, s, z, bits)
            assert d.dtype == np.float32
            np.testing.assert_array_equal(d, reference.dequantize(q, s, z, bits))  # bit-equal

            fq = _native.fake_quantize(x, s, z, bits)
            np.testing.assert_array_equal(fq, reference.fake_quantize(x, s, z, bits))
            np.testing.assert_array_equal(fq, d)  # fake_quantize == dequantize(quantize(x))


_ISA_X = sample(np.random.default_rng(7), (6, 40))


@functools.cache
def _reference_search(bits):
    return reference.lp_range_search(_ISA_X, bits, rows=6)


def test_quant_entries_every_isa_level(isa):
    """The same bits at every ISA level the machine supports."""
    rng = np.random.default_rng(3)
    x = sample(rng, (9, 40))
    for bits in ALL_BITS:
        s = rng.uniform(0.01, 0.5, (9, 4)).astype(np.float32)
        z = rng.integers(0, 2**bits, (9, 4)).astype(np.float32)
        q = _native.quantize(x, s, z, bits)
        np.testing.assert_array_equal(q, reference.quantize(x, s, z, bits))
        np.testing.assert_array_equal(_native.dequantize(q, s, z, bits), reference.dequantize(q, s, z, bits))
        np.testing.assert_array_equal(_native.fake_quantize(x, s, z, bits), reference.fake_quantize(x, s, z, bits))
        s2, z2 = _native.lp_range_search(_ISA_X, bits, rows=6)
        rs, rz = _reference_search(bits)
        np.testing.assert_allclose(unit_lp_errors(_ISA_X, s2, z2, bits, 2.4), unit_lp_errors(_ISA_X, rs, rz, bits, 2.4),
                                   rtol=1e-6)


def test_round_half_to_even_and_saturation():
    # s = 0.25 and x = (k + 0.5) * s are exact in float32: x / s lands exactly on .5 ties.
    s = np.array([[0.25]], np.float32)
    z = np.array([[8]], np.float32)
    k = np.arange(-6, 6, dtype=np.float32)
    x = ((k + 0.5) * 0.25).reshape(1, -1)
    q = _native.quantize(x, s, z, 4)
    np.testing.assert_array_equal(q, reference.quantize(x, s, z, 4))
    np.testing.assert_array_equal(q[0].astype(int), np.clip(np.round(k + 0.5) + 8, 0, 15))  # half to even
    assert q[0, list(k).index(0.0)] == 8 and q[0, list(k).index(1.0)] == 10  # 0.5 -> 0, 1.5 -> 2
    # far outside the grid, including infinities: saturate at 0 / 2^b - 1
    big = np.array([[-np.inf, -1e30, -3e4, 3e4, 1e30, np.inf]], np.float32)
    for bits in ALL_BITS:
        zb = np.array([[2 ** (bits - 1)]], np.float32)
        qb = _native.quantize(big, s, zb, bits)
        np.testing.assert_array_equal(qb, reference.quantize(big, s, zb, bits))
        assert qb[0].tolist() == [0, 0, 0, 2**bits - 1, 2**bits - 1, 2**bits - 1]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_random_grids_match_reference(rng, bits):
    """Scales and zero points not produced by the range search (any positive scale, any integer
    zero in 0..2^b-1) still follow the formula exactly. (quant.h: "z is an integer stored as
    float"; with a fractional z the kernel's fake_quantize keeps the fraction while
    dequantize(quantize(x)) truncates it, so fractional zeros are outside the contract.)"""
    x = (rng.standard_normal((17, 24)) * rng.uniform(0.01, 100)).astype(np.float32)
    for R, G in [(1, 1), (17, 1), (17, 6), (1, 8)]:
        s = np.exp(rng.uniform(-6, 3, (R, G))).astype(np.float32)
        for zz in (np.round(rng.uniform(0, 2**bits - 1, (R, G))).astype(np.float32),
                   np.full((R, G), 2 ** (bits - 1), np.float32)):
            q = _native.quantize(x, s, zz, bits)
            np.testing.assert_array_equal(q, reference.quantize(x, s, zz, bits))
            np.testing.assert_array_equal(_native.fake_quantize(x, s, zz, bits), reference.fake_quantize(x, s, zz, bits))
            np.testing.assert_array_equal(_native.dequantize(q, s, zz, bits), reference.dequantize(q, s, zz, bits))


@pytest.mark.parametrize("z", [-1500.0, 1100.0])
def test_zero_point_outside_code_range_follows_formula_or_is_refused(z):
    """quant.h: q = clamp(round(x / s) + z, 0, 2^b - 1) for any float z. A zero point far outside
    0..2^b-1 must either follow that formula (as the reference does) or be refused naming zero;
    silently giving another code is not acceptable."""
    s = np.array([[0.01]], np.float32)
    zz = np.array([[z]], np.float32)
    x = (np.array([[1600.0, -1100.0, 16.0, -900.0]], np.float32) * 0.01).astype(np.float32)
    try:
        q = _native.quantize(x, s, zz, 8)
    except ValueError as e:
        assert "zero" in str(e)
        return
    np.testing.assert_array_equal(q, reference.quantize(x, s, zz, 8))


def test_dequantize_every_code(bits=8):
    for b in ALL_BITS:
        q = np.arange(2**b, dtype=np.uint8).reshape(1, -1)
        s = np.array([[0.37]], np.float32)
        z = np.array([[2 ** (b - 1)]], np.float32)
        d = _native.dequantize(q, s, z, b)
        np.testing.assert_array_equal(d, reference.dequantize(q, s, z, b))
        np.testing.assert_array_equal(_native.quantize(d, s, z, b), q)  # every level round-trips


# --- the Lp range search -------------------------------------------------------------------


# The reference search is a Python loop over units x candidates: the full matrix of bits x
# granularity x shape uses 24 candidates (shrink 0.03, down to 31 % of the range); the default
# 80-candidate grid is held to the reference in the ISA, norm and grid-option tests.
SEARCH_SHAPES = [(1, 1), (1, 13), (7, 1), (5, 33), (3, 64)]
GRID = dict(n_grid=24, shrink=0.03)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("gran", GRANS)
def test_range_search_matches_reference(rng, bits, gran):
    for symmetric in (False, True):
        for shape in SEARCH_SHAPES:
            x = sample(rng, shape)
            rows, groups = units(shape, gran)
            s, z = _native.lp_range_search(x, bits, symmetric=symmetric, rows=rows, groups=groups, **GRID)
            rs, rz = reference.lp_range_search(x, bits, symmetric=symmetric, rows=rows, groups=groups, **GRID)
            err = unit_lp_errors(x, s, z, bits, 2.4)
            best = unit_lp_errors(x, rs, rz, bits, 2.4)
            np.testing.assert_allclose(err, best, rtol=1e-6, atol=1e-30)
            # where the same candidate won, the grid is the reference's own, bit for bit
            assert np.mean(s == rs) >= 0.5, "most units should pick the very same candidate"
            np.testing.assert_array_equal(z[s == rs], rz[s == rs])


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("bits", [2, 4])
def test_range_search_other_norms(rng, p, bits):
    """p = 2 takes the kernel's e*e path; the others powf."""
    x = sample(rng, (4, 48))
    for rows, groups in [(1, 1), (4, 1), (4, 4)]:
        s, z = _native.lp_range_search(x, bits, p=p, rows=rows, groups=groups)
        rs, rz = reference.lp_range_search(x, bits, p=p, rows=rows, groups=groups)
        np.testing.assert_allclose(unit_lp_errors(x, s, z, bits, p), unit_lp_errors(x, rs, rz, bits, p), rtol=1e-6)


@pytest.mark.parametrize("n_grid,shrink", [(1, 0.01), (40, 0.02), (200, 0.004)])
def test_range_search_grid_options(rng, n_grid, shrink):
    x = sample(rng, (5, 30))
    s, z = _native.lp_range_search(x, 3, rows=5, n_grid=n_grid, shrink=shrink)
    rs, rz = reference.lp_range_search(x, 3, rows=5, n_grid=n_grid, shrink=shrink)
    np.testing.assert_allclose(unit_lp_errors(x, s, z, 3, 2.4), unit_lp_errors(x, rs, rz, 3, 2.4), rtol=1e-6)


@pytest.mark.parametrize("p", [0.0, -1.0])
def test_range_search_p_nonpositive_is_minmax(rng, p):
    x = sample(rng, (7, 33))
    for bits, symmetric, rows in itertools.product(ALL_BITS, (False, True), (1, 7)):
        s, z = _native.lp_range_search(x, bits, symmetric=symmetric, p=p, rows=rows)
        rs, rz = reference.lp_range_search(x, bits, symmetric=symmetric, p=p, rows=rows)
        np.testing.assert_array_equal(s, rs)  # one candidate, same float ops: bit-equal
        np.testing.assert_array_equal(z, rz)
        # and it is the full [min(x, 0), max(x, 0)] range
        for r in range(rows):
            u = x if rows == 1 else x[r : r + 1]
            es, ez = reference._range_to_params(min(np.float32(0), u.min()), max(np.float32(0), u.max()), bits, symmetric)
            assert (s[r, 0], z[r, 0]) == (es, ez)


def test_range_search_degenerate_units():
    """All-zero units get scale 1, zero 0 (asymmetric); one-signed units keep 0 on the grid."""
    x = np.zeros((3, 8), np.float32)
    x[1] = np.linspace(0.1, 2.0, 8)  # positive only
    x[2] = -np.linspace(0.1, 2.0, 8)  # negative only
    for bits in ALL_BITS:
        s, z = _native.lp_range_search(x, bits, rows=3)
        rs, rz = reference.lp_range_search(x, bits, rows=3)
        np.testing.assert_array_equal(s, rs)
        np.testing.assert_array_equal(z, rz)
        assert (s[0, 0], z[0, 0]) == (1.0, 0.0)
        assert z[1, 0] == 0 and z[2, 0] == 2**bits - 1
        fq = _native.fake_quantize(x, s, z, bits)
        assert np.all(fq[0] == 0)


# --- hessian_loss ------------------------------------------------------------------------------


@pytest.mark.parametrize("N,K", [(1, 1), (1, 17), (9, 1), (33, 17), (70, 40)])
def test_hessian_loss_matches_reference(rng, N, K):
    dW = (rng.standard_normal((N, K)) * 0.01).astype(np.float32)
    X = rng.standard_normal((3 * K + 5, K)).astype(np.float32)
    H = (X.T @ X).astype(np.float32)  # a PSD second moment, as the methods pass
    got = _native.hessian_loss(dW, H)
    assert got.dtype == np.float32 and got.shape == (N,)
    want = reference.hessian_loss(dW, H)
    a = np.abs(dW.astype(np.float64))
    bound = 2 * K * EPS32 * np.einsum("nk,kl,nl->n", a, np.abs(H.astype(np.float64)), a) + 2 * EPS32 * np.abs(want)
    assert np.all(np.abs(got.astype(np.float64) - want) <= bound), (got, want, bound)
    assert np.all(got >= 0)


def test_hessian_loss_zero_and_diagonal(rng):
    H = np.diag(rng.uniform(0.5, 2, 12)).astype(np.float32)
    assert np.all(_native.hessian_loss(np.zeros((5, 12), np.float32), H) == 0)
    dW = rng.standard_normal((5, 12)).astype(np.float32)
    np.testing.assert_allclose(_native.hessian_loss(dW, H), ((dW.astype(np.float64) ** 2) * np.diag(H)).sum(1), rtol=12 * EPS32)


# --- the boundary: refused arguments --------------------------------------------------------

X48 = np.zeros((4, 8), np.float32)
S41 = np.ones((4, 1), np.float32)


@pytest.mark.parametrize("bad_bits", [0, 1, 9, 16, -4])
def test_bits_outside_2_to_8_refused(bad_bits):
    q = np.zeros((4, 8), np.uint8)
    for call in (
        lambda: _native.quantize(X48, S41, S41, bad_bits),
        lambda: _native.dequantize(q, S41, S41, bad_bits),
        lambda: _native.fake_quantize(X48, S41, S41, bad_bits),
        lambda: _native.lp_range_search(X48, bad_bits),
    ):
        with pytest.raises(ValueError, match=rf"bits must be in \[2, 8\], got {bad_bits}"):
            call()


@pytest.mark.parametrize("entry", ["quantize", "dequantize", "fake_quantize"])
def test_scale_and_zero_shapes_refused(entry):
    x = X48.astype(np.uint8) if entry == "dequantize" else X48
    fn = getattr(_native, entry)
    with pytest.raises(ValueError, match=r"scale must have 1 or 4 rows .*got 3"):
        fn(x, np.ones((3, 1), np.float32), np.ones((3, 1), np.float32), 4)
    with pytest.raises(ValueError, match=r"zero must have shape \(4, 1\), got \(4, 2\)"):
        fn(x, S41, np.ones((4, 2), np.float32), 4)
    with pytest.raises(ValueError, match=r"scale has 3 groups per row, which does not divide 8 columns"):
        fn(x, np.ones((4, 3), np.float32), np.ones((4, 3), np.float32), 4)


def test_one_dimensional_scale_agrees_with_the_reference_or_is_refused(rng):
    """A 1-D scale of length rows: reference._expand reads it as per channel (rows, 1). The
    native door must not read it differently (_native.as_2d makes it (1, rows), i.e. per-tensor
    groups); refusing it with a ValueError naming scale would be fine too."""
    x = rng.standard_normal((4, 8)).astype(np.float32)
    s = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    z = np.full(4, 8, np.float32)
    try:
        q = _native.quantize(x, s, z, 4)
    except ValueError as e:
        assert "scale" in str(e)
        return
    np.testing.assert_array_equal(q, reference.quantize(x, s, z, 4))


def test_scalar_tensor_scale_is_per_tensor_or_refused(rng):
    """A 0-d torch scale/zero: per tensor (as in the reference), or a ValueError naming the
    argument - never an IndexError from inside the door."""
    x = torch.from_numpy(rng.standard_normal((4, 8)).astype(np.float32))
    try:
        q = _native.quantize(x, torch.tensor(0.1), torch.tensor(8.0), 4)
    except ValueError as e:
        assert "scale" in str(e)
        return
    np.testing.assert_array_equal(q, reference.quantize(x.numpy(), np.float32(0.1), np.float32(8.0), 4))


def test_range_search_argument_errors():
    x = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match=r"must be 1 or 4, got 3"):
        _native.lp_range_search(x, 4, rows=3)
    with pytest.raises(ValueError, match=r"3 groups per row do not divide 8 columns"):
        _native.lp_range_search(x, 4, groups=3)
    with pytest.raises(ValueError, match=r"n_grid=0"):
        _native.lp_range_search(x, 4, n_grid=0)
    with pytest.raises(ValueError, match=r"range grid must stay above zero: n_grid=101"):
        _native.lp_range_search(x, 4, n_grid=101, shrink=0.01)  # the last candidate is 0 wide
    with pytest.raises(ValueError, match=r"n_grid must be at most 1024"):
        _native.lp_range_search(x, 4, n_grid=2000, shrink=1e-4)
    with pytest.raises(ValueError, match=r"n_grid must be at most 1024"):
        _native.lp_range_search(x, 4, rows=4, n_grid=2000, shrink=1e-4)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 2] = bad
        with pytest.raises(ValueError, match=r"non-finite value at row 1, column 2"):
            _native.lp_range_search(y, 4, rows=4)


def test_hessian_loss_shapes_refused():
    dW = np.zeros((3, 8), np.float32)
    with pytest.raises(ValueError, match=r"H must have shape \(8, 8\), got \(8, 7\)"):
        _native.hessian_loss(dW, np.zeros((8, 7), np.float32))
    with pytest.raises(ValueError, match=r"H must have shape \(8, 8\), got \(64,\)"):
        _native.hessian_loss(dW, np.zeros(64, np.float32))


def test_binding_refuses_instead_of_copying():
    """The compiled entries take exactly C-contiguous arrays of the declared dtype (no silent
    conversion: TypeError), and name the argument when a shape is wrong (ValueError)."""
    C = _native._C
    x, s = X48, S41
    out8 = np.empty((4, 8), np.uint8)
    outf = np.empty((4, 8), np.float32)
    for bad_x in (x.astype(np.float64), np.asfortranarray(np.ones((4, 8), np.float32)),
                  np.ones((4, 16), np.float32)[:, ::2], x.astype(np.float16)):
        with pytest.raises(TypeError):
            C.quantize(bad_x, s, s, 4, out8)
        with pytest.raises(TypeError):
            C.fake_quantize(bad_x, s, s, 4, outf)
    with pytest.raises(TypeError):
        C.quantize(x, s.astype(np.float64), s, 4, out8)
    with pytest.raises(TypeError):
        C.quantize(x, s, s, 4, out8.astype(np.int8))  # out must be uint8
    with pytest.raises(TypeError):
        C.dequantize(out8.view(np.int8), s, s, 4, outf)  # codes are uint8
    with pytest.raises(TypeError):
        C.dequantize(out8, s, s, 4, outf.astype(np.float64))
    with pytest.raises(TypeError):
        C.hessian_loss(x.astype(np.float64), np.zeros((8, 8), np.float32), np.empty(4, np.float32))

    with pytest.raises(ValueError, match=r"out must have shape \(4, 8\), got \(4, 7\)"):
        C.quantize(x, s, s, 4, np.empty((4, 7), np.uint8))
    with pytest.raises(ValueError, match=r"out must have shape \(4, 8\), got \(4, 7\)"):
        C.dequantize(out8, s, s, 4, np.empty((4, 7), np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(4, 8\)"):
        C.fake_quantize(x, s, s, 4, np.empty((32,), np.float32))
    with pytest.raises(ValueError, match=r"x must be 2-D, got shape \(32,\)"):
        C.quantize(x.reshape(-1), s, s, 4, out8)
    with pytest.raises(ValueError, match=r"scale must be 2-D, got shape \(4,\)"):
        C.quantize(x, s.reshape(-1), s, 4, out8)
    with pytest.raises(ValueError, match=r"zero must have shape \(4, 1\), got \(1, 4\)"):
        C.quantize(x, s, s.reshape(1, 4), 4, out8)
    ro = np.empty((4, 8), np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"out must be writeable"):
        C.quantize(x, s, s, 4, ro)
    sc, zc = np.empty((1, 1), np.float32), np.empty((1, 2), np.float32)
    with pytest.raises(ValueError, match=r"zero must have shape \(1, 1\), got \(1, 2\)"):
        C.lp_range_search(x, 4, False, 2.4, 80, 0.01, sc, zc)
    with pytest.raises(ValueError, match=r"out must have shape \(3,\), got \(4,\)"):
        C.hessian_loss(np.zeros((3, 8), np.float32), np.zeros((8, 8), np.float32), np.empty(4, np.float32))


def test_door_converts_once(rng):
    """_native accepts float64, strided and torch inputs, converting them once: same numbers as
    the C-contiguous float32 call."""
    x = rng.standard_normal((6, 20)).astype(np.float32)
    s, z = _native.lp_range_search(x, 4, rows=6)
    q = _native.quantize(x, s, z, 4)
    big = np.zeros((6, 40), np.float32)
    big[:, ::2] = x
    for variant in (x.astype(np.float64), big[:, ::2], np.asfortranarray(x), torch.from_numpy(x),
                    torch.from_numpy(x.astype(np.float64))):
        np.testing.assert_array_equal(_native.quantize(variant, s, z, 4), q)
        np.testing.assert_array_equal(_native.fake_quantize(variant, torch.from_numpy(s), z.astype(np.float64), 4),
                                      _native.fake_quantize(x, s, z, 4))
        s2, z2 = _native.lp_range_search(variant, 4, rows=6)
        np.testing.assert_array_equal(s2, s)
        np.testing.assert_array_equal(z2, z)
    np.testing.assert_array_equal(_native.dequantize(torch.from_numpy(q), s, z, 4), _native.dequantize(q, s, z, 4))
    # conv weights (out, in, kh, kw) are read as (out, in*kh*kw)
    w4 = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(_native.quantize(w4, np.ones((4, 1), np.float32), np.zeros((4, 1), np.float32), 4),
                                  _native.quantize(w4.reshape(4, -1), np.ones((4, 1), np.float32), np.zeros((4, 1), np.float32), 4))


# --- threads -----------------------------------------------------------------------------------


def test_thread_count_invariance(rng, threads):
    """Large enough that every entry splits into several parallel chunks."""
    x = sample(rng, (1024, 64))  # quantize: 256-row chunks
    s = rng.uniform(0.01, 0.2, (1024, 4)).astype(np.float32)
    z = rng.integers(0, 16, (1024, 4)).astype(np.float32)
    q = _native.quantize(x, s, z, 4)
    w = sample(rng, (96, 72))  # range search: 4-unit chunks per channel; candidates per tensor
    dW = rng.standard_normal((100, 24)).astype(np.float32)  # hessian_loss: 32-row blocks
    A = rng.standard_normal((60, 24)).astype(np.float32)
    H = (A.T @ A).astype(np.float32)

    def run():
        return [
            _native.quantize(x, s, z, 4),
            _native.dequantize(q, s, z, 4),
            _native.fake_quantize(x, s, z, 4),
            *_native.lp_range_search(w, 3, rows=96),
            *_native.lp_range_search(w, 3, rows=96, groups=8),
            *_native.lp_range_search(w, 3),
            *_native.lp_range_search(w, 5, symmetric=True, p=2.0),
            _native.hessian_loss(dW, H),
        ]

    res = threads(run)
    for a, b in zip(res[1], res[2]):
        np.testing.assert_array_equal(a, b)


def test_set_num_threads_validates():
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        _native.set_num_threads(-1)
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        _native.set_num_threads(1.5)


def test_isa_levels_named_and_capped():
    levels = ["scalar", "avx2", "avx512", "avx512vnni", "amx"]
    det = _native.detected_isa()
    assert det in levels
    try:
        _native.set_isa("scalar")
        assert _native.active_isa() == "scalar"
        with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
            _native.set_isa("sse9")
        above = levels[levels.index(det) + 1 :]
        for name in above:
            with pytest.raises(ValueError, match=f"cannot run ISA '{name}'"):
                _native.set_isa(name)
    finally:
        _native.set_isa(None)
    assert _native.active_isa() == det or "LOWBIT_ISA" in __import__("os").environ


# --- the torch twin in quantizers.py -------------------------------------------------------


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("RG", [(1, 1), (12, 1), (12, 5)], ids=["tensor", "channel", "group"])
def test_dequantize_codes_equals_native(rng, bits, RG):
    R, G = RG
    codes = rng.integers(0, 2**bits, (12, 40)).astype(np.uint8)
    s = rng.uniform(1e-3, 2, RG).astype(np.float32)
    z = np.round(rng.uniform(0, 2**bits - 1, RG)).astype(np.float32)
    got = dequantize_codes(torch.from_numpy(codes), torch.from_numpy(s), torch.from_numpy(z))
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), _native.dequantize(codes, s, z, bits))
