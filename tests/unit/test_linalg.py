"""lowbit's dense float32 GEMM / SYRK (linalg.h) against NumPy in float64.

Tolerance: linalg.h's error bound, |C - C_exact| <= eps32 * (kc + ceil(K/kc) + 2) *
(|alpha| |op(A)| |op(B)| + |beta| |C|) elementwise with kc = min(K, 256): each K block is a
plain float32 chain of at most kc products, the block sums are folded in order, and the
epilogue rounds twice.
"""

import math

import numpy as np
import pytest

from lowbit import _native

EPS = float(np.finfo(np.float32).eps)
KC = 256

# (M, N, K): tiny, ragged around every register tile (4x8, 6x16, 14x32), K across several
# K blocks (256) with a ragged tail, and shapes whose tiles straddle the diagonal unevenly.
SHAPES = [
    (1, 1, 1),
    (3, 5, 2),
    (7, 9, 13),
    (13, 31, 33),
    (15, 33, 257),
    (29, 65, 300),
    (45, 97, 31),
    (70, 40, 513),
    (131, 67, 129),
]


def bound(Ae, Be, alpha, beta, C0, K):
    kc = max(1, min(K, KC))
    scale = abs(alpha) * (np.abs(Ae) @ np.abs(Be))
    if C0 is not None:
        scale = scale + abs(beta) * np.abs(C0.astype(np.float64))
    return EPS * (kc + math.ceil(K / kc) + 2) * scale + 1e-30


def operands(rng, M, N, K, trans_a, trans_b):
    A = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    B = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    Ae = (A.T if trans_a else A).astype(np.float64)
    Be = (B.T if trans_b else B).astype(np.float64)
    return A, B, Ae, Be


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("trans", [(False, False), (True, False), (False, True), (True, True)])
def test_sgemm_matches_numpy(isa, rng, shape, trans):
    M, N, K = shape
    A, B, Ae, Be = operands(rng, M, N, K, *trans)
    C0 = rng.standard_normal((M, N)).astype(np.float32)
    for alpha, beta in [(1.0, 0.0), (-0.75, 1.0), (2.0, 0.5)]:
        C = _native.sgemm(A, B, trans_a=trans[0], trans_b=trans[1], alpha=alpha, beta=beta, C=C0.copy())
        exact = alpha * (Ae @ Be) + beta * C0.astype(np.float64)
        err = np.abs(C.astype(np.float64) - exact)
        assert np.all(err <= bound(Ae, Be, alpha, beta, C0, K)), (isa, shape, trans, alpha, beta, err.max())


def test_sgemm_strided_operands(isa, rng):
    """Leading dimensions larger than the column count (views into wider buffers)."""
    M, N, K = 19, 37, 270
    lda, ldb, ldc = K + 5, N + 3, N + 7
    Abuf = rng.standard_normal((M, lda)).astype(np.float32)
    Bbuf = rng.standard_normal((K, ldb)).astype(np.float32)
    Cbuf = rng.standard_normal((M, ldc)).astype(np.float32)
    before = Cbuf.copy()
    _native._C.sgemm(False, False, M, N, K, 1.0, Abuf, lda, Bbuf, ldb, 1.0, Cbuf, ldc)
    Ae, Be = Abuf[:, :K].astype(np.float64), Bbuf[:, :N].astype(np.float64)
    exact = Ae @ Be + before[:, :N]
    err = np.abs(Cbuf[:, :N] - exact)
    assert np.all(err <= bound(Ae, Be, 1.0, 1.0, before[:, :N], K))
    np.testing.assert_array_equal(Cbuf[:, N:], before[:, N:])  # padding columns untouched


def test_sgemm_beta_zero_ignores_nan_and_k_zero_scales(rng):
    A = rng.standard_normal((5, 4)).astype(np.float32)
    B = rng.standard_normal((4, 6)).astype(np.float32)
    C = np.full((5, 6), np.nan, np.float32)
    _native.sgemm(A, B, beta=0.0, C=C)
    assert np.isfinite(C).all()
    C2 = np.ones((5, 6), np.float32)
    _native._C.sgemm(False, False, 5, 6, 0, 1.0, np.zeros(1, np.float32), 1, np.zeros(6, np.float32), 6, 3.0, C2, 6)
    np.testing.assert_array_equal(C2, np.full((5, 6), 3.0, np.float32))
    C3 = np.ones((5, 6), np.float32)
    _native.sgemm(A, B, alpha=0.0, beta=0.5, C=C3)
    np.testing.assert_array_equal(C3, np.full((5, 6), 0.5, np.float32))


@pytest.mark.parametrize("nd", [(1, 1), (5, 3), (40, 13), (300, 31), (257, 46), (600, 77), (90, 200)])
def test_syrk_matches_numpy_and_is_symmetric(isa, rng, nd):
    n, d = nd
    X = rng.standard_normal((n, d)).astype(np.float32)
    S = rng.standard_normal((d, d)).astype(np.float32)
    C0 = (S + S.T).astype(np.float32)  # symmetric start
    C = C0.copy()
    _native.syrk_tn_acc(X, C)
    Xe = X.astype(np.float64)
    exact = Xe.T @ Xe + C0
    assert np.all(np.abs(C - exact) <= bound(Xe.T, Xe, 1.0, 1.0, C0, n))
    np.testing.assert_array_equal(C, C.T)
    # The upper triangle is sgemm's, bit for bit.
    G = _native.sgemm(X, X, trans_a=True, beta=1.0, C=C0.copy())
    iu = np.triu_indices(d)
    np.testing.assert_array_equal(C[iu], G[iu])


def test_syrk_reads_only_the_upper_triangle(rng):
    X = rng.standard_normal((50, 20)).astype(np.float32)
    C = np.zeros((20, 20), np.float32)
    C[np.tril_indices(20, -1)] = np.nan
    _native.syrk_tn_acc(X, C)
    assert np.isfinite(C).all()


# K over several 2048-long chunks: small C and long K take the split-K schedule with 2 threads.
SHAPES_BIG = [(8, 16, 700), (300, 260, 90), (40, 70, 4500), (90, 33, 6200)]


@pytest.mark.parametrize("shape", SHAPES + SHAPES_BIG)
def test_threads_bit_identical(isa, rng, shape, threads):
    M, N, K = shape
    A, B, _, _ = operands(rng, M, N, K, True, False)
    C0 = rng.standard_normal((M, N)).astype(np.float32)
    out = threads(lambda: _native.sgemm(A, B, trans_a=True, alpha=1.5, beta=0.25, C=C0.copy()))
    np.testing.assert_array_equal(out[1], out[2])
    X = rng.standard_normal((K, M)).astype(np.float32)
    out = threads(lambda: _gram(X))
    np.testing.assert_array_equal(out[1], out[2])


@pytest.mark.parametrize("shape", [(40, 70, 4500), (90, 33, 6200), (7, 5, 2049)])
def test_split_k_schedule_matches_numpy(isa, rng, shape, threads):
    """Long K, small C: chunk partials folded in order, with 1 and 2 threads."""
    M, N, K = shape
    A, B, Ae, Be = operands(rng, M, N, K, True, False)
    C0 = rng.standard_normal((M, N)).astype(np.float32)
    out = threads(lambda: _native.sgemm(A, B, trans_a=True, alpha=0.5, beta=2.0, C=C0.copy()))
    exact = 0.5 * (Ae @ Be) + 2.0 * C0.astype(np.float64)
    assert np.all(np.abs(out[2] - exact) <= bound(Ae, Be, 0.5, 2.0, C0, K))
    np.testing.assert_array_equal(out[1], out[2])
    X = A[:, :M]
    G = threads(lambda: _gram(X))
    Xe = X.astype(np.float64)
    assert np.all(np.abs(G[2] - Xe.T @ Xe) <= bound(Xe.T, Xe, 1.0, 0.0, None, K))
    np.testing.assert_array_equal(G[1], G[2])
    np.testing.assert_array_equal(G[2], G[2].T)


def _gram(X):
    C = np.zeros((X.shape[1], X.shape[1]), np.float32)
    _native.syrk_tn_acc(X, C)
    return C


def test_fma_kernels_agree_bit_for_bit(rng):
    """AVX2 and AVX-512 kernels both run one FMA chain per element per K block: same bits."""
    isas = [i for i in ("avx2", "avx512") if i in _supported()]
    if len(isas) < 2:
        pytest.skip("needs both AVX2 and AVX-512")
    A = rng.standard_normal((517, 83)).astype(np.float32)
    B = rng.standard_normal((517, 71)).astype(np.float32)
    out = {}
    for name in isas:
        _native.set_isa(name)
        try:
            out[name] = (_native.sgemm(A, B, trans_a=True), _gram(A))
        finally:
            _native.set_isa(None)
    for a, b in zip(out["avx2"], out["avx512"]):
        np.testing.assert_array_equal(a, b)


def _supported():
    levels = ("scalar", "avx2", "avx512", "avx512vnni", "amx")
    return levels[: levels.index(_native.detected_isa()) + 1]


def test_large_product_across_super_blocks_and_chunks(rng):
    """K long enough to need several packed super blocks (8 MB of panels), and an M larger
    than one 6144-row chunk."""
    A = rng.standard_normal((1100, 520)).astype(np.float32)
    B = rng.standard_normal((1100, 500)).astype(np.float32)
    C = _native.sgemm(A, B, trans_a=True)
    Ae, Be = A.T.astype(np.float64), B.astype(np.float64)
    assert np.all(np.abs(C - Ae @ Be) <= bound(Ae, Be, 1.0, 0.0, None, 1100))
    A = rng.standard_normal((6200, 3)).astype(np.float32)
    B = rng.standard_normal((3, 9)).astype(np.float32)
    C = _native.sgemm(A, B)
    Ae, Be = A.astype(np.float64), B.astype(np.float64)
    assert np.all(np.abs(C - Ae @ Be) <= bound(Ae, Be, 1.0, 0.0, None, 3))


def test_errors_name_the_argument():
    A = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="inner sizes"):
        _native.sgemm(A, A)
    with pytest.raises(ValueError, match="C must have shape"):
        _native.sgemm(A, A, trans_a=True, C=np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="leading dimension"):
        _native._C.sgemm(False, False, 4, 3, 3, 1.0, A, 2, A, 3, 0.0, np.zeros(12, np.float32), 3)
    with pytest.raises(ValueError, match="A holds"):
        _native._C.sgemm(False, False, 5, 3, 3, 1.0, A, 3, A, 3, 0.0, np.zeros(15, np.float32), 3)
    with pytest.raises(ValueError, match="share memory"):
        C = np.zeros((3, 3), np.float32)
        _native._C.sgemm(True, False, 3, 3, 3, 1.0, C, 3, A, 3, 0.0, C, 3)
    with pytest.raises(ValueError, match="C must have shape"):
        _native.syrk_tn_acc(A, np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError):
        _native._C.ssyrk_tn_acc(A.astype(np.float64), np.zeros((3, 3), np.float32))


def test_conv_gram_is_gram_of_im2col_bit_for_bit(rng, threads):
    """conv_gram_accumulate streams im2col rows in tiles of whole K chunks, so it equals one
    gram_accumulate (and cross_gram_accumulate) over all the rows, bit for bit; 7200 rows
    of width 576 span two tiles (of 6144 rows)."""
    from lowbit import reference

    geo = dict(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    x = rng.standard_normal((2, 64, 60, 60)).astype(np.float32)
    x2 = (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)
    rows = reference.im2col(x, geo["kernel_size"], geo["stride"], geo["padding"], geo["dilation"], 1)[0]
    rows2 = reference.im2col(x2, geo["kernel_size"], geo["stride"], geo["padding"], geo["dilation"], 1)[0]
    rows, rows2 = rows.astype(np.float32), rows2.astype(np.float32)
    assert rows.shape == (7200, 576)

    def run():
        Hc = np.zeros((1, 576, 576), np.float32)
        _native.conv_gram_accumulate(x, Hc, **geo)
        H = np.zeros((576, 576), np.float32)
        _native.gram_accumulate(rows, H)
        Cc = np.zeros((1, 576, 576), np.float32)
        _native.conv_gram_accumulate(x, Cc, x2=x2, **geo)
        C = np.zeros((576, 576), np.float32)
        _native.cross_gram_accumulate(rows, rows2, C)
        return Hc[0], H, Cc[0], C

    out = threads(run)
    for n in (1, 2):
        Hc, H, Cc, C = out[n]
        np.testing.assert_array_equal(Hc, H)
        np.testing.assert_array_equal(Cc, C)
    for a, b in zip(out[1], out[2]):
        np.testing.assert_array_equal(a, b)
