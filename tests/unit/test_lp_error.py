"""The Lp error kernel behind lp_range_search (polynomial pow, one per ISA) against NumPy,
and the range search itself on every ISA against the NumPy reference.

Tolerances: each term e^p comes from float log2/exp2 polynomials with the exponent kept out
of the float sum, about 3e-7 relative (lp_ref.cpp); the double sum adds nothing visible.
The reference is evaluated with the same float32 p the kernel sees.
"""

import numpy as np
import pytest

from lowbit import _native, reference

P32 = float(np.float32(2.4))


def supported_isas():
    levels = ("scalar", "avx2", "avx512", "avx512vnni", "amx")
    return levels[: levels.index(_native.detected_isa()) + 1]


def _data(rng, n, scale):
    return (rng.standard_normal(n) * scale).astype(np.float32)


def _range(x, bits):
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    s = np.float32((hi - lo) / (2**bits - 1)) if hi > lo else np.float32(1.0)
    z = np.float32(np.clip(np.round(-lo / s), 0, 2**bits - 1))
    return s, z


@pytest.mark.parametrize("n", [1, 15, 16, 17, 63, 64, 65, 1000, 4608])
@pytest.mark.parametrize("p", [float(np.float32(v)) for v in (0.5, 1.0, 2.4, 3.7, 6.0)])
def test_lp_error_matches_numpy(isa, rng, n, p):
    for scale in (1e-3, 1.0, 1e6):
        x = _data(rng, n, scale)
        for bits in (2, 4, 8):
            s, z = _range(x, bits)
            got = _native.lp_error(x, s, z, bits, p)
            want = reference.lp_error(x, s, z, bits, p)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_lp_error_square_is_exact_in_float():
    """p == 2: each term is the float square, summed in double."""
    x = _data(np.random.default_rng(5), 777, 2.0)
    s, z = _range(x, 3)
    e = np.abs(x - reference.fake_quantize(x, s, z, 3)).astype(np.float32).ravel()
    np.testing.assert_allclose(_native.lp_error(x, s, z, 3, 2.0), np.sum((e * e).astype(np.float64)), rtol=1e-13)


def test_lp_error_zeros_subnormals_and_huge():
    """Errors of exactly 0 give 0; subnormal errors and errors near the float range keep
    their relative accuracy (the result is built in double)."""
    x = np.zeros(40, np.float32)
    assert _native.lp_error(x, 1.0, 0.0, 4, P32) == 0.0
    tiny = np.array([1e-40, 3e-42, 7e-39, 1.2e-38, 0.0] * 5, np.float32)  # subnormals
    s = np.float32(1.0)  # every value rounds to code z, so e = |x|
    np.testing.assert_allclose(
        _native.lp_error(tiny, s, 0.0, 4, P32), np.sum(np.abs(tiny).astype(np.float64) ** P32), rtol=1e-6
    )
    huge = np.array([3e38, -2e38, 1e37], np.float32)
    s = np.float32(1e36)
    got = _native.lp_error(huge, s, 8.0, 4, P32)
    np.testing.assert_allclose(got, reference.lp_error(huge, s, 8.0, 4, P32), rtol=1e-6)
    assert np.isfinite(got)


def test_lp_error_large_p_uses_exact_pow(rng):
    x = _data(rng, 300, 1.0)
    s, z = _range(x, 4)
    np.testing.assert_allclose(_native.lp_error(x, s, z, 4, 7.3), reference.lp_error(x, s, z, 4, float(np.float32(7.3))), rtol=1e-6)


def test_lp_error_same_bits_on_every_isa(rng):
    x = _data(rng, 4099, 0.05)
    s, z = _range(x, 4)
    out = {}
    for name in supported_isas():
        _native.set_isa(name)
        try:
            out[name] = [_native.lp_error(x[:n], s, z, 4, p) for n in (1, 17, 4099) for p in (2.0, P32, 1.0, 6.0)]
        finally:
            _native.set_isa(None)
    for name, vals in out.items():
        assert vals == out["scalar"], name


def test_lp_error_refuses_bad_parameters():
    x = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="scale"):
        _native.lp_error(x, 0.0, 0.0, 4)
    with pytest.raises(ValueError, match="p must be positive"):
        _native.lp_error(x, 1.0, 0.0, 4, p=0.0)
    with pytest.raises(ValueError, match="bits"):
        _native.lp_error(x, 1.0, 0.0, 9)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_range_search_matches_reference_on_every_isa(isa, bits, symmetric):
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal((6, 200)) * rng.uniform(0.01, 3.0, (6, 1))).astype(np.float32)
    for rows, groups in ((1, 1), (6, 1), (6, 4)):
        s, z = _native.lp_range_search(x, bits, symmetric=symmetric, rows=rows, groups=groups)
        rs, rz = reference.lp_range_search(x, bits, symmetric=symmetric, rows=rows, groups=groups)
        np.testing.assert_allclose(s, rs, rtol=1e-6)
        np.testing.assert_array_equal(z, rz)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("layout", [(1, 1), (12, 1), (12, 3)])
def test_range_search_picks_the_argmin_of_lp_error(isa, bits, layout, threads):
    """The search abandons candidates early once they cannot win; its pick must still be
    exactly the first minimum of lp_error over the whole grid (same bits, same order of row
    sums), on every ISA and thread count."""
    rows, groups = layout
    rng = np.random.default_rng(10 * bits + rows + groups)
    x = (rng.standard_normal((12, 2100)) * rng.uniform(0.01, 2.0, (12, 1))).astype(np.float32)
    x[3, :50] *= 40  # an outlier block, so the best clipping varies between units
    gsize = x.shape[1] // groups
    expect_s = np.empty((rows, groups), np.float32)
    expect_z = np.empty((rows, groups), np.float32)
    for r in range(rows):
        for g in range(groups):
            unit = (x if rows == 1 else x[r : r + 1])[:, g * gsize : (g + 1) * gsize]
            lo, hi = min(np.float32(0), unit.min()), max(np.float32(0), unit.max())
            best = None
            for k in range(80):
                ratio = np.float32(1.0) - np.float32(k) * np.float32(0.01)
                s, z = reference._range_to_params(lo * ratio, hi * ratio, bits, False)
                err = 0.0
                for row in unit:
                    err += _native.lp_error(row, s, z, bits, P32)
                if best is None or err < best[0]:
                    best = (err, s, z)
            expect_s[r, g], expect_z[r, g] = best[1], best[2]
    out = threads(lambda: _native.lp_range_search(x, bits, rows=rows, groups=groups))
    for n in (1, 2):
        np.testing.assert_array_equal(out[n][0], expect_s)
        np.testing.assert_array_equal(out[n][1], expect_z)
