"""C++ multipoint (breakpoint sweep, greedy placement) against its NumPy twins in reference.py."""

import numpy as np
import pytest

from lowbit import _native, reference

BITS = [2, 3, 4, 5, 6, 7, 8]


def _base(W, bits, rows):
    s, z = _native.lp_range_search(W, bits, rows=rows)
    return _native.fake_quantize(W, s, z, bits)


def _gram(rng, n, d, groups=1):
    H = np.zeros((groups, d, d), np.float32)
    for g in range(groups):
        X = (rng.standard_normal((n, d)) * rng.uniform(0.2, 2, d)).astype(np.float32)
        _native.gram_accumulate(X, H[g])
    return H


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (9, 33)])
def test_sweep_matches_reference(bits, shape):
    rng = np.random.default_rng(bits * 100 + shape[1])
    R = (rng.standard_normal(shape) * rng.uniform(0.1, 3)).astype(np.float32)
    R[0, 0] = 0.0  # zeros have no breakpoints
    s, z, c, e = _native.multipoint_sweep(R, bits)
    rs, rz, rc, re = reference.multipoint_sweep(R, bits)
    # Same interval, same grid: the codes are integers and must agree; the scale is the same
    # float expression (<r,q>/<q,q> or a breakpoint), computed in double either way.
    np.testing.assert_array_equal(c, rc)
    np.testing.assert_array_equal(z, rz)
    np.testing.assert_allclose(s, rs, rtol=1e-6)
    np.testing.assert_allclose(e, re, rtol=1e-5, atol=1e-12)
    assert c.max() <= 2**bits - 1 and set(np.unique(z)) <= {2 ** (bits - 1), 2 ** (bits - 1) - 1}
    # err is the error of the point as stored
    approx = s[:, None] * (c.astype(np.float64) - z[:, None])
    np.testing.assert_allclose(e, ((R - approx) ** 2).sum(1), rtol=1e-5, atol=1e-12)


def test_sweep_zero_row_and_scale_sign():
    s, z, c, e = _native.multipoint_sweep(np.zeros((1, 5), np.float32), 2)
    assert s[0] == 0 and e[0] == 0 and (c.astype(int) - z[0] == 0).all()
    # A constant positive row is met exactly: the mirrored grid reaches +2 at 2 bits
    s, z, c, e = _native.multipoint_sweep(np.full((1, 4), 3.0, np.float32), 2)
    assert s[0] > 0 and e[0] == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(s[0] * (c.astype(np.float32) - z[0]), 3.0, rtol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("output_scale", [True, False])
def test_build_matches_reference(bits, groups, output_scale):
    rng = np.random.default_rng(bits + 10 * groups)
    C, d = 12, 19
    W = rng.standard_normal((C, d)).astype(np.float32)
    base = _base(W, bits, rows=1)
    H = _gram(rng, 80, d, groups)
    kw = dict(budget=9, max_points=3, output_scale=output_scale)
    a = _native.multipoint_build(W, base, H, bits, **kw)
    b = reference.multipoint_build(W, base, H, bits, **kw)
    assert len(a["channel"]) == 9
    np.testing.assert_array_equal(a["channel"], b["channel"])
    np.testing.assert_array_equal(a["codes"], b["codes"])
    np.testing.assert_array_equal(a["zero"], b["zero"])
    np.testing.assert_allclose(a["scale"], b["scale"], rtol=1e-5)
    # H in float32 (C++) vs float64 (reference): errors agree to float32 matvec accuracy
    for k in ("gain", "err_before", "err_after"):
        np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-4 * float(b["err_before"].max()))
    assert np.bincount(a["channel"], minlength=C).max() <= 2  # max_points=3: base + 2
    assert (a["gain"] > 0).all()
    # Each point lowers its channel's output error; the per-channel drop is the sum of gains
    drop = np.bincount(a["channel"], weights=a["gain"].astype(np.float64), minlength=C)
    np.testing.assert_allclose(a["err_before"] - a["err_after"], drop, rtol=1e-3,
                               atol=1e-4 * float(a["err_before"].max()))


def test_build_points_go_where_output_error_is():
    """Channel 3 is 10x larger, so with per-channel grids its output error is ~100x the
    others': the first points go there."""
    rng = np.random.default_rng(7)
    C, d = 8, 16
    W = rng.standard_normal((C, d)).astype(np.float32)
    W[3] *= 10
    base = _base(W, 2, rows=C)
    H = _gram(rng, 64, d)[0]
    out = _native.multipoint_build(W, base, H, 2, budget=2, max_points=3)
    assert list(out["channel"]) == [3, 3]
    e = out["err_before"]
    assert e.argmax() == 3


def test_build_random_order_tolerance_and_limits():
    rng = np.random.default_rng(8)
    C, d = 10, 12
    W = rng.standard_normal((C, d)).astype(np.float32)
    base = _base(W, 2, rows=C)
    H = _gram(rng, 50, d)
    order = np.array([4, 4, 4, 1, 9], np.int32)
    out = _native.multipoint_build(W, base, H, 2, budget=10, max_points=3, order=order)
    ref = reference.multipoint_build(W, base, H, 2, budget=10, max_points=3, order=order)
    assert list(out["channel"]) == [4, 4, 1, 9] == list(ref["channel"])  # third offer to 4 refused
    assert len(_native.multipoint_build(W, base, H, 2, budget=2, max_points=3, order=order)["channel"]) == 2
    # Tolerance: every channel stops once its error is below tol * its output energy
    Wd = W.astype(np.float64)
    energy = np.einsum("cd,de,ce->c", Wd, H[0].astype(np.float64), Wd)
    tol = 1e-3
    out = _native.multipoint_build(W, base, H, 2, budget=1000, tolerance=tol, max_points=50)
    counts = np.bincount(out["channel"], minlength=C)
    stopped_by_tol = counts < 49
    assert (out["err_after"][stopped_by_tol] <= tol * energy[stopped_by_tol] * (1 + 1e-3)).all()
    assert (out["err_before"] > tol * energy).all() and counts.min() >= 1
    # max_points=1 or budget=0: nothing added, nothing changed
    for kw in (dict(budget=5, max_points=1), dict(budget=0, max_points=4)):
        out = _native.multipoint_build(W, base, H, 2, **kw)
        assert len(out["channel"]) == 0
        np.testing.assert_array_equal(out["err_before"], out["err_after"])


def test_thread_count_invariance():
    rng = np.random.default_rng(9)
    W = rng.standard_normal((70, 45)).astype(np.float32)
    base = _base(W, 3, rows=1)
    H = _gram(rng, 100, 45)
    runs = []
    for n in (1, 2):
        _native.set_num_threads(n)
        try:
            runs.append((_native.multipoint_sweep(W, 3),
                         _native.multipoint_build(W, base, H, 3, budget=20, max_points=4)))
        finally:
            _native.set_num_threads(0)
    for x, y in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(x, y)
    for k in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][k], runs[1][1][k])


def test_boundary_errors():
    W = np.zeros((4, 6), np.float32)
    H = np.eye(6, dtype=np.float32)
    for bits in (1, 9):
        with pytest.raises(ValueError, match="bits"):
            _native.multipoint_sweep(W, bits)
        with pytest.raises(ValueError, match="bits"):
            _native.multipoint_build(W, W, H, bits, budget=1)
    with pytest.raises(ValueError, match="H must have shape"):
        _native.multipoint_build(W, W, np.eye(5, dtype=np.float32), 2, budget=1)
    with pytest.raises(ValueError, match="base must have shape"):
        _native.multipoint_build(W, W[:3], H, 2, budget=1)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        _native.multipoint_build(W, W, np.stack([H] * 3), 2, budget=1)
    with pytest.raises(ValueError, match=r"order\[1\] = 4"):
        _native.multipoint_build(W, W, H, 2, budget=1, order=np.array([0, 4], np.int32))
    with pytest.raises(ValueError, match="max_points"):
        _native.multipoint_build(W, W, H, 2, budget=1, max_points=0)
    with pytest.raises(ValueError, match="budget"):
        _native.multipoint_build(W, W, H, 2, budget=-1)
    with pytest.raises(TypeError):
        _native._C.multipoint_sweep(W.astype(np.float64), 2, np.empty(4, np.float32),
                                    np.empty(4, np.float32), np.empty((4, 6), np.uint8),
                                    np.empty(4, np.float32))


def test_build_asymmetric_start():
    """Quantized inputs xq, float targets: with g0 = C w - H w~ and e0 the true errors, the
    gains track ||X w - Xq w~||^2 exactly as the points are added."""
    rng = np.random.default_rng(11)
    C, d, n = 9, 14, 120
    W = rng.standard_normal((C, d)).astype(np.float32)
    base = _base(W, 2, rows=C)
    X = rng.standard_normal((n, d)).astype(np.float32)
    Xq = (X + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    H = np.zeros((d, d), np.float32)
    Cq = np.zeros((d, d), np.float32)
    _native.gram_accumulate(Xq, H)
    _native.cross_gram_accumulate(Xq, X, Cq)
    g0 = (W @ Cq.T - base @ H).astype(np.float32)  # row c: C w_c - H w~_c

    def true_err(w_tilde):
        return ((X.astype(np.float64) @ W.T - Xq.astype(np.float64) @ w_tilde.T) ** 2).sum(0)

    e0 = true_err(base.astype(np.float64)).astype(np.float32)
    kw = dict(budget=8, max_points=3, g0=g0, e0=e0)
    a = _native.multipoint_build(W, base, H, 2, **kw)
    b = reference.multipoint_build(W, base, H, 2, **kw)
    np.testing.assert_array_equal(a["channel"], b["channel"])
    np.testing.assert_array_equal(a["codes"], b["codes"])
    np.testing.assert_allclose(a["scale"], b["scale"], rtol=1e-5)
    w_tilde = base.astype(np.float64).copy()
    for c, s, z, q in zip(a["channel"], a["scale"], a["zero"], a["codes"]):
        w_tilde[c] += float(s) * (q.astype(np.float64) - float(z))
    np.testing.assert_allclose(a["err_after"], true_err(w_tilde), rtol=1e-3, atol=1e-3 * float(e0.max()))
    assert a["err_after"].sum() < e0.sum()
    # the symmetric default is the case g0 = H delta, e0 = delta^T H delta
    d0 = (W - base).astype(np.float64)
    sym = _native.multipoint_build(W, base, H, 2, budget=8, max_points=3)
    expl = _native.multipoint_build(W, base, H, 2, budget=8, max_points=3,
                                    g0=(d0 @ H).astype(np.float32),
                                    e0=np.einsum("cd,de,ce->c", d0, H.astype(np.float64), d0).astype(np.float32))
    np.testing.assert_array_equal(sym["channel"], expl["channel"])
    np.testing.assert_array_equal(sym["codes"], expl["codes"])
    with pytest.raises(ValueError, match="together"):
        _native.multipoint_build(W, base, H, 2, budget=1, g0=g0)
    with pytest.raises(ValueError, match="g0 must have shape"):
        _native.multipoint_build(W, base, H, 2, budget=1, g0=g0[:3], e0=e0)


def test_fold_matches_reference():
    rng = np.random.default_rng(12)
    for M, N, P in ((1, 1, 0), (5, 7, 3), (130, 33, 9)):
        y = rng.standard_normal((M, N + P)).astype(np.float32)
        ch = rng.integers(0, N, P).astype(np.int32)
        out = _native.multipoint_fold(y, ch)
        np.testing.assert_array_equal(out, reference.multipoint_fold(y, ch))  # same order of adds
    runs = []
    for n in (1, 2):
        _native.set_num_threads(n)
        try:
            runs.append(_native.multipoint_fold(y, ch))
        finally:
            _native.set_num_threads(0)
    np.testing.assert_array_equal(*runs)
    with pytest.raises(ValueError, match=r"channel\[0\] = 41 is not a channel in \[0, 41\)"):
        _native.multipoint_fold(y, np.array([41], np.int32))  # y has 42 columns: N = 41
